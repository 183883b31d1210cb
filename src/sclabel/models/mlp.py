"""A feed-forward network: `depth` hidden layers of `width` units with dropout."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from sclabel.data.loader import X_KEY
from sclabel.errors import InputError
from sclabel.models.base import Classifier, ModelOutput

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class MLPParams:
    depth: int = 2
    width: int = 256
    dropout: float = 0.2
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.depth < 1 or self.width < 1:
            raise InputError("mlp depth and width must be at least 1")
        if not 0 <= self.dropout < 1:
            raise InputError("mlp dropout must be in [0, 1)")
        if self.activation not in ACTIVATIONS:
            msg = f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}"
            raise InputError(msg)


class MLPClassifier(Classifier):
    Params = MLPParams

    def __init__(self, n_genes: int, n_classes: int, params: MLPParams) -> None:
        super().__init__(n_genes, n_classes, params)
        layers: list[nn.Module] = []
        width_in = n_genes
        for _ in range(params.depth):
            layers += [
                nn.Linear(width_in, params.width),
                nn.LayerNorm(params.width),
                ACTIVATIONS[params.activation](),
                nn.Dropout(params.dropout),
            ]
            width_in = params.width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width_in, n_classes)

    def forward(self, batch):
        embedding = self.body(batch[X_KEY])
        return ModelOutput(logits=self.head(embedding), embedding=embedding)
