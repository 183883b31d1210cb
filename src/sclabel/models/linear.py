"""Softmax regression: one linear layer from normalized genes to class logits."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from sclabel.data.loader import X_KEY
from sclabel.models.base import Classifier, ModelOutput


@dataclass(frozen=True)
class LinearParams:
    pass


class LinearClassifier(Classifier):
    Params = LinearParams

    def __init__(self, n_genes: int, n_classes: int, params: LinearParams) -> None:
        super().__init__(n_genes, n_classes, params)
        self.linear = nn.Linear(n_genes, n_classes)

    def forward(self, batch):
        return ModelOutput(logits=self.linear(batch[X_KEY]))
