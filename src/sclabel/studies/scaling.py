"""`sclabel scaling`: learning curves over nested training subsamples and model widths.

The validation and test cells stay fixed; the training part is cut to nested fractions
(each subsample contains the smaller ones) either by donor (whole donors are added, as in
scTab's scaling study) or by cell. Each (width, fraction) trains one model of one family.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sclabel.errors import InputError
from sclabel.studies.benchmark import Variant, run_variant
from sclabel.training.data import TrainingData

log = logging.getLogger("sclabel")
DEFAULT_FRACTIONS = (0.15, 0.3, 0.5, 0.7, 1.0)
WIDTH_PARAMS = {"tabnet": "n_d", "mlp": "width"}  # the hyperparameter a width sets


def nested_subsets(
    data: TrainingData, fractions, by: str, seed: int
) -> list[tuple[float, np.ndarray]]:
    """(fraction, training row indices) pairs; a larger fraction contains every smaller one."""
    fractions = sorted(set(float(f) for f in fractions))
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        raise InputError(f"fractions must be in (0, 1], got {fractions}")
    rng = np.random.default_rng(seed)
    n = data.subsets["train"][1].size
    if by == "cell":
        order = rng.permutation(n)
        return [(f, np.sort(order[: max(2, math.ceil(f * n))])) for f in fractions]
    if by != "donor":
        raise InputError(f"subsample by 'donor' or 'cell', got {by!r}")
    if data.donors is None:
        raise InputError("subsampling by donor needs donors: pass --split-by or --donor-key")
    donors = data.donors["train"]
    names = rng.permutation(pd.unique(donors))
    out = []
    for f in fractions:
        kept = names[: max(1, math.ceil(f * names.size))]
        out.append((f, np.flatnonzero(np.isin(donors, kept))))
    return out


def with_training_rows(data: TrainingData, rows: np.ndarray) -> TrainingData:
    X, y = data.subsets["train"]
    subsets = {**data.subsets, "train": (X[rows], y[rows])}
    donors = None if data.donors is None else {**data.donors, "train": data.donors["train"][rows]}
    return dataclasses.replace(data, subsets=subsets, donors=donors)


def run_scaling(
    data: TrainingData,
    family: str,
    *,
    fractions=DEFAULT_FRACTIONS,
    by: str = "donor",
    widths: list[int] | None = None,
    params: dict[str, Any] | None = None,
    train_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per (width, fraction): training cells/donors, test scores, time."""
    train_options = train_options or {}
    variant = Variant.parse(family)
    width_param = WIDTH_PARAMS.get(variant.family)
    if widths and width_param is None:
        raise InputError(f"{family} has no width to scale; widths work for {sorted(WIDTH_PARAMS)}")
    subsets = nested_subsets(data, fractions, by, int(train_options.get("seed", 0)))
    rows = []
    for width in widths or [None]:
        width_params = dict(params or {})
        if width is not None:
            width_params[width_param] = int(width)
        for fraction, train_rows in subsets:
            part = with_training_rows(data, train_rows)
            row = run_variant(part, variant, train_options, params=width_params)
            donors = part.donors["train"] if part.donors is not None else None
            rows.append(
                {
                    "fraction": fraction,
                    "by": by,
                    "width": width,
                    "n_train_donors": None if donors is None else int(pd.unique(donors).size),
                    **{k: v for k, v in row.items() if k not in {"family", "augment", "ensemble"}},
                }
            )
            log.info(
                "width %s, %.0f%% of training: macro-F1 %.3f",
                width,
                100 * fraction,
                row["macro_f1"],
            )
    return pd.DataFrame(rows)


def plot_learning_curve(table: pd.DataFrame, path: Path) -> None:
    from sclabel.evaluation.plots import plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for width, group in table.groupby(pd.to_numeric(table["width"]).fillna(-1), sort=True):
        label = "default width" if width == -1 else f"width {int(width)}"
        ax.plot(group["n_train"], group["macro_f1"], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel(f"training cells (nested subsamples by {table['by'].iloc[0]})")
    ax.set_ylabel("test macro-F1")
    ax.set_title(f"learning curve: {table['variant'].iloc[0]}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
