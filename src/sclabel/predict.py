"""Prediction: align -> normalize -> forward, chunk by chunk, into a `Prediction`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import torch

from sclabel._atomic import atomic_path
from sclabel.data import genes, io
from sclabel.data.features import read_obsm
from sclabel.data.loader import PRESENT_KEY, iterate_batches
from sclabel.data.normalize import iter_prepared
from sclabel.errors import InputError
from sclabel.models.base import predict_proba

if TYPE_CHECKING:
    from sclabel.model import Model

log = logging.getLogger("sclabel")
UNKNOWN = "unknown"


@dataclass
class Prediction:
    """Per-cell probabilities and what follows from them."""

    obs_names: pd.Index
    classes: list[str]
    probabilities: np.ndarray  # cells x classes, rows sum to 1
    unknown_threshold: float | None = None
    coverage: float | None = None  # fraction of model genes found in the query

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)

    @property
    def uncertainty(self) -> np.ndarray:
        return 1.0 - self.confidence

    @property
    def labels(self) -> np.ndarray:
        """Most probable class, or "unknown" where confidence is below the threshold."""
        labels = np.asarray(self.classes, dtype=object)[self.probabilities.argmax(axis=1)]
        if self.unknown_threshold is not None:
            labels[self.confidence < self.unknown_threshold] = UNKNOWN
        return labels

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(
            {"label": self.labels, "confidence": self.confidence, "uncertainty": self.uncertainty},
            index=pd.Index(self.obs_names, name="cell"),
        )
        probs = pd.DataFrame(
            self.probabilities, index=frame.index, columns=[f"p_{c}" for c in self.classes]
        )
        return pd.concat([frame, probs], axis=1)

    def to_adata(self, adata: ad.AnnData, *, key_added: str = "sclabel") -> None:
        """Write `{key}_label`, `{key}_confidence`, `{key}_uncertainty` to obs and the
        probabilities (a DataFrame with one column per class) to `obsm[f"{key}_probabilities"]`."""
        if not adata.obs_names.equals(pd.Index(self.obs_names)):
            raise InputError("this prediction was made for other cells than this AnnData holds")
        adata.obs[f"{key_added}_label"] = pd.Categorical(self.labels)
        adata.obs[f"{key_added}_confidence"] = self.confidence
        adata.obs[f"{key_added}_uncertainty"] = self.uncertainty
        adata.obsm[f"{key_added}_probabilities"] = pd.DataFrame(
            self.probabilities, index=adata.obs_names, columns=list(self.classes)
        )

    def to_table(self, path: str | Path) -> Path:
        """Write `to_frame()` as .csv, .tsv or .parquet (by extension), atomically."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in {".csv", ".tsv", ".parquet"}:
            raise InputError(f"table output must end in .csv, .tsv or .parquet, got {path.name}")
        frame = self.to_frame()
        with atomic_path(path) as tmp:
            if suffix == ".parquet":
                frame.to_parquet(tmp)
            else:
                frame.to_csv(tmp, sep="\t" if suffix == ".tsv" else ",")
        return path


def predict(
    model: Model,
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    unknown_threshold: float | None = None,
    min_gene_coverage: float | None = None,
    chunk_size: int = 8192,
    batch_size: int = 2048,
    progress: bool = True,
    task: str | None = None,
) -> Prediction:
    """Predict every cell of `adata` (in memory or backed) in chunks of `chunk_size` rows.

    `task` picks the label column of a multi-task model (default: its primary column).
    """
    if unknown_threshold is not None and not 0 <= unknown_threshold <= 1:
        raise InputError("unknown_threshold must be between 0 and 1")
    index = model.task_index(task)
    coverage, chunks = query_batches(
        model,
        adata,
        layer=layer,
        gene_key=gene_key,
        min_gene_coverage=min_gene_coverage,
        chunk_size=chunk_size,
        batch_size=batch_size,
        sparse=model.module.sparse_input,
        progress=progress,
    )
    probabilities = np.concatenate(
        [predict_proba(model.module, batches, task=index).numpy() for batches in chunks]
    )
    return Prediction(
        obs_names=pd.Index(adata.obs_names),
        classes=list(model.tasks.values())[index],
        probabilities=probabilities,
        unknown_threshold=unknown_threshold,
        coverage=coverage,
    )


def query_batches(
    model: Model,
    adata: ad.AnnData,
    *,
    layer: str | None,
    gene_key: str | None,
    min_gene_coverage: float | None,
    chunk_size: int,
    batch_size: int,
    sparse: bool = False,
    progress: bool = True,
):
    """Check, align and normalize a query the way `model` was trained.

    Returns the fraction of model genes found and, per chunk of rows, an iterator of
    model-ready batches (each carrying the `present` gene mask), so prediction and
    explanation share one path. An obsm-trained model reads the query's `obsm` instead; a
    pca-trained one projects the normalized chunks.
    """
    io.check_cells(adata, genes=model.data_config.obsm_key is None)
    if model.data_config.obsm_key is not None:
        values = read_obsm(adata, model.data_config.obsm_key, width=model.n_inputs)
        present = torch.ones(model.n_inputs, dtype=torch.bool)
        starts = range(0, values.shape[0], chunk_size)
        return 1.0, (
            model_batches(values[i : i + chunk_size], present, batch_size=batch_size)
            for i in starts
        )
    X, var = io.matrix(adata, layer)
    values = io.detect_values(X)
    alignment = genes.align(
        var,
        model.vocabulary,
        gene_key=gene_key,
        min_coverage=min_gene_coverage or model.data_config.min_gene_coverage,
    )
    present = model.present_inputs(alignment.present)
    chunks = iter_prepared(
        X,
        kind=values.kind,
        alignment=alignment,
        target_sum=model.data_config.target_sum,
        chunk_size=chunk_size,
        progress=progress,
        desc="predicting",
    )
    return alignment.coverage, (
        model_batches(model.inputs(chunk), present, batch_size=batch_size, sparse=sparse)
        for chunk in chunks
    )


def model_batches(chunk, present: torch.Tensor, *, batch_size: int, sparse: bool = False):
    """Prediction batches of prepared rows, each carrying the query's `present` gene mask."""
    for batch in iterate_batches(chunk, batch_size=batch_size, sparse=sparse):
        yield {**batch, PRESENT_KEY: present}
