"""The one training loop, driven by Lightning Fabric (devices, precision, DDP).

The configured loss (`config.loss`, default class-weighted cross-entropy; see losses.py) +
every `loss_terms` entry a model returns, AdamW, a learning rate by optimizer step (warm-up,
then decay; `step_schedule`), early stopping on
validation macro-F1 with the best weights restored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.metrics import f1_score
from tqdm.auto import tqdm

from sclabel.config import Hardware, TrainConfig, auto_batch_size
from sclabel.data.loader import EVAL_BATCH, X_KEY, Y_KEY, iterate_batches, n_batches
from sclabel.models.base import Classifier, ModelOutput, predict_probas
from sclabel.training.losses import make_loss
from sclabel.training.resume import TrainingState, load_state, save_state

log = logging.getLogger("sclabel")
# Below this many steps per epoch, BatchNorm running statistics (momentum 0.01-0.02 in
# TabNet) still mix in weights from several epochs ago, and a small data set's validation
# scores in eval mode collapse (pbmc68k: macro-F1 0.13 in eval mode, 0.44 in train mode).
# They are recomputed over the training cells after each epoch instead: one forward pass.
BN_RECALIBRATE_BELOW = 500
MIN_DECAY_STEPS = 100  # the learning rate decays at most once per this many steps


@dataclass
class FitResult:
    best_epoch: int
    best_val_macro_f1: float | None
    epochs_run: int
    seconds: float
    batch_size: int
    is_main_process: bool = True  # under DDP only rank 0 should write outputs
    history: list[dict] = field(default_factory=list)
    threads: int = 0  # CPU threads torch used (training/threads.py); 0: not recorded
    schedule: dict | None = None  # the warmup_steps and decay_steps it ran with


def make_fabric(hardware: Hardware):
    from lightning.fabric import Fabric

    fabric = Fabric(
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        strategy=hardware.strategy,
        num_nodes=hardware.num_nodes,
        precision=hardware.precision,
    )
    fabric.launch()
    return fabric


def fit(
    module: Classifier,
    train: tuple[sp.csr_matrix, np.ndarray],
    val: tuple[sp.csr_matrix, np.ndarray] | None,
    *,
    class_weight: np.ndarray | list[np.ndarray],
    config: TrainConfig,
    hardware: Hardware | None = None,
    progress: bool = True,
    augment: Callable[[torch.Tensor, np.random.Generator], torch.Tensor] | None = None,
    state_dir: Path | None = None,
    run: dict | None = None,
    desc: str = "training",
) -> FitResult:
    """Train `module` in place; returns the history and the epoch whose weights were kept.

    Labels are one class index per cell, or for a multi-task module cells x tasks with one
    `class_weight` array per task; the loss is then the `config.task_weights` sum over tasks
    and early stopping follows the mean validation macro-F1 over tasks.

    `augment(x, rng)` transforms each training batch's dense input (donor augmentation).
    With `state_dir`, the training state is saved after every epoch, and a state already
    there (from a killed run described by the same `run`) is continued."""
    fabric = make_fabric(hardware or Hardware())
    fabric.seed_everything(config.seed, verbose=False)
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    batch_size = config.batch_size or auto_batch_size(
        train[0].shape[0], module.max_batch_size, module.steps_per_epoch
    )
    steps = n_batches(train[0].shape[0], batch_size, fabric.world_size)
    scheduler, schedule = step_schedule(optimizer, config, steps)
    restored = None
    if state_dir is not None:  # before setup, so DDP broadcasts the restored weights
        restored = load_state(state_dir, module, optimizer, scheduler, run or {})
    model, optimizer = fabric.setup(module, optimizer)
    objective = TaskLoss(class_weight, config).to(fabric.device)
    has_val = val is not None and val[0].shape[0] > 0
    if not has_val:
        log.info(
            "no validation cells: training for max_epochs=%d without early stopping",
            config.max_epochs,
        )

    # ranked by (val macro-F1, -val loss): macro-F1 on a few hundred cells plateaus, and the
    # loss breaks those ties in favour of the better-fitted epoch
    best = ((-1.0, -np.inf), 0, None)  # (score, epoch, state)
    history: list[dict] = []
    first_epoch = 0
    if restored is not None:
        best = (restored.best_score, restored.best_epoch, restored.best_state)
        history = restored.history
        first_epoch = config.max_epochs if restored.finished else restored.epoch + 1
        log.info("resuming after epoch %d from %s", restored.epoch, state_dir)

    def checkpoint(epoch: int, finished: bool) -> None:
        if state_dir is None or fabric.global_rank != 0:
            return
        state = TrainingState(epoch, history, best[0], best[1], best[2], finished)
        save_state(state_dir, state, module, optimizer, scheduler, run or {})

    start = time.perf_counter()
    show = progress and fabric.global_rank == 0
    bar = tqdm(range(first_epoch, config.max_epochs), desc=desc, unit="epoch", disable=not show)

    def epoch_batches(epoch: int):
        """This rank's shuffled training batches of one epoch."""
        return iterate_batches(
            *train,
            batch_size=batch_size,
            shuffle=True,
            seed=config.seed,
            epoch=epoch,
            rank=fabric.global_rank,
            world_size=fabric.world_size,
        )

    for epoch in bar:
        model.train()
        total = torch.zeros((), device=fabric.device)
        rng = np.random.default_rng([config.seed, epoch, fabric.global_rank])
        # within an epoch, a second bar (batches) once the epoch has run 2 s: TabNet epochs
        # on real data take minutes; short epochs stay one line
        batches = tqdm(epoch_batches(epoch), total=steps, desc=f"epoch {epoch + 1}", unit="batch",
                       leave=False, delay=2.0, mininterval=0.5, disable=not show)  # fmt: skip
        for batch in batches:
            if augment is not None:
                batch[X_KEY] = augment(batch[X_KEY], rng)
            batch = fabric.to_device(batch)
            out = model(batch)
            loss = objective(out, batch[Y_KEY])
            loss = loss + sum(out.loss_terms.values(), torch.zeros((), device=fabric.device))
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            if config.grad_clip:
                fabric.clip_gradients(model, optimizer, max_norm=config.grad_clip)
            optimizer.step()
            scheduler.step()  # per optimizer step (step_schedule)
            total += loss.detach()
        if steps < BN_RECALIBRATE_BELOW:
            recalibrate_batch_norm(module, epoch_batches(epoch), fabric.device)
        record = {"epoch": epoch, "loss": float(total) / max(steps, 1)}
        if has_val:
            record.update(objective.validate(module, val, fabric.device))
        history.append(record)
        if has_val:
            score = (round(record["val_macro_f1"], 10), -record["val_loss"])
        else:  # no validation: keep the last epoch
            score = (float(epoch), 0.0)
        if score > best[0]:
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            best = (score, epoch, state)
        bar.set_postfix(
            loss=f"{record['loss']:.4f}",
            val_f1=f"{record.get('val_macro_f1', float('nan')):.4f}",
            best=best[1],
        )
        done_steps = (epoch + 1) * steps
        stop = has_val and epoch - best[1] >= config.patience and done_steps >= config.min_steps
        checkpoint(epoch, finished=stop or epoch == config.max_epochs - 1)
        if stop:
            log.info("early stop after epoch %d (best epoch %d)", epoch + 1, best[1] + 1)
            break
    bar.close()
    warn_if_early_best(best[1], len(history), has_val, steps)
    module.load_state_dict(best[2])
    module.to("cpu")
    return FitResult(
        best_epoch=best[1],
        best_val_macro_f1=history[best[1]]["val_macro_f1"] if has_val else None,
        epochs_run=len(history),
        seconds=time.perf_counter() - start,
        batch_size=batch_size,
        is_main_process=fabric.global_rank == 0,
        history=history,
        schedule=schedule,
    )


def step_schedule(optimizer, config: TrainConfig, steps_per_epoch: int):
    """Learning rate by optimizer step: linear warm-up, then x lr_gamma every decay_steps.

    Why steps and not epochs: with the old per-epoch decay, a 271-cell set (6 steps an
    epoch) had its rate at 0.9^30 = 4% after 180 steps and near 0 after 100 epochs, so more
    epochs changed nothing; decaying per 100 steps (or per epoch when an epoch is longer)
    keeps large data on the schedule it had and lets small data keep learning."""
    planned = max(steps_per_epoch * config.max_epochs, 1)
    warmup = config.warmup_steps
    warmup = min(50, planned // 20) if warmup is None else warmup
    decay = config.decay_steps or max(steps_per_epoch, MIN_DECAY_STEPS)
    gamma = config.lr_gamma

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return ramp * gamma ** (step // decay)

    schedule = {"warmup_steps": warmup, "decay_steps": decay}
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), schedule


def warn_if_early_best(best_epoch: int, epochs_run: int, has_val: bool, steps: int) -> None:
    """Say so when the kept weights are from the first epochs: validation never improved
    after them, which on small data usually means too few steps or a rate too high."""
    if has_val and best_epoch <= 1 and epochs_run > best_epoch + 2:
        log.warning(
            "the kept model is from epoch %d of %d (%d optimizer steps in): validation "
            "macro-F1 never improved after it; with few cells try a smaller --batch-size, "
            "another --lr, or check that the labels are learnable",
            best_epoch + 1, epochs_run, (best_epoch + 1) * steps,
        )  # fmt: skip


def direct_fit_result(
    module, val, start: float, n_train: int, losses: tuple[float, ...] = ()
) -> FitResult:
    """The record of a fit by a family's own solver (one pass, no epochs): the training
    loss before and after when the solver reports it, and the validation macro-F1 when there
    are validation cells, so every family is compared the same way."""
    history: list[dict] = [
        {"epoch": step, "loss": float(loss)} for step, loss in enumerate(losses)
    ] or [{"epoch": 0, "loss": float("nan")}]
    score = None
    if val is not None and val[1].size:
        proba = predict_probas(module, iterate_batches(val[0], batch_size=EVAL_BATCH))[0]
        predicted = proba.argmax(1).numpy()
        score = float(f1_score(val[1], predicted, average="macro", zero_division=0))
        history[-1]["val_macro_f1"] = score
    return FitResult(
        best_epoch=0,
        best_val_macro_f1=score,
        epochs_run=1,
        seconds=time.perf_counter() - start,
        batch_size=n_train,
        history=history,
    )


@torch.no_grad()
def recalibrate_batch_norm(module: torch.nn.Module, batches, device) -> None:
    """Set every BatchNorm's running mean/variance to the average over `batches` of the
    batch statistics the layer sees in training mode (as torch.optim.swa_utils.update_bn)."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    was_training = module.training
    module.train()
    for batch in batches:
        module({k: v.to(device) for k, v in batch.items() if k != Y_KEY})
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    module.train(was_training)


class TaskLoss(torch.nn.Module):
    """The configured loss of every task (label column), weighted and summed."""

    def __init__(self, class_weight: np.ndarray | list[np.ndarray], config: TrainConfig):
        super().__init__()
        weights = [class_weight] if isinstance(class_weight, np.ndarray) else list(class_weight)
        self.losses = torch.nn.ModuleList(
            make_loss(config.loss, w, len(w), **loss_options(config)) for w in weights
        )
        self.class_weight = weights
        self.task_weights = config.task_weights or (1.0,) * len(weights)
        if len(self.task_weights) != len(weights):
            msg = f"{len(self.task_weights)} task_weights for {len(weights)} label columns"
            raise ValueError(msg)

    def forward(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        y = y if y.ndim == 2 else y[:, None]
        terms = zip(self.task_weights, self.losses, out.all_logits(), strict=True)
        return sum(w * loss(z.float(), y[:, t]) for t, (w, loss, z) in enumerate(terms))

    def validate(self, module, val, device) -> dict[str, float | list[float]]:
        """Validation macro-F1 (mean over tasks) and the weighted training objective."""
        probas = predict_probas(module, iterate_batches(val[0], batch_size=EVAL_BATCH), device)
        y = val[1] if val[1].ndim == 2 else val[1][:, None]
        f1 = [
            float(f1_score(y[:, t], p.argmax(1).numpy(), average="macro", zero_division=0))
            for t, p in enumerate(probas)
        ]
        nll = [
            _weighted_nll(p.numpy(), y[:, t], self.class_weight[t]) for t, p in enumerate(probas)
        ]
        record = {
            "val_macro_f1": float(np.mean(f1)),
            "val_loss": float(np.dot(self.task_weights, nll)),
        }
        if len(f1) > 1:
            record["val_macro_f1_tasks"] = f1
        return record


def loss_options(config: TrainConfig) -> dict[str, float]:
    """The TrainConfig fields that tune the chosen loss, as `make_loss` options."""
    return {"gamma": config.focal_gamma} if config.loss == "focal" else {}


def _weighted_nll(proba: np.ndarray, y: np.ndarray, class_weight: np.ndarray) -> float:
    """The training objective on validation cells: class-weighted mean negative log-likelihood."""
    weights = class_weight[y].astype(np.float64)
    nll = -np.log(np.clip(proba[np.arange(y.size), y], 1e-12, None))
    return float((weights * nll).sum() / max(weights.sum(), 1e-12))
