"""Conformal prediction sets at a requested coverage: which classes each cell's set holds.

Both rules read the validation cells' scores, 1 - p(true class) under the tempered
probabilities, saved with the model (`Calibration`); a cell's set holds every class whose
probability reaches its threshold, 1 - q, q a quantile of those scores.

- **split** (Vovk et al. 2005; Sadinle et al. 2019): one q for every cell, the finite-sample
  (n + 1)(1 - alpha) quantile. Coverage is guaranteed when the query cells are exchangeable
  with the validation cells: the same donors, plates and protocol. A query from another
  plate is not, and 90% sets then covered 83-86% of a held-out CellBench plate.
- **weighted** (the default; Tibshirani, Barber, Candes & Ramdas 2019, "conformal prediction
  under covariate shift"): the validation cells are re-weighted to look like the query in the
  one thing the model shows of both, its confidence. The likelihood ratio is estimated on
  bins of logit-confidence (edges at quantiles of both sets of cells; one bin per PER_BIN
  validation cells, 2 to BINS; SMOOTHING cells added to every bin), and each cell's q is
  the weighted quantile over the validation scores plus its own weight at infinity, so a
  cell in a bin the validation cells rarely reached gets a wide set. With the same cells it
  is the split rule up to noise; with a shifted query it assumes only that cells of equal
  confidence are as often right as on validation. Measured on every shared split
  (benchmarks/calibration.py, 5 seeds; benchmarks/RESULTS.md): mean 90% coverage 0.90-0.93
  per split x family where the split rule gave 0.83-0.94.

The weighted rule needs the whole query's confidences first, so sets are computed after
every cell is predicted (`predict_to_file` adds them as it joins its parts). Below
MIN_QUERY query cells, or for a model saved before its validation scores were kept per
cell, the split rule is used and the rule says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sclabel.data.sampling import sample_rows
from sclabel.errors import InputError

SET_METHODS = ("weighted", "split")
BINS = 10  # at most; fewer for few validation cells, so each bin holds about PER_BIN
PER_BIN = 15
SMOOTHING = 0.5  # cells added to every bin of both histograms: no bin weighs 0 or infinity
MIN_QUERY = 100  # fewer query cells than this say too little about its confidences
EDGE_SAMPLE = 1_000_000  # bin edges from a seeded sample of a bigger query's cells
COUNT_CHUNK = 1_000_000


@dataclass(frozen=True)
class SetRule:
    """Per-bin set thresholds: a cell whose logit-confidence falls in bin b (cut at `edges`)
    holds every class with probability >= thresholds[b]. One bin: the split rule."""

    coverage: float
    method: str
    edges: np.ndarray
    thresholds: np.ndarray
    note: str

    def threshold(self, confidence: np.ndarray) -> np.ndarray:
        """Each cell's set threshold, from its (calibrated) top probability."""
        if self.thresholds.size == 1:
            return np.full(len(confidence), self.thresholds[0], dtype=np.float64)
        return self.thresholds[np.searchsorted(self.edges, _logit(confidence), side="right")]

    def describe(self) -> dict:
        """What uns and the log say: the coverage asked, the rule and its thresholds."""
        return {
            "coverage": self.coverage,
            "method": self.method,
            "note": self.note,
            "thresholds": [float(t) for t in self.thresholds],
            "logit_confidence_edges": [float(e) for e in self.edges],
        }


def headline(sets: dict) -> str:
    """'90% prediction sets: <the rule's note>' for the log and the command line."""
    return f"{100 * sets['coverage']:g}% prediction sets: {sets['note']}"


def check_method(method: str) -> None:
    if method not in SET_METHODS:
        msg = f"sets must be one of {', '.join(SET_METHODS)}, got {method!r}"
        raise InputError(msg)


def split_rule(scores: np.ndarray, coverage: float, note: str = "") -> SetRule:
    """One threshold from the sorted validation scores: the (n + 1) * coverage-th smallest."""
    n = scores.size
    rank = math.ceil((n + 1) * coverage)
    threshold = 0.0 if rank > n else float(1.0 - scores[rank - 1])  # too few: every class
    note = note or f"split conformal on {n} validation cells"
    return SetRule(coverage, "split", np.empty(0), np.array([threshold]), note)


def weighted_rule(
    cell_scores: np.ndarray,
    val_confidence: np.ndarray,
    confidence: np.ndarray,
    coverage: float,
) -> SetRule:
    """Validation cells weighted by the query's / their own share of a confidence bin."""
    zv = _logit(val_confidence)
    n = len(confidence)
    sample = confidence if n <= EDGE_SAMPLE else confidence[sample_rows(n, EDGE_SAMPLE)]
    # edges at quantiles of both sets of cells (of a bigger query: a sample of it)
    pooled = np.concatenate([zv, _logit(sample)])
    bins = int(np.clip(zv.size // PER_BIN, 2, BINS))
    edges = np.unique(np.quantile(pooled, np.linspace(0, 1, bins + 1)[1:-1]))
    bins = edges.size + 1
    val_bin = np.searchsorted(edges, zv, side="right")
    val_share = np.bincount(val_bin, minlength=bins) + SMOOTHING
    query_share = np.full(bins, SMOOTHING)
    for start in range(0, n, COUNT_CHUNK):  # a bin per cell, a million cells at a time
        part = _logit(confidence[start : start + COUNT_CHUNK])
        query_share += np.bincount(np.searchsorted(edges, part, side="right"), minlength=bins)
    ratio = (query_share / query_share.sum()) / (val_share / val_share.sum())
    order = np.argsort(cell_scores, kind="stable")
    scores = cell_scores[order]
    weight = np.cumsum(ratio[val_bin][order])
    # smallest score whose cumulative weight reaches coverage x (all weights + the cell's own)
    rank = np.searchsorted(weight, coverage * (weight[-1] + ratio), side="left")
    thresholds = np.where(rank >= scores.size, 0.0, 1.0 - scores[np.minimum(rank, scores.size - 1)])
    note = (
        f"weighted conformal: {scores.size} validation cells re-weighted to the query's "
        f"{len(confidence):,} cells' confidence ({bins} bins; weights "
        f"{ratio.min():.2f}-{ratio.max():.2f})"
    )
    return SetRule(coverage, "weighted", edges, thresholds.astype(np.float64), note)


def _logit(confidence: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(confidence, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(c) - np.log1p(-c)
