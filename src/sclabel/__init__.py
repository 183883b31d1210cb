"""sclabel: train and apply cell-level classifiers to single-cell RNA-seq data.

model = sclabel.train(adata, label_key="cell_type", split_by="donor", model="mlp")
prediction = model.predict(query)
prediction.to_adata(query)
report = sclabel.evaluate(prediction, query.obs["cell_type"], out_dir="report")
"""

from sclabel import datasets
from sclabel.celltypist_import import import_celltypist
from sclabel.data.io import read
from sclabel.errors import InputError
from sclabel.evaluation.report import Report, evaluate
from sclabel.model import Model
from sclabel.predict import Prediction, predict
from sclabel.training.api import train

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
