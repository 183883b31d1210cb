"""Softmax regression: one linear layer from normalized genes to class logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sclabel.data.loader import X_KEY
from sclabel.models.base import Capabilities, Classifier, ModelOutput


@dataclass(frozen=True)
class LinearParams:
    pass


class LinearClassifier(Classifier):
    Params = LinearParams
    capabilities = Capabilities(embeds=False)  # no hidden layer for more heads to share
    sparse_input = True  # a sparse product skips densifying query rows (several x faster)

    def __init__(self, n_genes: int, n_classes: int, params: LinearParams) -> None:
        super().__init__(n_genes, n_classes, params)
        self.linear = nn.Linear(n_genes, n_classes)

    def forward(self, batch):
        x = batch[X_KEY]
        if x.layout == torch.sparse_csr:
            return ModelOutput(logits=x @ self.linear.weight.T + self.linear.bias)
        return ModelOutput(logits=self.linear(x))
