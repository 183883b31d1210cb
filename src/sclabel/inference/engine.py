"""The one prediction engine: bind the model's input to a query, predict chunk by chunk, hand
each chunk to a sink.

Two sinks: `predict` keeps the probabilities in memory and returns a `Prediction`;
`predict_to_file` writes each chunk as a part file (resumable, see `parts.py`) and joins
them into OUT with the writers of `outputs.py`. Any source works with either: an AnnData in
memory or backed, a store, a SOMA selection. The CLI always writes through the file sink,
so `--out x.h5ad` (or a table) is the same file with or without `--backed`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sclabel.data.inputs import BoundInput
from sclabel.data.loader import PRESENT_KEY, iterate_batches
from sclabel.errors import InputError
from sclabel.inference.outputs import TABLES, check_output, write_h5ad, write_table
from sclabel.inference.parts import PartWriter
from sclabel.inference.prediction import Prediction, check_threshold
from sclabel.io.atomic import atomic_path
from sclabel.models.base import predict_proba

if TYPE_CHECKING:
    from sclabel.inference.model import Model


def predict(
    model: Model,
    adata,
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
    """Predict every cell of `adata` (an AnnData in memory or backed, or a store) in chunks of
    `chunk_size` rows; `task` picks the label column of a multi-task model."""
    check_threshold(unknown_threshold)
    index = model.task_index(task)
    bound = model.input_spec.bind(
        adata, layer=layer, gene_key=gene_key, min_gene_coverage=min_gene_coverage
    )
    starts = range(0, bound.n_cells, chunk_size)
    bar = _bar(starts, progress)
    probabilities = [
        chunk_probabilities(model, bound, start, chunk_size, batch_size, index) for start in bar
    ]
    return Prediction(
        obs_names=bound.source.obs_names(),
        classes=list(model.tasks.values())[index],
        probabilities=np.concatenate(probabilities),
        unknown_threshold=unknown_threshold,
        coverage=bound.coverage,
    )


@dataclass
class PredictionSummary:
    """What `predict_to_file` wrote."""

    path: Path
    n_cells: int
    coverage: float
    label_counts: pd.Series


def predict_to_file(
    model: Model,
    data,
    out: str | Path,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    unknown_threshold: float | None = None,
    min_gene_coverage: float | None = None,
    key_added: str = "sclabel",
    chunk_size: int = 65_536,
    batch_size: int = 2048,
    resume: bool = False,
    progress: bool = True,
    task: str | None = None,
) -> PredictionSummary:
    """Predict every cell of `data` (AnnData in memory or backed, a store) into `out` (see
    `outputs.OUTPUT_FORMATS`), one chunk at a time: memory holds one chunk, and a killed run
    continues with `resume=True` (see `parts.py`)."""
    out = check_output(out)
    check_threshold(unknown_threshold)
    index = model.task_index(task)
    classes = list(model.tasks.values())[index]
    bound = model.input_spec.bind(
        data, layer=layer, gene_key=gene_key, min_gene_coverage=min_gene_coverage
    )
    meta = {
        "model": model_fingerprint(model),
        "input": bound.source.fingerprint(),
        "n_cells": bound.n_cells,
        "chunk_size": chunk_size,
        "unknown_threshold": unknown_threshold,
        "task": index,
        "out": out.suffix.lower(),
    }
    starts = range(0, bound.n_cells, chunk_size)
    with PartWriter(out, meta, resume=resume) as parts:
        names = bound.source.cell_names()
        for i, start in enumerate(_bar(starts, progress)):
            chunk_names = list(itertools.islice(names, min(chunk_size, bound.n_cells - start)))
            if parts.done(i):
                continue  # finished before an interruption
            proba = chunk_probabilities(model, bound, start, chunk_size, batch_size, index)
            parts.write(
                i, Prediction(pd.Index(chunk_names), classes, proba, unknown_threshold).to_frame()
            )

        def frames():
            return parts.frames(starts, bound.n_cells, bound.source.cell_names())

        counts = pd.concat([f["label"] for f in frames()]).value_counts()
        _join(out, frames, bound, classes, key_added)
        parts.finish()
    return PredictionSummary(out, bound.n_cells, bound.coverage, counts)


def chunk_probabilities(
    model: Model, bound: BoundInput, start: int, chunk_size: int, batch_size: int, task: int
) -> np.ndarray:
    """Class probabilities (cells x classes) of rows start:start + chunk_size."""
    X = bound.rows(slice(start, min(start + chunk_size, bound.n_cells)))
    present = bound.present
    sparse = model.module.sparse_input
    batches = (
        {**batch, PRESENT_KEY: present}
        for batch in iterate_batches(X, batch_size=batch_size, sparse=sparse)
    )
    return predict_proba(model.module, batches, task=task).numpy()


def model_fingerprint(model: Model) -> str:
    """A digest of the model's configuration and weights (what a resume must not change)."""
    digest = hashlib.sha256(json.dumps(model.config_dict(), sort_keys=True).encode())
    digest.update(b"int8" if model.is_quantized else b"float")

    def add(value) -> None:
        if isinstance(value, torch.Tensor):
            value = value.dequantize() if value.is_quantized else value
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(value, tuple | list):  # an int8 layer's packed (weight, bias)
            for item in value:
                add(item)
        else:
            digest.update(repr(value).encode())

    for name, value in sorted(model.module.state_dict().items()):
        digest.update(name.encode())
        add(value)
    return digest.hexdigest()


def _join(out: Path, frames, bound: BoundInput, classes: list[str], key_added: str) -> None:
    suffix = out.suffix.lower()
    try:
        with atomic_path(out) as tmp:
            if suffix in TABLES:
                write_table(frames(), tmp, suffix)
            else:
                base = getattr(bound.source, "adata", None)  # None: a store has no AnnData
                names = bound.source.obs_names()
                write_h5ad(
                    tmp, frames, base=base, names=names, classes=classes, key_added=key_added
                )
    except PermissionError as err:
        raise InputError(f"cannot write --out {out}: permission denied") from err


def _bar(starts: range, progress: bool):
    return tqdm(starts, desc="predicting", unit="chunk", disable=not progress or len(starts) < 2)
