"""sclabel: train and apply cell-level classifiers to single-cell RNA-seq data.

sclabel.annotate(query, "celltypist:Immune_All_Low")   # or a model folder: answers in obs
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

from sclabel import _deprecated

# name -> the module that defines it. Imported on first use, so `import sclabel` and
# `sclabel --help` do not load torch and scikit-learn (3.7 s before the CLI could answer).
_EXPORTS = {
    "InputError": "sclabel.errors",
    "Model": "sclabel.inference.model",
    "Prediction": "sclabel.inference.prediction",
    "Report": "sclabel.evaluation.report",
    "annotate": "sclabel.inference.annotate",
    "build_store": "sclabel.store.build",
    "cross_validate": "sclabel.training.cv",
    "embed": "sclabel.inference.embed",
    "evaluate": "sclabel.evaluation.report",
    "import_celltypist": "sclabel.inference.celltypist",
    "import_sctab": "sclabel.inference.sctab",
    "predict": "sclabel.inference.engine",
    "predict_to_file": "sclabel.inference.engine",
    "pretrain": "sclabel.foundation.pretrain",
    "read": "sclabel.io.read",
    "run_disease_experiment": "sclabel.studies.disease",
    "tokenize": "sclabel.foundation.corpus",
    "train": "sclabel.training.train",
}
__all__ = [
    "InputError",
    "Model",
    "Prediction",
    "Report",
    "annotate",
    "build_store",
    "cross_validate",
    "datasets",
    "embed",
    "evaluate",
    "import_celltypist",
    "import_sctab",
    "predict",
    "predict_to_file",
    "pretrain",
    "read",
    "run_disease_experiment",
    "tokenize",
    "train",
]

if TYPE_CHECKING:
    from sclabel import datasets
    from sclabel.errors import InputError
    from sclabel.evaluation.report import Report, evaluate
    from sclabel.foundation.corpus import tokenize
    from sclabel.foundation.pretrain import pretrain
    from sclabel.inference.annotate import annotate
    from sclabel.inference.celltypist import import_celltypist
    from sclabel.inference.embed import embed
    from sclabel.inference.engine import predict, predict_to_file
    from sclabel.inference.model import Model
    from sclabel.inference.prediction import Prediction
    from sclabel.inference.sctab import import_sctab
    from sclabel.io.read import read
    from sclabel.store.build import build_store
    from sclabel.studies.disease import run_disease_experiment
    from sclabel.training.cv import cross_validate
    from sclabel.training.train import train


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
_deprecated.install()  # old import paths (sclabel.model, ...) answer with a warning
