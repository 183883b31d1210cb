"""CellTypist's classifier: standard-scaled log1p input, clipped at 10, then logistic regression.

Used for models imported from CellTypist (`sclabel import-celltypist`). Genes the query lacks
are left out of the sum, as CellTypist does, via the batch's `present` mask; without a mask
every model gene is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sclabel.data.loader import PRESENT_KEY, X_KEY
from sclabel.errors import InputError
from sclabel.models.base import Classifier, ModelOutput


@dataclass(frozen=True)
class CellTypistParams:
    multi_class: str = "multinomial"  # "ovr": one-vs-rest sigmoids, normalized to sum to 1
    clip: float = 10.0  # CellTypist clips scaled values above this

    def __post_init__(self) -> None:
        if self.multi_class not in {"multinomial", "ovr"}:
            raise InputError("celltypist multi_class must be 'multinomial' or 'ovr'")


class CellTypistClassifier(Classifier):
    Params = CellTypistParams

    def __init__(self, n_genes: int, n_classes: int, params: CellTypistParams) -> None:
        super().__init__(n_genes, n_classes, params)
        self.linear = nn.Linear(n_genes, n_classes)
        self.register_buffer("mean", torch.zeros(n_genes))
        self.register_buffer("scale", torch.ones(n_genes))

    def forward(self, batch):
        z = ((batch[X_KEY] - self.mean) / self.scale).clamp(max=self.params.clip)
        if PRESENT_KEY in batch:
            z = z * batch[PRESENT_KEY].to(z.dtype)
        decision = self.linear(z)
        if self.params.multi_class == "ovr":  # softmax(log sigmoid) = sigmoids normalized
            return ModelOutput(logits=nn.functional.logsigmoid(decision))
        return ModelOutput(logits=decision)
