"""The model interface: a module takes a batch dict and returns a ModelOutput."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class ModelOutput:
    """What every model returns. The training loop adds cross-entropy on `logits` to the
    sum of `loss_terms` (e.g. a sparsity penalty); `embedding` is what a later head can use."""

    logits: torch.Tensor
    loss_terms: dict[str, torch.Tensor] = field(default_factory=dict)
    embedding: torch.Tensor | None = None


class Classifier(nn.Module):
    """Base for model families; a family sets `Params` (a dataclass) and implements forward."""

    Params: type
    sparse_input: bool = False  # forward accepts a torch sparse CSR `x` (prediction only)
    train_defaults: ClassVar[dict[str, Any]] = {}  # TrainConfig values this family prefers
    max_batch_size: int = 256  # the cap of the automatic batch size (config.auto_batch_size)

    def __init__(self, n_genes: int, n_classes: int, params) -> None:
        super().__init__()
        self.n_genes = n_genes
        self.n_classes = n_classes
        self.params = params

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:  # pragma: no cover
        raise NotImplementedError


@torch.no_grad()
def predict_proba(module: nn.Module, batches, device: torch.device | str = "cpu") -> torch.Tensor:
    """Class probabilities (cells x classes, float32, on CPU) for an iterable of batches."""
    was_training = module.training
    module.eval()
    out = [
        torch.softmax(module({k: v.to(device) for k, v in b.items()}).logits.float(), dim=1).cpu()
        for b in batches
    ]
    module.train(was_training)
    return torch.cat(out) if out else torch.empty(0, getattr(module, "n_classes", 0))
