"""Masked pretraining on a tokenized corpus (`sclabel tokenize`): BERT or Perceiver.

BERT (Geneformer): 15% of a cell's gene tokens are masked (80% <mask>, 10% a random gene,
10% kept) and predicted. Perceiver (Exceiver): a share of expressed genes plus sampled
unexpressed genes are hidden and their counts predicted (see models/perceiver.py).
Batches are grouped by length within shuffled mega-batches and padded only to the longest
cell of each batch, so short cells do not pay for long ones. Linear warmup, then linear
decay. Lightning Fabric runs it on CPU, a GPU or several (DDP).

The output folder is what fine-tuning (`sclabel train --model bert --param from_dir=...`)
and `transformers.AutoModel` read: config.json + model.safetensors + the tokenizer files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sclabel.config import PRETRAIN_STATE_EVERY, _JSONConfig
from sclabel.errors import InputError
from sclabel.foundation.objectives import mask_tokens
from sclabel.io.atomic import atomic_dir
from sclabel.models.foundation import TINY_BERT, quiet_transformers
from sclabel.store.format import Store

log = logging.getLogger("sclabel")
PAD_ID = 0
ARCHS = ("bert", "perceiver")
# Geneformer V1's 6-layer architecture (../shared/data/geneformer_v1/config_6L.json)
BERT_PRESETS = {
    "tiny": TINY_BERT,
    "geneformer-6L": {
        "hidden_size": 256,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "max_position_embeddings": 2048,
        "hidden_act": "relu",
        "layer_norm_eps": 1e-12,
        "hidden_dropout_prob": 0.02,
        "attention_probs_dropout_prob": 0.02,
        "initializer_range": 0.02,
    },
}
PERCEIVER_PRESETS = {
    "tiny": {"d_model": 32, "n_latents": 16, "n_heads": 4, "n_self_layers": 1},
    "base": {"d_model": 128, "n_latents": 64, "n_heads": 4, "n_self_layers": 2},
}
# genes per cell each preset reads unless --max-len says otherwise: the tiny presets are for
# a laptop CPU (BERT attention costs length^2: at 2,048 a tiny BERT step took ~50 s on 2
# cores; see benchmarks/pretrain_presets.py), the others keep Geneformer's 2,048
PRESET_MAX_LEN = {
    ("bert", "tiny"): 256,
    ("bert", "geneformer-6L"): 2048,
    ("perceiver", "tiny"): 256,
    ("perceiver", "base"): 2048,
}
STATE_EVERY = PRETRAIN_STATE_EVERY  # optimizer steps between saved training states


@dataclass(frozen=True)
class PretrainConfig(_JSONConfig):
    arch: str = "bert"
    preset: str = "tiny"
    config_file: str | None = None  # a model config.json instead of the preset
    objective: str = "nb"  # perceiver: nb, poisson or mse
    max_len: int | None = None  # None: the preset's (PRESET_MAX_LEN), or the config file's
    batch_size: int = 16
    max_steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.001
    mask_prob: float = 0.15
    group_batches: int = 50  # batches per length-sorted mega-batch
    seed: int = 0
    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    threads: int | None = None  # None: OMP_NUM_THREADS, else every core
    save_every: int = STATE_EVERY  # steps between saved states (0: none); see `pretrain`
    progress: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise InputError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        presets = BERT_PRESETS if self.arch == "bert" else PERCEIVER_PRESETS
        if self.config_file is None and self.preset not in presets:
            raise InputError(f"unknown {self.arch} preset {self.preset!r}; have {list(presets)}")
        if self.max_len is None:
            object.__setattr__(self, "max_len", self._default_max_len())
        if self.save_every < 0:
            raise InputError("save_every must be >= 0 (0: no saved states)")
        if min(self.max_len, self.batch_size, self.max_steps, self.group_batches) < 1:
            raise InputError("max_len, batch_size, max_steps and group_batches must be >= 1")
        if not 0 < self.mask_prob < 1 or self.lr <= 0 or self.warmup_steps < 0:
            raise InputError("mask_prob must be in (0, 1), lr > 0 and warmup_steps >= 0")

    def _default_max_len(self) -> int:
        if self.config_file is None:
            return PRESET_MAX_LEN[(self.arch, self.preset)]
        try:
            architecture = json.loads(Path(self.config_file).read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read --config {self.config_file}: {err}") from err
        return int(architecture.get("max_position_embeddings", architecture.get("max_len", 2048)))


@dataclass
class PretrainResult:
    out: Path
    history: list[dict]  # step, loss, lr
    tokens_per_second: float
    seconds: float


def length_grouped_batches(
    lengths: np.ndarray, batch_size: int, *, group_batches: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffle, sort each mega-batch of `group_batches` batches by length (longest first),
    cut it into batches, and shuffle the batches (as Geneformer's length-grouped sampler)."""
    order = rng.permutation(lengths.size)
    batches = []
    for start in range(0, order.size, batch_size * group_batches):
        group = order[start : start + batch_size * group_batches]
        group = group[np.argsort(-lengths[group], kind="stable")]
        batches += [group[i : i + batch_size] for i in range(0, group.size, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class MaskedGeneModel(torch.nn.Module):
    """BertForMaskedLM scoring only the masked positions: Hugging Face's forward projects
    every position onto the whole vocabulary (cells x length x 25k logits), most of which
    the loss then ignores. Wrapped as one module so Fabric/DDP see a single forward."""

    def __init__(self, mlm) -> None:
        super().__init__()
        self.mlm = mlm

    def forward(self, input_ids, attention_mask, labels):
        states = self.mlm.bert(input_ids=input_ids, attention_mask=attention_mask)
        picked = labels != -100
        logits = self.mlm.cls(states.last_hidden_state[picked])
        return torch.nn.functional.cross_entropy(logits.float(), labels[picked])


def _model_for(config: PretrainConfig, n_tokens: int):
    if config.config_file is not None:
        architecture = json.loads(Path(config.config_file).read_text())
    elif config.arch == "bert":
        architecture = dict(BERT_PRESETS[config.preset])
    else:
        architecture = dict(PERCEIVER_PRESETS[config.preset])
    if config.arch == "bert":
        from transformers import BertConfig, BertForMaskedLM

        keep = {k: v for k, v in architecture.items() if k != "architectures"}
        keep.update(vocab_size=n_tokens, pad_token_id=PAD_ID)
        keep["max_position_embeddings"] = max(
            keep.get("max_position_embeddings", 0), config.max_len
        )
        # saved in config.json: fine-tuning and embedding default to the length the model
        # was pretrained on (tiny: 256), not to its position table (2,048)
        keep["pretrained_max_len"] = config.max_len
        return MaskedGeneModel(BertForMaskedLM(BertConfig(**keep)))
    from sclabel.foundation.perceiver import PerceiverConfig, PerceiverForMaskedExpression

    names = {f.name for f in dataclasses.fields(PerceiverConfig)}
    values = {k: v for k, v in architecture.items() if k in names}
    values.update(
        n_tokens=n_tokens,
        objective=config.objective,
        mask_fraction=config.mask_prob,
        max_len=config.max_len,
    )
    return PerceiverForMaskedExpression(PerceiverConfig(**values))


def pretrain(
    store: Store | str | Path, out: str | Path, config: PretrainConfig, *, resume: bool = False
) -> PretrainResult:
    """Pretrain from scratch on a tokenized store and write the model folder `out`.

    Every `config.save_every` steps the training state (weights, optimizer, schedule, RNG,
    history) is saved in `.OUT.pretraining` beside `out`; after a crash or a kill,
    `resume=True` continues from the last saved step and gives the same model as an
    uninterrupted run. The state goes once `out` is written."""
    from sclabel.io.atomic import check_dir
    from sclabel.training import threads

    check_dir(out, marker="config.json", what="pretrained model")  # before hours of work
    state_dir = Path(out).with_name(f".{Path(out).name}.pretraining")
    if state_dir.exists() and not resume:
        raise InputError(
            f"an interrupted pretraining left its state in {state_dir}; pass --resume "
            "(resume=True) to continue it, or delete that folder to start again"
        )
    with threads.using(threads.choose(None, config.threads)):
        return _pretrain(store, out, config, state_dir)


def _pretrain(store: Store | str | Path, out: str | Path, config: PretrainConfig, state_dir: Path):
    from tqdm.auto import tqdm

    from sclabel.foundation.vocabulary import GeneTokenizer
    from sclabel.training.loop import make_fabric
    from sclabel.training.resume import TrainingState, load_state, save_state

    store = store if isinstance(store, Store) else Store.open(store)
    if not store.meta.get("rank_order"):
        raise InputError(
            f"{store.path} is not a tokenized corpus; make one with `sclabel tokenize`"
        )
    if config.arch == "perceiver" and store.meta.get("tokenizer", {}).get("truncated"):
        raise InputError(
            f"{store.path} keeps only each cell's first {store.meta['tokenizer']['max_len']} "
            "genes (`sclabel tokenize --truncate`); Perceiver pretraining queries genes a "
            "cell does not express, so it needs every expressed gene: tokenize again "
            "without --truncate"
        )
    tokenizer = GeneTokenizer.load(store.path)
    n_tokens = int(tokenizer.gene_tokens.max()) + 1
    fabric = make_fabric(config)  # type: ignore[arg-type]  # has the Fabric fields
    fabric.seed_everything(config.seed, verbose=False)
    module = _model_for(config, n_tokens)
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_decay(config))
    model, optimizer = fabric.setup(module, optimizer)
    lengths = np.minimum(np.diff(store.indptr), config.max_len)
    # the Perceiver's masking cuts cells itself and must see every expressed gene, so that
    # a gene past max_len is never drawn as "unexpressed"
    read_len = config.max_len if config.arch == "bert" else int(np.diff(store.indptr).max())
    generator = torch.Generator()
    history: list[dict] = []
    ignored = ("progress", "save_every", "threads")  # a resume may change these
    run = {k: v for k, v in config.to_dict().items() if k not in ignored}
    run |= {"corpus_cells": int(lengths.size), "corpus_tokens": int(lengths.sum())}
    restored = load_state(state_dir, module, optimizer, scheduler, run)  # every rank reads it
    if restored is not None:
        history = restored.history
        log.info("resuming pretraining after step %d from %s", restored.epoch, state_dir)
    elif state_dir.exists():
        log.info("no saved state in %s yet: pretraining from step 0", state_dir)
    done = 0 if restored is None else restored.epoch  # steps already taken
    tokens_seen, step, epoch, position, start = 0, done, 0, 0, time.perf_counter()
    bar = tqdm(
        total=config.max_steps,
        initial=done,
        desc="pretraining",
        unit="step",
        disable=not config.progress or fabric.global_rank != 0,
    )
    model.train()
    try:
        while step < config.max_steps:
            rng = np.random.default_rng([config.seed, epoch])
            batches = length_grouped_batches(
                lengths, config.batch_size, group_batches=config.group_batches, rng=rng
            )
            per_rank = max(1, len(batches) // fabric.world_size)  # ranks stay in step
            batches = batches[fabric.global_rank :: fabric.world_size][:per_rank]
            for rows in batches:
                if step >= config.max_steps:
                    break
                position += 1
                if position <= done:  # taken before the interruption: the same order again
                    continue
                # masks and dropout drawn from (seed, rank, step), on every device, from two
                # independent streams: a resumed run takes the same steps as an uninterrupted one
                masks, dropout = np.random.SeedSequence(
                    [config.seed, fabric.global_rank, step]
                ).generate_state(2)
                generator.manual_seed(int(masks))
                torch.manual_seed(int(dropout))
                batch = token_batch(store, tokenizer, rows, read_len)
                loss = _loss(model, module, batch, config, generator, fabric.device)
                optimizer.zero_grad(set_to_none=True)
                fabric.backward(loss)
                optimizer.step()
                scheduler.step()
                tokens_seen += int(lengths[rows].sum())  # model inputs: up to max_len per cell
                value = float(loss.detach())
                history.append({"step": step, "loss": value, "lr": scheduler.get_last_lr()[0]})
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}")
                step += 1
                every = config.save_every
                if every and step % every == 0 and step < config.max_steps:
                    if fabric.global_rank == 0:  # the folder must be one every rank can read
                        state = TrainingState(step, history, (0.0, 0.0), 0, {})
                        save_state(state_dir, state, module, optimizer, scheduler, run)
                    fabric.barrier()
            epoch += 1
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    result = PretrainResult(Path(out), history, tokens_seen * fabric.world_size / seconds, seconds)
    if fabric.global_rank == 0:
        saved = dataclasses.replace(tokenizer, max_len=config.max_len)  # what the model reads
        _save(module, saved, out, config, result)
        shutil.rmtree(state_dir, ignore_errors=True)  # only now: the model is complete
    return result


def token_batch(store: Store, tokenizer, rows: np.ndarray, max_len: int) -> dict:
    """Rows of a tokenized store as padded tensors: the first `max_len` genes of each cell
    in rank order, their raw counts and log-normalized values, the library size."""
    from sclabel.foundation.corpus import token_rows

    tokens, counts, lengths, factor = token_rows(store, rows, max_len, tokenizer=tokenizer)
    return {
        "tokens": torch.from_numpy(tokens.astype(np.int64)),
        "counts": torch.from_numpy(counts),
        "values": torch.from_numpy(np.log1p(counts * factor[:, None])),
        "library": torch.from_numpy((store.meta["target_sum"] / factor).astype(np.float32)),
        "mask": torch.from_numpy(np.arange(tokens.shape[1])[None, :] < lengths[:, None]),
    }


def _loss(model, module, batch, config, generator, device) -> torch.Tensor:
    """The masked objective of one batch; `model` is Fabric's wrapper of `module`."""
    if config.arch == "bert":
        n_tokens = module.mlm.config.vocab_size
        inputs, labels = mask_tokens(
            batch["tokens"], batch["mask"], config.mask_prob, n_tokens, generator
        )
        return model(inputs.to(device), batch["mask"].long().to(device), labels.to(device))
    from sclabel.foundation.objectives import make_masked_batch

    masked = make_masked_batch(
        batch["tokens"],
        batch["values"],
        batch["counts"],
        batch["library"],
        batch["mask"],
        module.config,
        generator,
    )
    return model({k: v.to(device) for k, v in masked.items()})["loss"]


def _warmup_decay(config: PretrainConfig):
    warmup, total = config.warmup_steps, config.max_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _save(model, tokenizer, out, config: PretrainConfig, result: PretrainResult) -> None:
    with atomic_dir(out, marker="config.json", what="pretrained model") as folder:
        if config.arch == "bert":
            with quiet_transformers():
                model.mlm.save_pretrained(folder)  # config.json + model.safetensors
        else:
            from sclabel.foundation import perceiver

            perceiver.save(model, folder)
        tokenizer.save(folder, share=True)  # + Hugging Face's and Geneformer's files
        info: dict[str, Any] = {
            "config": config.to_dict(),
            "steps": len(result.history),
            "seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second,
            "history": result.history,
        }
        (folder / "pretrain.json").write_text(json.dumps(info, indent=1))


def loss_fell(history: list[dict], window: int = 20) -> tuple[float, float]:
    """Mean loss of the first and the last `window` steps."""
    losses = [h["loss"] for h in history]
    window = max(1, min(window, len(losses) // 2))
    return float(np.mean(losses[:window])), float(np.mean(losses[-window:]))


__all__ = ["PretrainConfig", "PretrainResult", "length_grouped_batches", "mask_tokens", "pretrain"]
