"""obs columns as inputs: labels, required columns, groups, and markdown tables of them.

Shared by training (labels, splits), the patient-cohort building blocks (balanced sampling,
patient splits, patient aggregation) and reports, so every caller words its user errors the
same way and prints tables without an optional dependency (tabulate).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from sclabel.errors import InputError
from sclabel.io.read import as_strings


def require_columns(obs: pd.DataFrame, keys: Iterable[str]) -> None:
    """Raise InputError naming the missing obs column(s) and the columns that exist."""
    missing = [k for k in keys if k not in obs.columns]
    if missing:
        shown = list(obs.columns)[:20]
        raise InputError(
            f"obs has no column(s) {missing}; available columns: {shown}; pass the name of "
            "the column that holds the patient / cell type / label"
        )


def require_column(obs: pd.DataFrame, key: str, what: str) -> None:
    """Raise InputError when obs has no column `key` (`what`: label, split, donor...)."""
    if key not in obs.columns:
        raise InputError(f"{what} column {key!r} not found in obs; available: {list(obs.columns)}")


def read_labels(obs: pd.DataFrame, label_key: str) -> pd.Series:
    """The label column as strings, NaN where a cell is unlabeled."""
    require_column(obs, label_key, "label")
    return as_strings(obs[label_key])


def require_classes(values: pd.Series | np.ndarray, name: str, minimum: int = 2) -> list:
    """The distinct non-missing values (categorical order when there is one).

    Raises InputError when fewer than `minimum` remain: a label with one class cannot be
    balanced, stratified or scored.
    """
    series = pd.Series(values)
    present = set(series.dropna().unique())
    if isinstance(series.dtype, pd.CategoricalDtype):
        classes = [c for c in series.cat.categories if c in present]
    else:
        classes = sorted(present, key=str)
    if len(classes) < minimum:
        raise InputError(
            f"{name!r} has {len(classes)} distinct value(s) {classes}; need at least {minimum}: "
            "choose a label column with several classes or include more samples"
        )
    return classes


def one_label_per_group(
    labels: pd.Series | np.ndarray, groups: pd.Series | np.ndarray
) -> pd.Series:
    """The label of each group (patient/sample), indexed by group name.

    Raises InputError when a group carries more than one label: sample-level labels such as
    severity must be constant within the group they are aggregated over.
    """
    frame = pd.DataFrame({"g": np.asarray(groups, dtype=object), "y": np.asarray(labels)})
    if frame["g"].isna().any():
        raise InputError("the patient column has missing values; fill or drop those cells")
    frame = frame.dropna(subset=["y"])
    counts = frame.groupby("g", sort=True)["y"].nunique()
    mixed = counts.index[counts > 1].tolist()
    if mixed:
        raise InputError(
            f"{len(mixed)} patient(s) carry more than one label, e.g. {mixed[:3]}; group by a "
            "sample id (one label each) instead of the patient id"
        )
    return frame.groupby("g", sort=True)["y"].first()


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table; floats to 4 significant digits, missing values as '-'."""

    def cell(value) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "-"
        if isinstance(value, float | np.floating):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * frame.shape[1]]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)
