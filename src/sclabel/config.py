"""Frozen configuration dataclasses, stored in a checkpoint's config.json.

Each config round-trips through plain JSON so a saved model says exactly how it was made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Self

from sclabel.errors import InputError

# choices and defaults the command line shows without importing torch (one place for each)
EXPLAIN_METHODS = ("auto", "mask", "gradient")  # inference/explain.py
PRETRAIN_STATE_EVERY = 100  # optimizer steps between saved pretraining states (--save-every)

# the training losses (training/losses.py) and the option names each accepts beyond its
# class weights; kept here, free of torch, so the CLI's --help needs no torch
LOSS_OPTIONS: dict[str, tuple[str, ...]] = {
    "ce": (),
    "weighted_ce": (),
    "focal": ("gamma",),
    "dice": ("smooth",),
    "bce": (),
}
LOSSES = tuple(LOSS_OPTIONS)


class _JSONConfig:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(names))
        if unknown:
            msg = f"{cls.__name__}: unknown option(s) {unknown}; known: {sorted(names)}"
            raise InputError(msg)
        # JSON has no tuples; restore them where the field default is one.
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fixed)


@dataclass(frozen=True)
class DataConfig(_JSONConfig):
    """How cells, labels, genes and splits are read from an AnnData."""

    label_key: str
    split_by: str | None = None
    split_key: str | None = None  # an obs column of train/val/test (e.g. from sclabel prepare)
    layer: str | None = None
    gene_key: str | None = None
    target_sum: float = 1e4
    min_gene_coverage: float = 0.5
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    # more label columns, each with its own head on a shared encoder (multi-task)
    extra_label_keys: tuple[str, ...] = ()
    obsm_key: str | None = None  # train on adata.obsm[key] (an embedding) instead of genes
    pca: int | None = None  # principal components of expression, fitted on training cells
    values: str | None = None  # --input: counts, log1p, log2 or normalized (None: detected)
    genes_from: str | None = None  # --genes / --genes-from: trained on the genes it shares

    @property
    def label_keys(self) -> tuple[str, ...]:
        """Every label column, the primary one (`label_key`) first."""
        return (self.label_key, *self.extra_label_keys)

    def __post_init__(self) -> None:
        keys = self.label_keys
        if len(set(keys)) != len(keys):
            raise InputError(f"label columns must differ, got {list(keys)}")
        if self.obsm_key is not None and self.pca is not None:
            msg = "choose one input: an obsm embedding (obsm_key) or pca of expression, not both"
            raise InputError(msg)
        if self.pca is not None and self.pca < 1:
            raise InputError(f"pca must be a positive number of components, got {self.pca}")
        kinds = ("counts", "log1p", "log2", "normalized")
        if self.values is not None and self.values not in kinds:
            raise InputError(f"input values must be one of {kinds}, got {self.values!r}")
        fractions = self.split_fractions
        if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            msg = (
                f"split_fractions must be three non-negative numbers summing to 1, got {fractions}"
            )
            raise InputError(msg)
        if fractions[0] <= 0:
            raise InputError("the training fraction of split_fractions must be positive")
        if not 0 < self.min_gene_coverage <= 1:
            raise InputError("min_gene_coverage must be in (0, 1]")


@dataclass(frozen=True)
class ModelConfig(_JSONConfig):
    """A model family name plus that family's own hyperparameters."""

    family: str = "mlp"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig(_JSONConfig):
    """Optimisation settings; defaults suit a laptop CPU. Devices are `Hardware`'s."""

    max_epochs: int = 30
    batch_size: int | None = None  # None: n_train / family steps within [32, cap] (auto_batch_size)
    lr: float = 3e-3
    weight_decay: float = 0.01
    # the schedule counts optimizer steps, not epochs (an epoch is 6 steps on 200 cells and
    # 4,000 on a million): linear warm-up over `warmup_steps` (None: 5% of the planned steps,
    # at most 50), then lr x lr_gamma every `decay_steps` (None: one epoch, at least 100 steps)
    lr_gamma: float = 0.9
    warmup_steps: int | None = None
    decay_steps: int | None = None
    patience: int = 5  # epochs without a better validation macro-F1 before stopping ...
    min_steps: int = 300  # ... once at least this many optimizer steps have run
    grad_clip: float | None = None
    # training loss (training/losses.py): ce, weighted_ce, focal, dice or bce; None resolves
    # to weighted_ce, or to ce with upsampling (the classes are balanced by repetition then)
    loss: str | None = None
    focal_gamma: float = 2.0  # focal loss exponent; 0 is cross-entropy
    # 0: off; else each training class is repeated up to at least this fraction of the
    # largest class's cells (1: all as large as the largest); True means 1
    upsample: float = 0.0
    # multi-task: the loss is sum_t task_weights[t] * loss_t over the label columns
    # (DataConfig.label_keys order); None weighs every column 1
    task_weights: tuple[float, ...] | None = None
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Also reads checkpoints of sclabel 0.1, whose train entry held the hardware and
        progress options too (they are not optimisation settings and are dropped here)."""
        own = {k: v for k, v in values.items() if k not in HARDWARE_FIELDS and k != "progress"}
        return super().from_dict(own)

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise InputError("max_epochs and batch_size must be at least 1")
        if self.lr <= 0:
            raise InputError("lr must be positive")
        steps = (self.warmup_steps or 0, self.decay_steps or 1, self.min_steps)
        if min(steps) < 0 or (self.decay_steps is not None and self.decay_steps < 1):
            raise InputError("warmup_steps and min_steps must be >= 0, decay_steps >= 1")
        self._check_loss_options()

    def _check_loss_options(self) -> None:
        """Validate loss and upsampling and resolve the default loss (frozen: setattr)."""
        try:
            upsample = float(self.upsample)  # True (from the Python API) means 1
        except (TypeError, ValueError):
            upsample = -1.0
        if not 0 <= upsample <= 1:
            msg = (
                f"upsample must be in [0, 1] (0: off, 1: every class as large as the largest), "
                f"got {self.upsample}"
            )
            raise InputError(msg)
        object.__setattr__(self, "upsample", upsample)
        if self.loss is None:
            object.__setattr__(self, "loss", "ce" if upsample > 0 else "weighted_ce")
        if self.loss not in LOSSES:
            raise InputError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.focal_gamma < 0:
            raise InputError(f"focal_gamma must be non-negative, got {self.focal_gamma}")
        if self.task_weights is not None:
            object.__setattr__(self, "task_weights", tuple(float(w) for w in self.task_weights))
            if any(w < 0 for w in self.task_weights) or not any(self.task_weights):
                msg = f"task_weights must be non-negative and not all 0, got {self.task_weights}"
                raise InputError(msg)


@dataclass(frozen=True)
class Hardware(_JSONConfig):
    """Where training runs (Lightning Fabric): separate from the optimisation settings, so a
    model trained on a GPU and one trained on a laptop record the same TrainConfig."""

    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"  # "ddp" for several devices; Fabric picks up torchrun/SLURM ranks
    num_nodes: int = 1
    parallel_members: bool = False  # ensemble members one per device instead of DDP
    precision: str = "32-true"
    # CPU threads torch uses (None: by model size, or OMP_NUM_THREADS; training/threads.py)
    threads: int | None = None


HARDWARE_FIELDS = tuple(f.name for f in dataclasses.fields(Hardware))


def split_options(
    options: dict[str, Any], defaults: dict[str, Any] | None = None
) -> tuple[TrainConfig, Hardware, bool]:
    """`train(**options)`'s keywords as (TrainConfig, Hardware, progress): a family's
    preferred settings (`defaults`) first, then the caller's."""
    options = {**(defaults or {}), **options}
    progress = bool(options.pop("progress", True))
    hardware = Hardware.from_dict({k: options.pop(k) for k in HARDWARE_FIELDS if k in options})
    return TrainConfig.from_dict(options), hardware, progress


def auto_batch_size(n_train: int, cap: int = 256, steps: int = 20) -> int:
    """About `steps` optimizer steps per epoch on small data (20 by default; TabNet asks for
    100), `cap` cells per batch on large data, never below 32.

    Measured on the small real splits (benchmarks/RESULTS.md): 5 steps per epoch left the
    linear model short of convergence before early stopping.
    """
    return int(min(cap, max(32, n_train // steps)))
