"""The one prediction engine: bind the model's input to a query, predict chunk by chunk, hand
each chunk to a sink.

Two sinks: `predict` keeps the probabilities in memory and returns a `Prediction`;
`predict_to_file` writes each chunk as a part file (resumable, see `parts.py`) and joins
them into OUT with the writers of `outputs.py`. Any source works with either: an AnnData in
memory or backed, a store, a SOMA selection. The CLI always writes through the file sink,
so `--out x.h5ad` (or a table) is the same file with or without `--backed`.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sclabel.data.inputs import BoundInput
from sclabel.data.loader import cell_bar
from sclabel.errors import InputError
from sclabel.inference.calibration import (
    Calibration,
    auto_precision,
    check_coverage,
    prediction_sets,
)
from sclabel.inference.conformal import SetRule, check_method, headline
from sclabel.inference.levels import OntologyLevels
from sclabel.inference.members import Job, Member
from sclabel.inference.outputs import TABLES, answer_uns, check_output, write_h5ad, write_table
from sclabel.inference.parts import PartWriter
from sclabel.inference.prediction import Prediction, check_threshold
from sclabel.inference.voting import vote_on
from sclabel.io.atomic import atomic_path, check_dir

log = logging.getLogger("sclabel")


@dataclass(frozen=True)
class Request:
    """What the caller asked for, resolved against the job once: the classes, the unknown
    threshold (a number, or "auto": the one chosen on the model's validation cells) and the
    conformal set `coverage` with its rule (`sets`: see `conformal.py`), both of one
    calibrated model's primary head."""

    classes: list[str]
    unknown_threshold: float | None
    coverage: float | None = None
    sets: str = "weighted"
    ontology: OntologyLevels | None = None  # answers at the Cell Ontology depth reached
    ontology_threshold: float = 0.8
    levels: int = 0  # coarse level columns
    calibration: Calibration | None = None  # one calibrated model's: shift check and sets

    @classmethod
    def of(cls, job: Job, unknown_threshold, coverage, ontology_threshold=None, levels=0,
           sets="weighted"):  # fmt: skip
        member = job.members[0]
        calibration = None
        if not job.consensus and member.kind == "classify" and member.task == 0:
            calibration = member.model.calibration if member.calibrated else None
        if isinstance(unknown_threshold, str):  # "auto", or "auto:0.99" for that precision
            if calibration is None:
                msg = "--unknown-threshold auto needs one calibrated model's primary head"
                raise InputError(msg)
            unknown_threshold = calibration.auto_threshold(auto_precision(unknown_threshold))
        check_threshold(unknown_threshold)
        if coverage is not None:
            check_coverage(coverage)  # a bad number is named before what the model lacks
            check_method(sets)
            if calibration is None:
                raise InputError("prediction sets need one calibrated model's primary head")
            calibration.set_rule(coverage, "split")  # a model without validation data says so
        ontology = None
        if ontology_threshold is not None or levels:
            ontology = OntologyLevels(job.classes)
        threshold = 0.8 if ontology_threshold is None else ontology_threshold
        return cls(job.classes, unknown_threshold, coverage, sets, ontology, threshold, levels,
                   calibration)  # fmt: skip

    def shift(self, confidence: np.ndarray) -> dict | None:
        """`Calibration.shift_check` of the query's confidences, logged when it flags."""
        check = None if self.calibration is None else self.calibration.shift_check(confidence)
        if check and check["flagged"]:
            log.warning("%s", check["message"])
        return check

    def set_rule(self, confidence: np.ndarray) -> SetRule | None:
        """The sets' rule for this query (None: no sets asked), from all its confidences."""
        if self.coverage is None:
            return None
        rule = self.calibration.set_rule(self.coverage, self.sets, confidence)
        log.info("%s", headline(rule.describe()))
        return rule

    def whole(self, confidence: np.ndarray) -> tuple[dict | None, SetRule | None]:
        """What needs every cell's confidence first: the shift check and the sets' rule."""
        return self.shift(confidence), self.set_rule(confidence)

    def prediction(self, names, probabilities, extra=None, gene_coverage=None) -> Prediction:
        """A chunk's answers (the sets come once the whole query is known: `finish`)."""
        extra = dict(extra or {})
        if self.ontology is not None:
            extra |= self.ontology.answer(probabilities, self.ontology_threshold)
            if self.levels:
                labels = np.asarray(self.classes, dtype=object)[probabilities.argmax(axis=1)]
                extra |= self.ontology.coarse(labels, self.levels)
        return Prediction(
            obs_names=pd.Index(names),
            classes=self.classes,
            probabilities=probabilities,
            unknown_threshold=self.unknown_threshold,
            coverage=gene_coverage,
            extra=extra,
        )

    def finish(self, prediction: Prediction) -> Prediction:
        """The whole query's answers: its shift check and its prediction sets."""
        return attach(prediction, *self.whole(prediction.confidence))


def attach(prediction: Prediction, shift: dict | None, rule: SetRule | None) -> Prediction:
    """`Request.whole`'s answers given to a prediction (the query's, or a report's sample)."""
    prediction.shift = shift
    if rule is not None:
        prediction.set_threshold = rule.threshold(prediction.confidence)
        prediction.sets = rule.describe()
    return prediction


def job_of(model, *, task: str | None = None, calibrated: bool = True) -> Job:
    """A `Job` for a model, a list of models (a consensus) or already a `Job`."""
    if isinstance(model, Job):
        return model
    models = model if isinstance(model, list | tuple) else [model]
    members = []
    for i, one in enumerate(models):
        if isinstance(one, Member):
            members.append(one)
            continue
        index = one.task_index(task)
        name = one.family if len(models) == 1 else f"{i}_{one.family}"
        members.append(Member(name, one, task=index, calibrated=calibrated))
    return Job(members)


def predict(
    model,
    adata,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    unknown_threshold: float | str | None = None,
    min_gene_coverage: float | None = None,
    values: str | None = None,
    coverage: float | None = None,
    sets: str = "weighted",
    calibrated: bool = True,
    ontology_threshold: float | None = None,
    levels: int = 0,
    chunk_size: int = 8192,
    batch_size: int = 2048,
    progress: bool = True,
    task: str | None = None,
) -> Prediction:
    """Predict every cell of `adata` (an AnnData in memory or backed, or a store) in chunks of
    `chunk_size` rows; `task` picks the label column of a multi-task model. `model` may be a
    list of models (and `Member`s such as a reference mapping): their consensus.

    Probabilities are calibrated (temperature scaling fitted on the validation cells;
    `calibrated=False` for the network's own). `unknown_threshold` labels cells below it
    "unknown" ("auto": the threshold that kept 95% precision on the validation cells);
    `coverage` (e.g. 0.9) adds each cell's conformal prediction set, by the `sets` rule
    ("weighted" to the query's confidences, or "split"; see `conformal.py`); what was done
    is in `Prediction.sets`. With classes named by Cell Ontology terms,
    `ontology_threshold` adds the deepest term whose summed probability reaches it
    (`levels=N`: N coarse level columns too); see `levels.py`."""
    job = job_of(model, task=task, calibrated=calibrated)
    request = Request.of(job, unknown_threshold, coverage, ontology_threshold, levels, sets)
    job.bind(adata, layer=layer, gene_key=gene_key, min_gene_coverage=min_gene_coverage,
             values=values)  # fmt: skip
    bound = job.primary
    starts = range(0, bound.n_cells, chunk_size)
    with _bar(job, bound.n_cells, progress) as bar:
        chunks = [
            job.chunk(start, min(start + chunk_size, bound.n_cells), batch_size, bar)
            for start in starts
        ]
    extra = {key: np.concatenate([c[1][key] for c in chunks]) for key in chunks[0][1]}
    probabilities = np.concatenate([c[0] for c in chunks])
    prediction = request.prediction(bound.source.obs_names(), probabilities, extra, bound.coverage)
    return request.finish(prediction)


@dataclass
class PredictionSummary:
    """What `predict_to_file` wrote (`coverage` None: the model reads an embedding)."""

    path: Path
    n_cells: int
    coverage: float | None
    label_counts: pd.Series
    vote: str | None = None  # with majority voting: Vote.describe's line
    shift: dict | None = None  # Calibration.shift_check of the query's confidences
    sets: dict | None = None  # with coverage: the sets' rule (`SetRule.describe`)


def predict_to_file(
    model,
    data,
    out: str | Path,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    unknown_threshold: float | str | None = None,
    min_gene_coverage: float | None = None,
    values: str | None = None,
    coverage: float | None = None,
    sets: str = "weighted",
    calibrated: bool = True,
    ontology_threshold: float | None = None,
    levels: int = 0,
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
    report: str | Path | None = None,
) -> PredictionSummary:
    """Predict every cell of `data` (AnnData in memory or backed, a store) into `out` (see
    `outputs.OUTPUT_FORMATS`), one chunk at a time: memory holds one chunk, and a killed run
    continues with `resume=True` (see `parts.py`). Options as in `predict`; with
    `majority_voting` (or a `cluster_key`), each over-cluster's majority label is added
    (`Prediction.majority_vote`). `report`: a folder for report.html and report.md
    (`Prediction.to_report`), drawn from a sample of the cells once `out` is written."""
    out = check_output(out)
    if report is not None:
        check_dir(report, marker="report.html", what="report")
    job = job_of(model, task=task, calibrated=calibrated)
    request = Request.of(job, unknown_threshold, coverage, ontology_threshold, levels, sets)
    classes = request.classes
    job.bind(data, layer=layer, gene_key=gene_key, min_gene_coverage=min_gene_coverage,
             values=values)  # fmt: skip
    bound = job.primary
    meta = {
        "model": job.fingerprint(),
        "input": bound.source.fingerprint(),
        "n_cells": bound.n_cells,
        "chunk_size": chunk_size,
        "unknown_threshold": request.unknown_threshold,
        "sets": [coverage, sets],  # the sets themselves are added when the parts are joined
        "ontology": [ontology_threshold, levels],
        "calibrated": calibrated,
        "task": task,
        "out": out.suffix.lower(),
    }
    starts = range(0, bound.n_cells, chunk_size)
    with PartWriter(out, meta, resume=resume) as parts, _bar(job, bound.n_cells, progress) as bar:
        names = bound.source.cell_names()
        voting = majority_voting or cluster_key is not None
        counts: list[pd.Series] = []  # label counts per chunk, for the summary
        confidence: list[np.ndarray] = []  # for the shift check
        chunk_labels: list[np.ndarray] = []  # every label, only to vote on
        for i, start in enumerate(starts):
            chunk_names = list(itertools.islice(names, min(chunk_size, bound.n_cells - start)))
            stop = min(start + chunk_size, bound.n_cells)
            if parts.done(i):  # finished before an interruption
                frame = parts.read(i, ["label", "confidence"])
                bar.update((stop - start) * len(job.members))
            else:
                proba, extra = job.chunk(start, stop, batch_size, bar)
                frame = request.prediction(chunk_names, proba, extra).to_frame()
                parts.write(i, frame)
            counts.append(frame["label"].value_counts())
            confidence.append(frame["confidence"].to_numpy())
            if voting:
                chunk_labels.append(frame["label"].to_numpy(object))
        confidence = np.concatenate(confidence) if confidence else np.empty(0, np.float32)
        shift, rule = request.whole(confidence)

        vote = None
        if voting:
            labels = np.concatenate(chunk_labels)
            vote = vote_on(bound.source, labels, bound=bound, cluster_key=cluster_key,
                           resolution=resolution, min_prop=min_prop, layer=layer)  # fmt: skip

        def frames():
            checked = parts.frames(starts, bound.n_cells, bound.source.cell_names())
            checked = checked if rule is None else _with_sets(checked, rule, classes)
            return checked if vote is None else _with_vote(checked, vote)

        sets_info = None if rule is None else rule.describe()
        _join(out, frames, bound, classes, key_added, vote, shift, sets_info)
        if report is not None:
            from sclabel.data.sampling import sample_rows
            from sclabel.evaluation.annotation import MAX_CELLS, write_report

            rows = sample_rows(bound.n_cells, MAX_CELLS)
            sample = attach(_sample(frames(), rows, request, classes, vote), shift, rule)
            write_report(report, sample, bound=bound, model=job.members[0].model, rows=rows)
        parts.finish()
    counts = pd.concat(counts).groupby(level=0).sum() if counts else pd.Series(dtype=int)
    note = None if vote is None else vote.describe(labels)
    return PredictionSummary(out, bound.n_cells, bound.coverage, counts, note, shift, sets_info)


def _sample(frames, rows: np.ndarray, request: Request, classes, vote) -> Prediction:
    """The answers of `rows` (sorted row numbers), read back frame by frame."""
    picked, start = [], 0
    for frame in frames:
        stop = start + len(frame)
        inside = rows[(rows >= start) & (rows < stop)] - start
        picked.append(frame.iloc[inside])
        start = stop
    table = pd.concat(picked)
    extra = {"agreement": table["agreement"].to_numpy()} if "agreement" in table else {}
    return Prediction(
        obs_names=table.index,
        classes=classes,
        probabilities=table[[f"p_{c}" for c in classes]].to_numpy(np.float64),
        unknown_threshold=request.unknown_threshold,
        vote=None if vote is None else vote.subset(rows),
        extra=extra,
    )


def _with_sets(frames, rule: SetRule, classes: list[str]):
    """Each frame with its cells' prediction sets, placed after the uncertainty column as
    `Prediction.to_frame` places them."""
    columns = [f"p_{c}" for c in classes]
    for frame in frames:
        threshold = rule.threshold(frame["confidence"].to_numpy())
        found, size = prediction_sets(frame[columns].to_numpy(), classes, threshold)
        at = frame.columns.get_loc("uncertainty") + 1
        frame.insert(at, "prediction_set", found)
        frame.insert(at + 1, "set_size", size)
        yield frame


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


def _join(out: Path, frames, bound: BoundInput, classes: list[str], key_added: str, vote,
          shift, sets) -> None:  # fmt: skip
    suffix = out.suffix.lower()
    try:
        with atomic_path(out) as tmp:
            if suffix in TABLES:
                write_table(frames(), tmp, suffix)
            else:
                base = getattr(bound.source, "adata", None)  # None: a store has no AnnData
                write_h5ad(tmp, frames, base=base, names=bound.source.obs_names(),
                           classes=classes, key_added=key_added,
                           uns=answer_uns(key_added, vote, shift, sets))  # fmt: skip
    except PermissionError as err:
        raise InputError(f"cannot write --out {out}: permission denied") from err


def _bar(job: Job, n_cells: int, progress: bool):
    """Cells predicted, batch by batch (x members for a consensus)."""
    k = len(job.members)
    return cell_bar(n_cells * k, "predicting" + (f" ({k} members)" if k > 1 else ""), progress)
