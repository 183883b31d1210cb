"""Convert a CellTypist model (.pkl) into a sclabel checkpoint without running pickle code.

A CellTypist model is a pickled dict: {"Model": sklearn LogisticRegression (with `features`),
"Scaler_": sklearn StandardScaler, "description": {...}}. `safe_pickle` reads the two sklearn
objects as inert records of their state; we take the arrays and build a `celltypist` module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sclabel.config import DataConfig, ModelConfig, TrainConfig
from sclabel.data.genes import Vocabulary
from sclabel.data.inputs import InputSpec
from sclabel.errors import InputError
from sclabel.inference.model import Model
from sclabel.io import safe_pickle
from sclabel.io.digest import sha256_file
from sclabel.models import build, resolve_params

SKLEARN_CLASSES = (
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._stochastic_gradient.SGDClassifier",
    "sklearn.preprocessing._data.StandardScaler",
)


def _state(entry, name: str, path: Path) -> dict:
    if not isinstance(entry, safe_pickle.PickledObject) or not isinstance(entry.state, dict):
        raise InputError(f"{path} is not a CellTypist model: {name!r} is not an sklearn object")
    return entry.state


def import_celltypist(path: str | Path) -> Model:
    """Read a CellTypist model file and return the equivalent sclabel `Model`."""
    path = Path(path)
    content = safe_pickle.load(path, records=SKLEARN_CLASSES)
    if not isinstance(content, dict) or not {"Model", "Scaler_"} <= set(content):
        raise InputError(f"{path} is not a CellTypist model (expected keys Model and Scaler_)")
    classifier = _state(content["Model"], "Model", path)
    scaler = _state(content["Scaler_"], "Scaler_", path)
    try:
        coef = np.asarray(classifier["coef_"], dtype=np.float32)
        intercept = np.asarray(classifier["intercept_"], dtype=np.float32)
        classes = [str(c) for c in classifier["classes_"]]
        genes = [str(g) for g in classifier["features"]]
        n_genes = len(genes)
        mean = np.asarray(scaler["mean_"] if scaler.get("with_mean", True) else np.zeros(n_genes))
        scale = np.asarray(scaler["scale_"] if scaler.get("with_std", True) else np.ones(n_genes))
    except KeyError as err:
        raise InputError(f"{path} lacks {err} that a fitted CellTypist model has") from err
    if coef.shape != (len(classes), n_genes) or mean.size != n_genes or scale.size != n_genes:
        raise InputError(f"{path}: weights, genes and scaler have inconsistent sizes")
    # sklearn stores one row for a binary problem; CellTypist models have more classes
    multi_class = "ovr" if classifier.get("multi_class") == "ovr" else "multinomial"
    params = {"multi_class": multi_class}
    module = build("celltypist", n_genes, len(classes), params)
    with torch.no_grad():
        module.linear.weight.copy_(torch.from_numpy(coef))
        module.linear.bias.copy_(torch.from_numpy(intercept))
        module.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        module.scale.copy_(torch.from_numpy(scale.astype(np.float32)))
    description = content.get("description") if isinstance(content.get("description"), dict) else {}
    return Model(
        module,
        inputs=InputSpec(Vocabulary(tuple(genes)), gene_key="var_names", training_input="log1p"),
        classes=classes,
        data_config=DataConfig(label_key="cell_type", gene_key="var_names"),
        model_config=ModelConfig("celltypist", resolve_params("celltypist", params)),
        train_config=TrainConfig(),
        metrics={
            "imported_from": {
                "source": "CellTypist",
                "file": path.name,
                "sha256": sha256_file(path),
                "celltypist": description,
            }
        },
        split=pd.DataFrame({"split": []}),
    )
