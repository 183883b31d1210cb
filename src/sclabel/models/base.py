"""The model interface: a module takes a batch dict and returns a ModelOutput."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class ModelOutput:
    """What every model returns. The training loop adds the loss on `logits` to the sum of
    `loss_terms` (e.g. a sparsity penalty); `embedding` is what a later head can use.
    A multi-task model (models/multitask.py) adds one entry of `task_logits` per further
    label column, in DataConfig.label_keys order; the loop weighs their losses in."""

    logits: torch.Tensor
    loss_terms: dict[str, torch.Tensor] = field(default_factory=dict)
    embedding: torch.Tensor | None = None
    task_logits: dict[str, torch.Tensor] = field(default_factory=dict)

    def all_logits(self) -> list[torch.Tensor]:
        """Logits of every task, the primary label column first."""
        return [self.logits, *self.task_logits.values()]


@dataclass(frozen=True)
class Capabilities:
    """What a family can do, declared once on its class; `sclabel.training.checks` turns
    these into the one table of what combinations of options work, checked before any data
    is read, and every caller asks here instead of probing for methods or family names."""

    gradient: bool = True  # trained by the gradient loop; False: `fit_direct` (own solver)
    pretrained: bool = False  # `bind` loads pretrained weights and maps genes to its tokens
    genes_only: bool = False  # reads genes (as tokens): no obsm or pca input
    embeds: bool = True  # ModelOutput.embedding: extra heads, `sclabel embed`
    explains: bool = False  # `explain_batch`: per-cell gene importances


class Classifier(nn.Module):
    """Base for model families; a family sets `Params` (a dataclass) and implements forward."""

    Params: type
    capabilities: ClassVar[Capabilities] = Capabilities()
    sparse_input: bool = False  # forward accepts a torch sparse CSR `x` (prediction only)
    train_defaults: ClassVar[dict[str, Any]] = {}  # TrainConfig values this family prefers
    max_batch_size: int = 256  # the cap of the automatic batch size (config.auto_batch_size)
    steps_per_epoch: int = 20  # what the automatic batch size aims at on small data
    embedding_dim: int | None = None  # width of ModelOutput.embedding; None: it has none

    def __init__(self, n_genes: int, n_classes: int, params) -> None:
        super().__init__()
        self.n_genes = n_genes
        self.n_classes = n_classes
        self.params = params

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def upgrade_params(cls, params: dict) -> dict:
        """Hyperparameters saved by an older sclabel, with the values those models had for
        parameters added since (a new default must not change an old model)."""
        return params

    def bind(self, vocabulary) -> None:
        """Before training (capabilities.pretrained): load weights, map genes to tokens."""

    def fits_directly(self, X, *, augmented: bool, config, distributed: bool = False) -> bool:
        """Train with `fit_direct` instead of the gradient loop on these cells? (`distributed`:
        the run asked for several processes, which only the gradient loop uses.)"""
        return not self.capabilities.gradient

    def fit_direct(self, train, val, *, class_weight, config):  # pragma: no cover
        """Fit with the family's own solver (capabilities.gradient is False)."""
        raise NotImplementedError(f"{type(self).__name__} is trained by the gradient loop")

    def explain_batch(self, x: torch.Tensor):  # pragma: no cover
        """(importances, logits) of a batch (capabilities.explains)."""
        raise NotImplementedError(f"{type(self).__name__} has no gene importances")


@torch.no_grad()
def predict_probas(
    module: nn.Module, batches, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """Class probabilities of every task (cells x classes each, float32, on CPU), the
    primary label column first, for an iterable of batches."""
    was_training = module.training
    module.eval()
    parts: list[list[torch.Tensor]] = []
    for b in batches:
        out = module({k: v.to(device) for k, v in b.items()})
        parts.append([torch.softmax(z.float(), dim=1).cpu() for z in out.all_logits()])
    module.train(was_training)
    if not parts:
        return [torch.empty(0, n) for n in task_sizes(module)]
    return [torch.cat(task) for task in zip(*parts, strict=True)]


def predict_proba(
    module: nn.Module, batches, device: torch.device | str = "cpu", task: int = 0
) -> torch.Tensor:
    """Class probabilities (cells x classes) of one task (0: the primary label column)."""
    return predict_probas(module, batches, device)[task]


def task_sizes(module: nn.Module) -> list[int]:
    """Number of classes per task, the primary label column first."""
    return [getattr(module, "n_classes", 0), *getattr(module, "extra_classes", {}).values()]
