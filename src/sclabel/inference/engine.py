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
from sclabel.inference.outputs import TABLES, check_output, vote_summary, write_h5ad, write_table
from sclabel.inference.parts import PartWriter
from sclabel.inference.prediction import Prediction, check_threshold
from sclabel.inference.voting import vote_on
from sclabel.io.atomic import atomic_path
from sclabel.models.base import predict_proba

if TYPE_CHECKING:
    from sclabel.inference.model import Model


@dataclass(frozen=True)
class Request:
    """What the caller asked for, resolved against the model once: the head, its classes,
    the unknown threshold (a number, or "auto": the one chosen on validation cells), the
    conformal set threshold for `coverage`, and whether probabilities are calibrated."""

    task: int
    classes: list[str]
    unknown_threshold: float | None
    set_threshold: float | None
    calibrated: bool

    @classmethod
    def of(cls, model: Model, task, unknown_threshold, coverage, calibrated) -> Request:
        index = model.task_index(task)
        calibration = model.calibration if index == 0 and calibrated else None
        if unknown_threshold == "auto":
            if calibration is None:
                raise InputError("--unknown-threshold auto needs the calibrated primary head")
            unknown_threshold = calibration.auto_threshold()
        check_threshold(unknown_threshold)
        set_threshold = None
        if coverage is not None:
            if calibration is None:
                raise InputError("prediction sets need the calibrated primary head")
            set_threshold = calibration.set_threshold(coverage)
        classes = list(model.tasks.values())[index]
        return cls(index, classes, unknown_threshold, set_threshold, calibration is not None)

    def prediction(self, names, probabilities, gene_coverage=None) -> Prediction:
        return Prediction(
            obs_names=pd.Index(names),
            classes=self.classes,
            probabilities=probabilities,
            unknown_threshold=self.unknown_threshold,
            coverage=gene_coverage,
            set_threshold=self.set_threshold,
        )


def predict(
    model: Model,
    adata,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    unknown_threshold: float | str | None = None,
    min_gene_coverage: float | None = None,
    coverage: float | None = None,
    calibrated: bool = True,
    chunk_size: int = 8192,
    batch_size: int = 2048,
    progress: bool = True,
    task: str | None = None,
) -> Prediction:
    """Predict every cell of `adata` (an AnnData in memory or backed, or a store) in chunks of
    `chunk_size` rows; `task` picks the label column of a multi-task model.

    Probabilities are calibrated (temperature scaling fitted on the validation cells;
    `calibrated=False` for the network's own). `unknown_threshold` labels cells below it
    "unknown" ("auto": the threshold that kept 95% precision on the validation cells);
    `coverage` (e.g. 0.9) adds each cell's conformal prediction set."""
    request = Request.of(model, task, unknown_threshold, coverage, calibrated)
    bound = model.input_spec.bind(
        adata, layer=layer, gene_key=gene_key, min_gene_coverage=min_gene_coverage
    )
    starts = range(0, bound.n_cells, chunk_size)
    probabilities = [
        chunk_probabilities(model, bound, start, chunk_size, batch_size, request)
        for start in _bar(starts, progress)
    ]
    return request.prediction(
        bound.source.obs_names(), np.concatenate(probabilities), bound.coverage
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
    unknown_threshold: float | str | None = None,
    min_gene_coverage: float | None = None,
    coverage: float | None = None,
    calibrated: bool = True,
    majority_voting: bool = False,
    cluster_key: str | None = None,
    resolution: float | None = None,
    min_prop: float = 0.0,
    key_added: str = "sclabel",
    chunk_size: int = 65_536,
    batch_size: int = 2048,
    resume: bool = False,
    progress: bool = True,
    task: str | None = None,
) -> PredictionSummary:
    """Predict every cell of `data` (AnnData in memory or backed, a store) into `out` (see
    `outputs.OUTPUT_FORMATS`), one chunk at a time: memory holds one chunk, and a killed run
    continues with `resume=True` (see `parts.py`). Options as in `predict`; with
    `majority_voting` (or a `cluster_key`), each over-cluster's majority label is added
    (`Prediction.majority_vote`)."""
    out = check_output(out)
    request = Request.of(model, task, unknown_threshold, coverage, calibrated)
    classes = request.classes
    bound = model.input_spec.bind(
        data, layer=layer, gene_key=gene_key, min_gene_coverage=min_gene_coverage
    )
    meta = {
        "model": model_fingerprint(model),
        "input": bound.source.fingerprint(),
        "n_cells": bound.n_cells,
        "chunk_size": chunk_size,
        "unknown_threshold": request.unknown_threshold,
        "set_threshold": request.set_threshold,
        "calibrated": request.calibrated,
        "task": request.task,
        "out": out.suffix.lower(),
    }
    starts = range(0, bound.n_cells, chunk_size)
    with PartWriter(out, meta, resume=resume) as parts:
        names = bound.source.cell_names()
        counts: list[pd.Series] = []  # label counts per chunk, for the summary
        for i, start in enumerate(_bar(starts, progress)):
            chunk_names = list(itertools.islice(names, min(chunk_size, bound.n_cells - start)))
            if parts.done(i):  # finished before an interruption
                counts.append(parts.labels(i).value_counts())
                continue
            proba = chunk_probabilities(model, bound, start, chunk_size, batch_size, request)
            frame = request.prediction(chunk_names, proba).to_frame()
            parts.write(i, frame)
            counts.append(frame["label"].value_counts())

        vote = None
        if majority_voting or cluster_key is not None:
            labels = np.concatenate([parts.labels(i).to_numpy(object) for i in range(len(starts))])
            vote = vote_on(bound.source, labels, bound=bound, cluster_key=cluster_key,
                           resolution=resolution, min_prop=min_prop, layer=layer)  # fmt: skip

        def frames():
            checked = parts.frames(starts, bound.n_cells, bound.source.cell_names())
            return checked if vote is None else _with_vote(checked, vote)

        _join(out, frames, bound, classes, key_added, vote)
        parts.finish()
    counts = pd.concat(counts).groupby(level=0).sum() if counts else pd.Series(dtype=int)
    return PredictionSummary(out, bound.n_cells, bound.coverage, counts)


def chunk_probabilities(
    model: Model, bound: BoundInput, start: int, chunk_size: int, batch_size: int, request
) -> np.ndarray:
    """Class probabilities (cells x classes) of rows start:start + chunk_size, calibrated
    when the request says so."""
    X = bound.rows(slice(start, min(start + chunk_size, bound.n_cells)))
    present = bound.present
    sparse = model.module.sparse_input
    batches = (
        {**batch, PRESENT_KEY: present}
        for batch in iterate_batches(X, batch_size=batch_size, sparse=sparse)
    )
    proba = predict_proba(model.module, batches, task=request.task).numpy()
    return model.calibration.apply(proba) if request.calibrated else proba


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


def _with_vote(frames, vote):
    """Each frame with its cells' cluster, the cluster's majority label and its purity."""
    start = 0
    for frame in frames:
        stop = start + len(frame)
        frame["majority_voting"] = vote.labels[start:stop]
        frame["over_clustering"] = vote.clusters[start:stop]
        frame["cluster_purity"] = vote.purity[start:stop]
        start = stop
        yield frame


def _join(out: Path, frames, bound: BoundInput, classes: list[str], key_added: str, vote) -> None:
    suffix = out.suffix.lower()
    try:
        with atomic_path(out) as tmp:
            if suffix in TABLES:
                write_table(frames(), tmp, suffix)
            else:
                base = getattr(bound.source, "adata", None)  # None: a store has no AnnData
                uns = {} if vote is None else {f"{key_added}_majority_voting": vote_summary(vote)}
                write_h5ad(tmp, frames, base=base, names=bound.source.obs_names(),
                           classes=classes, key_added=key_added, uns=uns)  # fmt: skip
    except PermissionError as err:
        raise InputError(f"cannot write --out {out}: permission denied") from err


def _bar(starts: range, progress: bool):
    return tqdm(starts, desc="predicting", unit="chunk", disable=not progress or len(starts) < 2)
