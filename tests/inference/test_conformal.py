"""Conformal prediction sets: the split rule, and the rule weighted to the query's confidences."""

from __future__ import annotations

import numpy as np
import pytest

from sclabel.errors import InputError
from sclabel.inference.calibration import Calibration, prediction_sets
from sclabel.inference.conformal import MIN_QUERY, split_rule, weighted_rule

CLASSES = ["a", "b", "c"]


def cells(rng, n: int, low: float, high: float):
    """Calibrated cells: top probability c ~ U(low, high) on a random class, the rest split
    evenly; the true class is the top one with probability c (else one of the others)."""
    confidence = rng.uniform(low, high, n)
    top = rng.integers(0, 3, n)
    proba = np.repeat(((1 - confidence) / 2)[:, None], 3, axis=1)
    proba[np.arange(n), top] = confidence
    right = rng.random(n) < confidence
    other = (top + rng.integers(1, 3, n)) % 3
    return proba, np.where(right, top, other)


def reached(proba, y, rule) -> float:
    sets, _ = prediction_sets(proba, CLASSES, rule.threshold(proba.max(axis=1)))
    return float(np.mean([CLASSES[t] in s.split(";") for t, s in zip(y, sets, strict=True)]))


def fitted(proba, y) -> Calibration:
    calibration = Calibration.fit(proba, y)
    assert calibration.temperature == 1.0  # calibrated by construction: sets see raw p
    return calibration


def test_with_the_same_cells_the_weighted_rule_is_the_split_rule_up_to_noise():
    rng = np.random.default_rng(0)
    val, val_y = cells(rng, 2000, 0.5, 1.0)
    query, query_y = cells(rng, 5000, 0.5, 1.0)
    calibration = fitted(val, val_y)
    split = calibration.set_rule(0.9, "split")
    weighted = calibration.set_rule(0.9, "weighted", query.max(axis=1))
    assert weighted.method == "weighted" and weighted.thresholds.size > 1
    np.testing.assert_allclose(weighted.thresholds, split.thresholds[0], atol=0.03)
    assert abs(reached(query, query_y, weighted) - 0.9) <= 0.02
    assert abs(reached(query, query_y, split) - 0.9) <= 0.02


def test_on_a_less_confident_query_split_sets_fall_short_and_weighted_sets_reach_coverage():
    """Validation cells mostly near-certain, the query (another plate) less so, each cell as
    often right as its confidence says: the split threshold (set on near-certain cells)
    leaves the query's doubtful cells with empty sets."""
    rng = np.random.default_rng(1)
    val, val_y = cells(rng, 400, 0.85, 1.0)
    doubtful, doubtful_y = cells(rng, 1500, 0.5, 0.95)
    calibration = fitted(np.vstack([val, doubtful[:100]]), np.r_[val_y, doubtful_y[:100]])
    query, query_y = doubtful[100:], doubtful_y[100:]
    split = calibration.set_rule(0.9, "split")
    weighted = calibration.set_rule(0.9, "weighted", query.max(axis=1))
    assert reached(query, query_y, split) < 0.85
    assert 0.87 <= reached(query, query_y, weighted) <= 0.93


def test_the_weighted_quantile_with_equal_weights_is_the_finite_sample_rank():
    scores = np.linspace(0.0, 0.5, 99)
    confidence = np.full(99, 0.9)
    rule = weighted_rule(scores, confidence, np.full(500, 0.9), 0.9)
    assert np.allclose(rule.thresholds, split_rule(np.sort(scores), 0.9).thresholds[0])
    # a coverage the validation cells cannot vouch for gives every class
    assert split_rule(np.sort(scores), 0.995).thresholds[0] == 0.0


def test_the_rule_falls_back_to_split_and_says_why():
    rng = np.random.default_rng(2)
    val, val_y = cells(rng, 300, 0.5, 1.0)
    calibration = Calibration.fit(val, val_y)
    few = calibration.set_rule(0.9, "weighted", val.max(axis=1)[: MIN_QUERY - 1])
    assert few.method == "split" and "too few" in few.note
    older = Calibration.from_parts(calibration.to_dict(), {
        k: v for k, v in calibration.tensors().items() if k != "cell_scores"
    })  # fmt: skip
    old = older.set_rule(0.9, "weighted", val.max(axis=1))
    assert old.method == "split" and "retrain" in old.note
    split = calibration.set_rule(0.9, "split").thresholds[0]
    assert old.thresholds[0] == pytest.approx(split, rel=1e-6)  # saved as float32
    # the per-cell scores survive a save
    again = Calibration.from_parts(calibration.to_dict(), calibration.tensors())
    np.testing.assert_allclose(again.cell_scores, calibration.cell_scores, rtol=1e-6)
    with pytest.raises(InputError, match="sets must be one of weighted, split"):
        calibration.set_rule(0.9, "aps")
    with pytest.raises(InputError, match="coverage must be between 0 and 1"):
        calibration.set_rule(0.0, "weighted", val.max(axis=1))


def test_a_per_cell_threshold_gives_each_cell_its_own_set():
    proba = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]])
    sets, sizes = prediction_sets(proba, CLASSES, np.array([0.15, 0.5]))
    assert list(sets) == ["a;b", "a"] and list(sizes) == [2, 1]


def test_a_big_query_is_binned_in_chunks_and_sampled_for_edges_and_the_shift_check(
    monkeypatch,
):
    """Atlas-sized queries keep memory bounded: bin edges from a seeded sample, bin counts a
    chunk at a time, the shift check on a sample; the answers stay those of the whole."""
    from sclabel.inference import calibration as calibration_module
    from sclabel.inference import conformal

    rng = np.random.default_rng(3)
    val, val_y = cells(rng, 400, 0.85, 1.0)
    doubtful, doubtful_y = cells(rng, 6100, 0.5, 0.95)
    calibration = fitted(np.vstack([val, doubtful[:100]]), np.r_[val_y, doubtful_y[:100]])
    query, query_y = doubtful[100:], doubtful_y[100:]
    whole = calibration.set_rule(0.9, "weighted", query.max(axis=1))
    whole_shift = calibration.shift_check(query.max(axis=1))
    monkeypatch.setattr(conformal, "EDGE_SAMPLE", 2000)
    monkeypatch.setattr(conformal, "COUNT_CHUNK", 700)
    monkeypatch.setattr(calibration_module, "SHIFT_SAMPLE", 1500)
    parts = calibration.set_rule(0.9, "weighted", query.max(axis=1))
    assert abs(reached(query, query_y, parts) - reached(query, query_y, whole)) <= 0.01
    assert 0.87 <= reached(query, query_y, parts) <= 0.93
    sampled = calibration.shift_check(query.max(axis=1))
    assert sampled["flagged"] and abs(sampled["auc"] - whole_shift["auc"]) < 0.03
