"""Feed-forward networks: `mlp` (LayerNorm, ReLU) and `ffn`, the disease-state study's head.

Both stack Linear -> norm -> activation -> dropout. `hidden` lists the layer widths; when it
is empty, `depth` layers of `width` units are used.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from torch import nn

from sclabel.data.loader import X_KEY
from sclabel.errors import InputError
from sclabel.models.base import Classifier, ModelOutput

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": functools.partial(nn.LeakyReLU, 0.2),  # slope 0.2, as in the study
}
NORMS = {"layer": nn.LayerNorm, "batch": nn.BatchNorm1d, "none": None}


@dataclass(frozen=True)
class MLPParams:
    depth: int = 2
    width: int = 256
    dropout: float = 0.2
    activation: str = "relu"
    hidden: tuple[int, ...] = ()  # layer widths; overrides depth x width when given
    norm: str = "layer"

    def __post_init__(self) -> None:
        if self.depth < 1 or self.width < 1 or any(w < 1 for w in self.hidden):
            raise InputError("layer depth and widths must be at least 1")
        if not 0 <= self.dropout < 1:
            raise InputError("dropout must be in [0, 1)")
        if self.activation not in ACTIVATIONS:
            msg = f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}"
            raise InputError(msg)
        if self.norm not in NORMS:
            raise InputError(f"unknown norm {self.norm!r}; choose from {sorted(NORMS)}")

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.hidden) or (self.width,) * self.depth


@dataclass(frozen=True)
class FFNParams(MLPParams):
    """The study's classifier on embeddings: wide LeakyReLU(0.2) layers, no normalization."""

    hidden: tuple[int, ...] = (1024, 512)
    activation: str = "leaky_relu"
    norm: str = "none"


class MLPClassifier(Classifier):
    Params = MLPParams

    def __init__(self, n_genes: int, n_classes: int, params: MLPParams) -> None:
        super().__init__(n_genes, n_classes, params)
        layers: list[nn.Module] = []
        width_in = n_genes
        for width in params.widths:
            layers.append(nn.Linear(width_in, width))
            if NORMS[params.norm] is not None:
                layers.append(NORMS[params.norm](width))
            layers += [ACTIVATIONS[params.activation](), nn.Dropout(params.dropout)]
            width_in = width
        self.body = nn.Sequential(*layers)
        self.embedding_dim = width_in
        self.head = nn.Linear(width_in, n_classes)

    def forward(self, batch):
        embedding = self.body(batch[X_KEY])
        return ModelOutput(logits=self.head(embedding), embedding=embedding)


class FFNClassifier(MLPClassifier):
    """Cross-entropy and Adam (weight decay 0), as the study trained it."""

    Params = FFNParams
    train_defaults = {"lr": 1e-3, "weight_decay": 0.0}
