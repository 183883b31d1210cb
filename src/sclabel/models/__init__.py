"""Model families by name. Adding one = a file here + one line in MODELS."""

from __future__ import annotations

import dataclasses
from typing import Any

from sclabel.errors import InputError
from sclabel.models import rules
from sclabel.models.base import Capabilities, Classifier, ModelOutput
from sclabel.models.celltypist import CellTypistClassifier
from sclabel.models.foundation import BertClassifier, PerceiverClassifier
from sclabel.models.linear import LinearClassifier
from sclabel.models.mlp import FFNClassifier, MLPClassifier
from sclabel.models.tabnet import TabNetClassifier

MODELS: dict[str, type[Classifier]] = {
    "linear": LinearClassifier,
    "mlp": MLPClassifier,
    "ffn": FFNClassifier,  # the disease-state study's feed-forward head (embeddings in)
    "tabnet": TabNetClassifier,  # scTab; `Model.explain` reads its feature mask
    "celltypist": CellTypistClassifier,  # built by `sclabel import-celltypist`
    "bert": BertClassifier,  # fine-tunes `sclabel pretrain` or Geneformer checkpoints
    "perceiver": PerceiverClassifier,  # fine-tunes `sclabel pretrain --arch perceiver`
}

__all__ = [
    "MODELS",
    "Capabilities",
    "Classifier",
    "ModelOutput",
    "build",
    "check_family",
    "resolve_params",
]


def resolve_params(family: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check a family's hyperparameters and fill in its defaults."""
    if family not in MODELS:
        raise InputError(f"unknown model family {family!r}; choose from {sorted(MODELS)}")
    params_cls = MODELS[family].Params
    known = {f.name for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        msg = f"{family}: unknown hyperparameter(s) {unknown}; known: {sorted(known)}"
        raise InputError(msg)
    return dataclasses.asdict(params_cls(**params))


def check_family(family: str, **asked) -> None:
    """Refuse options `family` cannot honour (the table in models/rules.py), before any
    data is read; `asked` holds what the user asked for (see `rules.check`)."""
    if family not in MODELS:
        raise InputError(f"unknown model family {family!r}; choose from {sorted(MODELS)}")
    rules.check(family, MODELS[family].capabilities, **asked)


def build(family: str, n_genes: int, n_classes: int, params: dict[str, Any]) -> Classifier:
    resolved = resolve_params(family, params)
    return MODELS[family](n_genes, n_classes, MODELS[family].Params(**resolved))
