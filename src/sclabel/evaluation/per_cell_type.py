"""How well a disease label (severity, state) is predicted from each cell type's cells.

Why: a condition changes some cell types and leaves others alone, so one overall score
hides where the signal is. Scoring per type says which types carry it (and are worth
weighting, see `sclabel.evaluation.patients`) and which only add noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from sclabel.errors import InputError
from sclabel.evaluation.plots import plt, save_figure

COLUMNS = ("cell_type", "n_cells", "accuracy", "macro_f1")


def per_cell_type_metrics(
    y_true: Sequence | np.ndarray | pd.Series,
    y_pred: Sequence | np.ndarray | pd.Series,
    cell_types: Sequence | np.ndarray | pd.Series,
    *,
    min_cells: int = 1,
) -> pd.DataFrame:
    """One row per cell type: cell_type, n_cells, accuracy, macro_f1; best macro-F1 first.

    Macro-F1 averages over the labels present among that type's true labels (as
    `compute_metrics` does overall), so a type seen only in two severities is not charged
    for the third. Types with fewer than `min_cells` cells are left out: their scores would
    be noise. Ties in macro-F1 are ordered by accuracy, then by name.
    """
    arrays = [np.asarray(v, dtype=object) for v in (y_true, y_pred, cell_types)]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
        shapes = [a.shape for a in arrays]
        raise InputError(f"y_true, y_pred and cell_types need one entry per cell; got {shapes}")
    if any(pd.isna(a).any() for a in arrays):
        raise InputError("y_true, y_pred or cell_types has missing values; drop those cells")
    y_true, y_pred, types = (a.astype(str) for a in arrays)
    rows = []
    for cell_type in sorted(set(types)):
        here = types == cell_type
        if here.sum() < min_cells:
            continue
        truth, guess = y_true[here], y_pred[here]
        present = sorted(set(truth))
        rows.append(
            {
                "cell_type": cell_type,
                "n_cells": int(here.sum()),
                "accuracy": float((truth == guess).mean()),
                "macro_f1": float(
                    f1_score(truth, guess, labels=present, average="macro", zero_division=0)
                ),
            }
        )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    order = table.sort_values(["macro_f1", "accuracy", "cell_type"], ascending=[False, False, True])
    return order.reset_index(drop=True)


def best_and_worst(
    table: pd.DataFrame, n: int = 5, *, by: str = "macro_f1"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `n` types with the highest and the lowest `by` (each sorted best to worst first).

    With fewer than 2n types the two tables overlap; that is fine for a report.
    """
    if by not in table.columns:
        raise InputError(f"cannot rank by {by!r}; columns are {list(table.columns)}")
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    ranked = table.sort_values(by, ascending=False, kind="stable")
    return ranked.head(n).reset_index(drop=True), ranked.tail(n)[::-1].reset_index(drop=True)


def per_cell_type_plot(
    table: pd.DataFrame,
    path: str | Path,
    *,
    metric: str = "macro_f1",
    overall: float | None = None,
    title: str | None = None,
) -> Path:
    """Horizontal bars of `metric` per cell type (best on top), n cells in each tick label.

    `overall` (e.g. the all-cell macro-F1) is drawn as a dashed line for reference.
    """
    if metric not in table.columns:
        raise InputError(f"cannot plot {metric!r}; columns are {list(table.columns)}")
    if table.empty:
        raise InputError("no cell types to plot; lower min_cells or check the inputs")
    ranked = table.sort_values(metric, kind="stable")  # barh draws bottom-up: best on top
    names = [f"{t} (n={n})" for t, n in zip(ranked["cell_type"], ranked["n_cells"], strict=True)]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.3 * len(names) + 1.5)))
    ax.barh(range(len(names)), ranked[metric], color="tab:blue")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlim(0, 1)
    if overall is not None:
        ax.axvline(overall, color="tab:red", linestyle="--", label=f"all cells ({overall:.2f})")
        ax.legend(loc="lower right")
    ax.set_xlabel(metric.replace("_", "-"))
    ax.set_title(title or f"{metric.replace('_', '-')} per cell type")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)
