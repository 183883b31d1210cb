"""Expected calibration error: does a confidence of 0.8 mean 80% right?"""

from __future__ import annotations

import numpy as np
import pandas as pd


def reliability_table(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> pd.DataFrame:
    """Per equal-width confidence bin: cell count, mean confidence and accuracy."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    frame = pd.DataFrame({"bin": bins, "confidence": confidence, "correct": correct.astype(float)})
    table = frame.groupby("bin").agg(
        n=("correct", "size"), confidence=("confidence", "mean"), accuracy=("correct", "mean")
    )
    table = table.reindex(range(n_bins))
    table["lower"], table["upper"] = edges[:-1], edges[1:]
    table["n"] = table["n"].fillna(0).astype(int)
    return table


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> float:
    """Sum over bins of (bin share of cells) x |accuracy - mean confidence|."""
    table = reliability_table(confidence, correct, n_bins).dropna()
    if table.empty:
        return float("nan")
    gap = (table["accuracy"] - table["confidence"]).abs()
    return float((table["n"] * gap).sum() / table["n"].sum())
