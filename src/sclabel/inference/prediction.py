"""`Prediction`: per-cell probabilities and what follows from them, and how answers are written.

One rule turns probabilities into labels ("unknown" below the threshold), one frame layout
holds a prediction (cell, label, confidence, uncertainty, p_<class>...); `outputs` writes it.
Both prediction sinks (in memory and the resumable file writer) build their frames here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from sclabel.errors import InputError
from sclabel.inference.calibration import prediction_sets
from sclabel.inference.outputs import (
    TABLES,
    answer_columns,
    answer_uns,
    check_output,
    write_h5ad,
    write_table,
)
from sclabel.inference.voting import Vote
from sclabel.io.atomic import atomic_path

UNKNOWN = "unknown"


def check_threshold(unknown_threshold: float | None) -> None:
    if unknown_threshold is not None and not 0 <= unknown_threshold <= 1:
        raise InputError(f"unknown_threshold must be between 0 and 1, got {unknown_threshold}")


def assign_labels(
    probabilities: np.ndarray, classes: list[str], unknown_threshold: float | None
) -> np.ndarray:
    """The most probable class per cell, or "unknown" where its probability is below the
    threshold: the one place this rule is written."""
    labels = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)]
    if unknown_threshold is not None:
        labels[probabilities.max(axis=1) < unknown_threshold] = UNKNOWN
    return labels


@dataclass
class Prediction:
    """Per-cell probabilities and what follows from them."""

    obs_names: pd.Index
    classes: list[str]
    probabilities: np.ndarray  # cells x classes, rows sum to 1
    unknown_threshold: float | None = None
    coverage: float | None = None  # fraction of model genes found in the query
    # conformal sets: classes with at least this probability (one number, or one per cell)
    set_threshold: float | np.ndarray | None = None
    vote: Vote | None = None  # majority voting over clusters (`majority_vote`)
    # more per-cell answers, as columns after the standard ones (mapping score, agreement,
    # each method's label in a consensus, ...)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    # the query's confidences against the validation cells' (`Calibration.shift_check`)
    shift: dict | None = None
    sets: dict | None = None  # how the sets were made (`conformal.SetRule.describe`)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)

    @property
    def uncertainty(self) -> np.ndarray:
        return 1.0 - self.confidence

    @property
    def labels(self) -> np.ndarray:
        """Most probable class, or "unknown" where confidence is below the threshold."""
        return assign_labels(self.probabilities, self.classes, self.unknown_threshold)

    def prediction_sets(self) -> tuple[np.ndarray, np.ndarray]:
        """Each cell's conformal set (';'-joined, most probable first) and its size."""
        if self.set_threshold is None:
            raise InputError("no prediction sets: predict with coverage=... (e.g. 0.9)")
        return prediction_sets(self.probabilities, self.classes, self.set_threshold)

    def to_frame(self) -> pd.DataFrame:
        """One row per cell (index "cell"): label, confidence, uncertainty, with sets
        prediction_set and set_size, then p_<class>..."""
        columns = {
            "label": self.labels,
            "confidence": self.confidence,
            "uncertainty": self.uncertainty,
        }
        if self.set_threshold is not None:
            columns["prediction_set"], columns["set_size"] = self.prediction_sets()
        if self.vote is not None:
            columns["majority_voting"] = self.vote.labels
            columns["over_clustering"] = self.vote.clusters
            columns["cluster_purity"] = self.vote.purity
        columns.update(self.extra)
        frame = pd.DataFrame(columns, index=pd.Index(self.obs_names, name="cell"))
        probs = pd.DataFrame(
            self.probabilities, index=frame.index, columns=[f"p_{c}" for c in self.classes]
        )
        return pd.concat([frame, probs], axis=1)

    def majority_vote(
        self,
        adata: ad.AnnData,
        *,
        cluster_key: str | None = None,
        resolution: float | None = None,
        min_prop: float = 0.0,
        layer: str | None = None,
        seed: int = 0,
    ) -> Vote:
        """Each over-cluster of `adata`'s cells takes its majority label (see
        `sclabel.inference.voting`); kept in `self.vote` and written by `to_adata`/tables."""
        from sclabel.inference.voting import vote_on
        from sclabel.io.sources import AnnDataSource

        self._check_cells(adata)
        self.vote = vote_on(
            AnnDataSource(adata, layer),
            self.labels,
            cluster_key=cluster_key,
            resolution=resolution,
            min_prop=min_prop,
            layer=layer,
            seed=seed,
        )
        return self.vote

    def to_adata(self, adata: ad.AnnData, *, key_added: str = "sclabel") -> None:
        """Write every answer to obs as `{key}_<name>` (label, confidence, uncertainty and
        whatever was asked: prediction_set/set_size, ontology and level columns, agreement
        and label_<member>, mapping_score/novel, majority_voting/over_clustering/
        cluster_purity), the probabilities (a DataFrame with one column per class) to
        `obsm[f"{key}_probabilities"]`, the classes to `uns[f"{key}_classes"]`, the vote
        table to `uns[f"{key}_majority_voting"]`, the shift check to `uns[f"{key}_shift"]`
        and how the sets were made to `uns[f"{key}_sets"]`."""
        self._check_cells(adata)
        for column, values in answer_columns(self.to_frame(), key_added).items():
            adata.obs[column] = values
        adata.obsm[f"{key_added}_probabilities"] = pd.DataFrame(
            self.probabilities, index=adata.obs_names, columns=list(self.classes)
        )
        adata.uns[f"{key_added}_classes"] = list(self.classes)
        adata.uns.update(answer_uns(key_added, self.vote, self.shift, self.sets))

    def write(self, path: str | Path, *, adata=None, key_added: str = "sclabel") -> Path:
        """Write to any output format (`outputs.OUTPUT_FORMATS`): a table, or an .h5ad that
        is `adata` (its matrix, obs, ...) with the answers added (without `adata`: the cells
        and the answers only)."""
        path = check_output(path)
        if path.suffix.lower() in TABLES:
            return self.to_table(path)
        frame = self.to_frame()
        with atomic_path(path) as tmp:
            write_h5ad(tmp, lambda: [frame], base=adata, names=pd.Index(self.obs_names),
                       classes=self.classes, key_added=key_added,
                       uns=answer_uns(key_added, self.vote, self.shift,
                                      self.sets))  # fmt: skip
        return path

    def _check_cells(self, adata) -> None:
        if not adata.obs_names.equals(pd.Index(self.obs_names)):
            raise InputError("this prediction was made for other cells than this AnnData holds")

    def subset(self, rows: np.ndarray) -> Prediction:
        """These answers for some cells only (row numbers): a report's sample."""
        vote = None if self.vote is None else self.vote.subset(rows)
        threshold = self.set_threshold
        if threshold is not None and np.ndim(threshold):
            threshold = np.asarray(threshold)[rows]
        return dataclasses.replace(
            self,
            obs_names=pd.Index(self.obs_names)[rows],
            probabilities=self.probabilities[rows],
            set_threshold=threshold,
            vote=vote,
            extra={k: np.asarray(v)[rows] for k, v in self.extra.items()},
        )

    def to_report(self, out_dir: str | Path, *, adata=None, model=None, layer=None,
                  gene_key=None, title: str = "sclabel annotation",
                  seed: int = 0) -> Path:  # fmt: skip
        """report.html (self-contained: embedding coloured by label, confidence and
        agreement; marker genes per label from `model`; the vote table) and report.md in
        `out_dir`. The embedding and markers need `adata` (read as `model` reads it, with
        `layer`/`gene_key` as at prediction); at most
        `annotation.MAX_CELLS` cells (a seeded sample) are drawn."""
        from sclabel.data.sampling import sample_rows
        from sclabel.evaluation.annotation import MAX_CELLS, write_report

        bound = None
        rows = sample_rows(len(self.obs_names), MAX_CELLS, seed=seed)
        if adata is not None:
            self._check_cells(adata)
            if model is None:
                raise InputError(
                    "the report's embedding reads the query as a model does: pass model="
                )
            bound = model.input_spec.bind(adata, layer=layer, gene_key=gene_key)
        return write_report(out_dir, self.subset(rows), bound=bound, model=model, rows=rows,
                            title=title)  # fmt: skip

    def to_table(self, path: str | Path) -> Path:
        """Write `to_frame()` as .csv, .tsv or .parquet (by extension), atomically."""
        path = check_output(path, TABLES)
        with atomic_path(path) as tmp:
            write_table([self.to_frame()], tmp, path.suffix.lower())
        return path
