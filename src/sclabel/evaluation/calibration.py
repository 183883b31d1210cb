"""Expected calibration error: does a confidence of 0.8 mean 80% right?

ECE measured on a few hundred cells is never 0, even for a model whose confidences are exactly
right: its cells are right or wrong by chance. `ece_by_chance` says how large that chance
part is, by drawing each cell's rightness from its own confidence (a perfectly calibrated
model with these confidences) and measuring ECE on the draws. An ECE within that range is
no evidence of miscalibration.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

N_BINS = 15
CHANCE_DRAWS = 200
CHANCE_WORK = 20_000_000  # cells x draws: fewer draws on large sets (20 at least)


def _bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)


def reliability_table(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS
) -> pd.DataFrame:
    """Per equal-width confidence bin: cell count, mean confidence and accuracy."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    frame = pd.DataFrame(
        {
            "bin": _bins(confidence, n_bins),
            "confidence": confidence,
            "correct": correct.astype(float),
        }
    )
    table = frame.groupby("bin").agg(
        n=("correct", "size"), confidence=("confidence", "mean"), accuracy=("correct", "mean")
    )
    table = table.reindex(range(n_bins))
    table["lower"], table["upper"] = edges[:-1], edges[1:]
    table["n"] = table["n"].fillna(0).astype(int)
    return table


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS
) -> float:
    """Sum over bins of (bin share of cells) x |accuracy - mean confidence|."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if confidence.size == 0:
        return float("nan")
    bins = _bins(confidence, n_bins)
    return _binned_ece(bins, np.bincount(bins, weights=confidence, minlength=n_bins), correct)


def _binned_ece(bins: np.ndarray, confidence_sums: np.ndarray, correct: np.ndarray) -> float:
    right = np.bincount(bins, weights=np.asarray(correct, dtype=np.float64),
                        minlength=confidence_sums.size)  # fmt: skip
    return float(np.abs(right - confidence_sums).sum() / bins.size)


def ece_by_chance(
    confidence: np.ndarray,
    observed: float | None = None,
    *,
    never_right: np.ndarray | None = None,
    n_bins: int = N_BINS,
    draws: int | None = None,
    seed: int = 0,
) -> dict:
    """The ECE a perfectly calibrated model with these confidences shows on this many cells:
    `mean` and `p95` over `draws` simulated rightness vectors (cell i right with probability
    confidence[i]; cells in the `never_right` mask, e.g. labelled "unknown" or of a class the
    model lacks, always wrong, as they are in the observed ECE), the simulated values
    (`draws`) and, given the `observed` ECE, `p_value`: (draws at or above it + 1) /
    (draws + 1) (small: miscalibration that chance does not explain). `draws` defaults to
    CHANCE_DRAWS, fewer (20 at least) where cells x draws would pass CHANCE_WORK. NaN
    confidences or an empty set give NaN."""
    confidence = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    if confidence.size == 0 or np.isnan(confidence).any():
        nan = float("nan")
        return {"mean": nan, "p95": nan, "draws": np.array([]), "p_value": nan}
    if draws is None:
        draws = int(np.clip(CHANCE_WORK // confidence.size, 20, CHANCE_DRAWS))
    chance = confidence if never_right is None else np.where(never_right, 0.0, confidence)
    bins = _bins(confidence, n_bins)
    sums = np.bincount(bins, weights=confidence, minlength=n_bins)
    rng = np.random.default_rng(seed)
    values = np.array(
        [_binned_ece(bins, sums, rng.random(confidence.size) < chance) for _ in range(draws)]
    )
    result = {
        "mean": float(values.mean()),
        "p95": float(np.quantile(values, 0.95)),
        "draws": values,
    }
    if observed is not None:
        above = int((values >= observed).sum())
        result["p_value"] = float("nan") if np.isnan(observed) else (above + 1) / (draws + 1)
    return result
