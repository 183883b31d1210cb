"""sclabel: train and apply cell-level classifiers to single-cell RNA-seq data.

model = sclabel.train(adata, label_key="cell_type", split_by="donor", model="mlp")
prediction = model.predict(query)
prediction.to_adata(query)
report = sclabel.evaluate(prediction, query.obs["cell_type"], out_dir="report")
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

# name -> the module that defines it. Imported on first use, so `import sclabel` and
# `sclabel --help` do not load torch and scikit-learn (3.7 s before the CLI could answer).
_EXPORTS = {
    "InputError": "sclabel.errors",
    "Model": "sclabel.model",
    "Prediction": "sclabel.predict",
    "Report": "sclabel.evaluation.report",
    "evaluate": "sclabel.evaluation.report",
    "import_celltypist": "sclabel.celltypist_import",
    "predict": "sclabel.predict",
    "read": "sclabel.data.io",
    "train": "sclabel.training.api",
}
__all__ = [
    "InputError",
    "Model",
    "Prediction",
    "Report",
    "datasets",
    "evaluate",
    "import_celltypist",
    "predict",
    "read",
    "train",
]

if TYPE_CHECKING:
    from sclabel import datasets
    from sclabel.celltypist_import import import_celltypist
    from sclabel.data.io import read
    from sclabel.errors import InputError
    from sclabel.evaluation.report import Report, evaluate
    from sclabel.model import Model
    from sclabel.predict import Prediction, predict
    from sclabel.training.api import train


def __getattr__(name: str):
    if name == "datasets":
        return importlib.import_module("sclabel.datasets")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sclabel' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # found once, then a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """Importing a submodule sets it as an attribute of its package: the first import of
    sclabel.predict (the module, from anywhere) would hide sclabel.predict (the function)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
