"""Calibrated confidence and an honest "unknown", learned on the validation cells.

Three things are fitted once, when a model is trained, on the cells it was validated on (never
seen by the weights), saved with the model and applied to every query:

- **temperature scaling** (Guo et al. 2017): probabilities p become p^(1/T) renormalized,
  i.e. softmax(logits / T). Labels do not change; confidences stop being over- (T > 1) or
  under-confident (T < 1). A few hundred validation cells say little, so T is the maximum a
  posteriori value under a log-normal prior (log T ~ N(0, 0.5^2): 95% of the prior within
  0.37-2.7), which keeps T finite when every validation cell is right (the likelihood alone
  then runs T -> 0 and makes every later mistake look certain), and it is applied only when
  the validation cells reject "calibrated as is": a likelihood-ratio test of T against 1 at
  the 1% level (2 x log-likelihood gain > 6.63, chi-square with 1 degree of freedom). Where
  the evidence is weaker the network's own probabilities are kept and the model says so
  (`info["temperature"]`). Measured against the plain likelihood fit, the older "at least 5
  mistakes" rule and an always-applied MAP temperature in benchmarks/calibration.py.
- **conformal prediction sets**: the validation cells' scores 1 - p(true class) are kept,
  each with the cell's confidence, so any coverage 1 - alpha can be asked for at prediction
  time; `conformal.py` turns them into each cell's set (split conformal, or weighted to the
  query's confidences: the default). Sets of two or more (or none) mark uncertain cells.
- **an unknown threshold for a target precision**: the lowest confidence at which the cells
  kept on the validation set are right at least `precision` of the time (95% by default),
  used by `unknown_threshold="auto"` instead of a number picked by hand; the validation
  cells' confidences and rightness are kept, so `"auto:0.99"` asks for another precision
  at prediction time.

A model without validation cells (imported from CellTypist, or trained without them) has
T = 1 and no sets or automatic threshold, and says so when asked for them.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from sclabel.data.sampling import sample_rows
from sclabel.errors import InputError
from sclabel.evaluation.calibration import expected_calibration_error
from sclabel.inference.conformal import MIN_QUERY, SetRule, check_method, split_rule, weighted_rule

PRECISION = 0.95
SHIFT_P = 1e-3  # query less confident than the validation cells at this level: warn
SHIFT_SAMPLE = 200_000  # query cells the shift check compares, at most
PRIOR_SD = 0.5  # of log T: the prior that keeps a temperature from few cells near 1
LR_CRITICAL = 6.635  # chi-square(1) at 1%: the evidence a temperature needs to be applied
T_BOUNDS = (0.05, 20.0)


def temper(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the probabilities of softmax(logits / T), from the probabilities."""
    if temperature == 1.0:
        return probabilities
    logits = np.log(np.clip(probabilities, 1e-30, None), dtype=np.float64) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    tempered = np.exp(logits)
    return (tempered / tempered.sum(axis=1, keepdims=True)).astype(probabilities.dtype)


@dataclass
class Calibration:
    temperature: float = 1.0
    scores: np.ndarray | None = None  # sorted 1 - p(true) of the validation cells, tempered
    cell_scores: np.ndarray | None = None  # the same, in `confidence`'s (the cells') order
    unknown_threshold: float | None = None  # confidence with `precision` on validation
    precision: float = PRECISION
    confidence: np.ndarray | None = None  # validation cells' tempered top probability
    correct: np.ndarray | None = None  # and whether that top class was theirs
    info: dict = field(default_factory=dict)  # ECE before/after, cells, what was reached

    @property
    def fitted(self) -> bool:
        return self.scores is not None and self.scores.size > 0

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        return temper(probabilities, self.temperature)

    def set_threshold(self, coverage: float) -> float:
        """The probability a class needs to join a cell's split-conformal set at `coverage`."""
        return float(self.set_rule(coverage, "split").thresholds[0])

    def set_rule(
        self, coverage: float, method: str = "weighted", confidence: np.ndarray | None = None
    ) -> SetRule:
        """Each cell's set threshold at `coverage` (see `conformal.py`): `method` "weighted"
        re-weights the validation cells to the query's `confidence` (calibrated top
        probabilities); it falls back to "split", saying why, for fewer than MIN_QUERY query
        cells or a model saved without each validation cell's score."""
        check_coverage(coverage)
        check_method(method)
        if not self.fitted:
            msg = (
                "this model has no calibration data (no validation cells: imported, or saved "
                "before sclabel 0.2), so it cannot give prediction sets; retrain it"
            )
            raise InputError(msg)
        if method == "split":
            return split_rule(self.scores, coverage)
        if self.cell_scores is None or self.confidence is None:
            why = "saved before sclabel kept each validation cell's score; retrain to weight"
            return split_rule(self.scores, coverage, f"split conformal: this model was {why}")
        if confidence is None or len(confidence) < MIN_QUERY:
            n = 0 if confidence is None else len(confidence)
            why = f"{n} query cells are too few (< {MIN_QUERY}) to weight the validation cells"
            return split_rule(self.scores, coverage, f"split conformal: {why}")
        return weighted_rule(self.cell_scores, self.confidence, confidence, coverage)

    def auto_threshold(self, precision: float | None = None) -> float:
        """The confidence that held `precision` (default: the model's, 95%) on validation."""
        if precision is not None and not 0 < precision < 1:
            raise InputError(f"the precision of 'auto:P' must be between 0 and 1, got {precision}")
        if precision is not None and precision != self.precision:
            if self.confidence is None:
                msg = (
                    f"this model keeps only its {self.precision:g}-precision threshold (saved "
                    "by an earlier sclabel); use 'auto' or give a number"
                )
                raise InputError(msg)
            threshold = threshold_for_precision(self.confidence, self.correct, precision)
            if threshold is None:
                msg = (
                    f"no confidence holds precision {precision:g} on this model's "
                    f"{self.confidence.size} validation cells; ask for less, or give a number"
                )
                raise InputError(msg)
            return threshold
        if self.unknown_threshold is None:
            msg = (
                "this model has no validation-chosen unknown threshold (imported, or saved "
                "before sclabel 0.2, or no confidence held 95% precision); give a number, "
                "e.g. --unknown-threshold 0.5"
            )
            raise InputError(msg)
        return self.unknown_threshold

    def shift_check(self, confidence: np.ndarray) -> dict | None:
        """Are the query's cells as confident as the validation cells were? Conformal
        coverage and the auto threshold's precision are promised for cells like those; a
        one-sided Mann-Whitney test of the query's (calibrated) confidences against theirs
        flags a query that is less confident (another protocol, plate or tissue); a query of
        more than SHIFT_SAMPLE cells is tested on a seeded sample of them. `auc`:
        P(a query cell is more confident than a validation cell), 0.5 when alike. None
        without saved validation confidences or with fewer than 20 query cells."""
        if self.confidence is None or len(confidence) < 20:
            return None
        from scipy.stats import mannwhitneyu

        if len(confidence) > SHIFT_SAMPLE:  # a seeded sample: enough power, bounded memory
            confidence = confidence[sample_rows(len(confidence), SHIFT_SAMPLE)]

        test = mannwhitneyu(confidence, self.confidence, alternative="less")
        auc = float(test.statistic) / (len(confidence) * len(self.confidence))
        check = {
            "query_median_confidence": float(np.median(confidence)),
            "validation_median_confidence": float(np.median(self.confidence)),
            "auc": auc,
            "p_value": float(test.pvalue),
            "flagged": bool(test.pvalue < SHIFT_P),
        }
        if check["flagged"]:
            check["message"] = (
                "the query's cells are less confident than the model's validation cells "
                f"(median confidence {check['query_median_confidence']:.3f} vs "
                f"{check['validation_median_confidence']:.3f}; P(more confident) {auc:.2f}, "
                f"p = {max(test.pvalue, 1e-300):.1e}): they differ from the reference "
                "(another protocol, plate or tissue?), so the auto threshold's precision and "
                "split-conformal set coverage, measured on the validation cells, may not hold "
                "here (weighted sets, the default, adjust to the query's confidences)"
            )
        return check

    def tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"scores": torch.from_numpy(np.asarray(self.scores, np.float32))}
        if self.cell_scores is not None:
            tensors["cell_scores"] = torch.from_numpy(np.asarray(self.cell_scores, np.float32))
        if self.confidence is not None:
            tensors["confidence"] = torch.from_numpy(np.asarray(self.confidence, np.float32))
            tensors["correct"] = torch.from_numpy(np.asarray(self.correct, np.uint8))
        return tensors

    def describe(self, test: dict | None = None) -> dict | None:
        """What a report says (None when nothing was fitted): T and why, the validation
        cells' ECE before/after and, from training's `metrics["calibration"]` (`test`),
        the test cells' ECE before/after."""
        if not self.fitted:
            return None
        held_out = {k: v for k, v in (test or {}).items() if k.startswith("test_ece")}
        return {"value": self.temperature, **self.info, **held_out}

    def to_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "unknown_threshold": self.unknown_threshold,
            "precision": self.precision,
            "info": self.info,
        }

    @classmethod
    def from_parts(cls, values: dict | None, tensors: dict | None) -> Calibration:
        if not values:
            return cls()
        tensors = tensors or {}
        scores = tensors["scores"].numpy().astype(np.float64) if "scores" in tensors else None
        confidence = tensors["confidence"].numpy() if "confidence" in tensors else None
        correct = tensors["correct"].numpy().astype(bool) if "correct" in tensors else None
        cell_scores = tensors.get("cell_scores")
        cell_scores = None if cell_scores is None else cell_scores.numpy().astype(np.float64)
        return cls(
            temperature=float(values["temperature"]),
            scores=scores,
            cell_scores=cell_scores,
            unknown_threshold=values.get("unknown_threshold"),
            precision=float(values.get("precision", PRECISION)),
            info=values.get("info", {}),
            confidence=confidence,
            correct=correct,
        )

    @classmethod
    def fit(
        cls, probabilities: np.ndarray, y: np.ndarray, *, precision: float = PRECISION
    ) -> Calibration:
        """Fit on validation probabilities (cells x classes) and true class codes."""
        if y.size < 2:
            return cls()
        errors = int((probabilities.argmax(axis=1) != y).sum())
        temperature, why = fit_checked_temperature(probabilities, y)
        tempered = temper(probabilities, temperature)
        true_p = tempered[np.arange(y.size), y]
        confidence = tempered.max(axis=1)
        correct = tempered.argmax(axis=1) == y
        info = {
            "cells": int(y.size),
            "errors": errors,
            "temperature": why,
            "val_ece_before": expected_calibration_error(probabilities.max(axis=1), correct),
            "val_ece_after": expected_calibration_error(confidence, correct),
        }
        return cls(
            temperature=temperature,
            scores=np.sort(1.0 - true_p),
            cell_scores=1.0 - true_p,
            unknown_threshold=threshold_for_precision(confidence, correct, precision),
            precision=precision,
            info=info,
            confidence=confidence.astype(np.float32),
            correct=correct,
        )


def _log_loss(probabilities: np.ndarray, y: np.ndarray):
    """The summed negative log-likelihood of softmax(log p / T) as a function of log T."""
    logp = np.log(np.clip(probabilities, 1e-30, None)).astype(np.float64)
    logp -= logp.max(axis=1, keepdims=True)  # -inf-free, the argmax at 0
    rows = np.arange(y.size)

    def nll(log_t: float) -> float:
        z = logp / math.exp(log_t)
        top = z.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
        return float((log_norm - z[rows, y]).sum())

    return nll


def fit_temperature(
    probabilities: np.ndarray, y: np.ndarray, prior_sd: float | None = PRIOR_SD
) -> float:
    """The T in T_BOUNDS maximizing the likelihood of softmax(log p / T) times a log-normal
    prior on T (log T ~ N(0, prior_sd^2); None: the likelihood alone)."""
    from scipy.optimize import minimize_scalar

    nll = _log_loss(probabilities, y)
    penalty = 0.0 if prior_sd is None else 1.0 / (2.0 * prior_sd**2)
    best = minimize_scalar(
        lambda log_t: nll(log_t) + penalty * log_t**2,
        bounds=(math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])),
        method="bounded",
    )
    return float(math.exp(best.x))


def fit_checked_temperature(probabilities: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    """(T, what was done): the prior-regularized T where the validation cells reject T = 1
    (likelihood ratio above LR_CRITICAL), else 1."""
    if y.size < 10:
        return 1.0, f"not fitted: {y.size} validation cells (fewer than 10)"
    temperature = fit_temperature(probabilities, y)
    nll = _log_loss(probabilities, y)
    ratio = 2.0 * (nll(0.0) - nll(math.log(temperature)))
    if ratio <= LR_CRITICAL:
        return 1.0, (
            f"not applied: on {y.size} validation cells T = {temperature:.3f} raises the "
            f"log-likelihood too little to reject T = 1 (likelihood ratio {ratio:.2f} <= "
            f"{LR_CRITICAL}, p > 0.01)"
        )
    return temperature, (
        f"{temperature:.3f}: {y.size} validation cells reject T = 1 (likelihood ratio "
        f"{ratio:.1f} > {LR_CRITICAL}, p < 0.01)"
    )


def threshold_for_precision(
    confidence: np.ndarray, correct: np.ndarray, precision: float
) -> float | None:
    """The lowest confidence t at which the cells with confidence >= t are right at least
    `precision` of the time (None when even the most confident cells are not)."""
    order = np.argsort(-confidence, kind="stable")
    kept_right = np.cumsum(correct[order]) / np.arange(1, order.size + 1)
    ok = np.flatnonzero(kept_right >= precision)
    if ok.size == 0:
        return None
    # the largest prefix that holds the precision; ties at its edge keep their confidence
    return float(confidence[order][ok[-1]])


def auto_precision(value: str) -> float | None:
    """The precision in "auto:P" (None for plain "auto")."""
    name, _, precision = value.partition(":")
    if name == "auto":
        if not precision:
            return None
        with contextlib.suppress(ValueError):
            return float(precision)
    msg = f"unknown_threshold takes a number, 'auto' or 'auto:P' (auto:0.99), got {value!r}"
    raise InputError(msg)


def check_coverage(coverage: float) -> None:
    if not 0 < coverage < 1:
        msg = f"coverage must be between 0 and 1 (e.g. 0.9 for 90% sets), got {coverage}"
        raise InputError(msg)


def prediction_sets(
    probabilities: np.ndarray, classes: list[str], threshold: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's set (classes joined by ';', most probable first) and its size; `threshold`
    is one number or one per cell (`SetRule.threshold`)."""
    names = np.asarray(classes, dtype=object)
    threshold = np.asarray(threshold, dtype=np.float64)
    inside = probabilities >= (threshold[:, None] if threshold.ndim else threshold)
    order = np.argsort(-probabilities, axis=1, kind="stable")
    sets = np.array([";".join(names[o][inside[i, o]]) for i, o in enumerate(order)], dtype=object)
    return sets, inside.sum(axis=1)
