"""Label-balanced cell sampling per cell type, and "wide vs deep" cell-type subsets.

The COVID-19 scGPT study (GSE158055) trained severity/state classifiers on cells drawn
1:1:1 per label within each cell type, so a classifier cannot score by predicting the
majority label of a type, and compared many types with few cells each ("wide") against few
types with many cells ("deep") at one fixed total. These functions rebuild both subsets.
Split patients first (`sclabel.data.patient_splits`) and balance within the training part.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sclabel.data.obs import markdown_table, require_classes, require_columns
from sclabel.data.patient_splits import cell_level_split, patient_kfold, patient_split
from sclabel.errors import InputError

log = logging.getLogger("sclabel")
__all__ = [
    "CellTypeChoice",
    "balanced_per_cell_type",
    "cell_level_split",
    "choose_cell_types",
    "patient_kfold",
    "patient_split",
]


def balanced_capacity(obs: pd.DataFrame, label_key: str | None, cell_type_key: str) -> pd.Series:
    """Cells per type usable for a 1:1:...:1 draw (all cells when `label_key` is None)."""
    types = obs[cell_type_key].astype(object)
    if label_key is None:
        return types.value_counts()
    classes = require_classes(obs[label_key], label_key)
    table = pd.crosstab(types, obs[label_key].astype(object)).reindex(columns=classes, fill_value=0)
    return table.min(axis=1) * len(classes)


def balanced_per_cell_type(
    obs: pd.DataFrame,
    label_key: str,
    cell_type_key: str,
    *,
    cap_per_type: int | Mapping[str, int] | None = None,
    min_per_type: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """Sorted row positions of a draw with equal cells per label within every cell type.

    Parameters
    ----------
    obs
        One row per cell (e.g. the training part of `adata.obs`).
    label_key, cell_type_key
        The label to balance (severity, state) and the cell-type column.
    cap_per_type
        At most this many cells per type (rounded down to a multiple of the number of
        labels), e.g. 1,000 / 3,000 / 10,000 as in the study. A mapping caps each type on its
        own and also chooses the types: types it does not name are left out
        (`CellTypeChoice.caps()` gives one).
    min_per_type
        Types whose balanced draw (before the cap) would have fewer cells are dropped and
        logged: too few cells to learn a type-specific signal.
    seed
        Seeds the draw without replacement inside each (type, label) cell.

    Each type contributes `n_labels * m` cells, where m is its rarest label's count (a type
    lacking a label entirely contributes nothing), so no type can be classified by its
    label frequencies. Cells with a missing label or type are never drawn.
    """
    require_columns(obs, [label_key, cell_type_key])
    classes = require_classes(obs[label_key], label_key)
    _check_caps(cap_per_type, min_per_type, len(classes))
    labels = obs[label_key].astype(object).to_numpy()
    types = obs[cell_type_key].astype(object).to_numpy()
    rng = np.random.default_rng([seed, 11])
    chosen, dropped = [], {}
    for cell_type in require_classes(obs[cell_type_key], cell_type_key, minimum=1):
        if isinstance(cap_per_type, Mapping):
            if cell_type not in cap_per_type:
                continue
            cap = cap_per_type[cell_type]
        else:
            cap = cap_per_type
        members = [np.flatnonzero((types == cell_type) & (labels == c)) for c in classes]
        per_label = min(m.size for m in members)
        if per_label == 0 or per_label * len(classes) < min_per_type:
            dropped[cell_type] = per_label * len(classes)
            continue
        if cap is not None:
            per_label = min(per_label, cap // len(classes))
        chosen += [rng.choice(m, size=per_label, replace=False) for m in members]
    if dropped:
        log.info(
            "balanced sampling dropped %d cell type(s) with fewer than %d usable cells "
            "(balanced over %s): %s",
            len(dropped),
            max(min_per_type, 1),
            label_key,
            dropped,
        )
    if not chosen:
        raise InputError(
            f"no cell type has cells of every {label_key!r} class (and at least {min_per_type} "
            "usable cells); lower min_per_type or balance a label present in more types"
        )
    return np.sort(np.concatenate(chosen))


def _check_caps(cap_per_type, min_per_type: int, n_classes: int) -> None:
    caps = cap_per_type.values() if isinstance(cap_per_type, Mapping) else [cap_per_type]
    for cap in caps:
        if cap is not None and (cap < n_classes or cap < min_per_type):
            raise InputError(
                f"cap_per_type {cap} is below the number of labels ({n_classes}) or below "
                f"min_per_type ({min_per_type}); raise the cap or lower min_per_type"
            )
    if min_per_type < 0:
        raise InputError(f"min_per_type must be >= 0, got {min_per_type}")


@dataclass
class CellTypeChoice:
    """The chosen cell types and how many cells each contributes to reach `total`.

    `table` has one row per chosen type, most prevalent first: cell_type, available (usable
    cells, balanced over the label when one was given) and cells (its share).
    """

    table: pd.DataFrame
    total: int
    min_per_type: int
    skipped: list[str]  # types with fewer than min_per_type usable cells

    @property
    def cell_types(self) -> list[str]:
        return self.table["cell_type"].tolist()

    def caps(self) -> dict[str, int]:
        """Per-type caps for `balanced_per_cell_type(..., cap_per_type=choice.caps())`."""
        return dict(zip(self.table["cell_type"], self.table["cells"].astype(int), strict=True))

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "min_per_type": self.min_per_type,
            "cells": int(self.table["cells"].sum()),
            "types": self.table.to_dict(orient="records"),
            "skipped": self.skipped,
        }

    def to_markdown(self) -> str:
        head = (
            f"{len(self.table)} cell type(s), at least {self.min_per_type} cells each, "
            f"{int(self.table['cells'].sum())} of {self.total} cells requested; "
            f"{len(self.skipped)} type(s) too small.\n\n"
        )
        return head + markdown_table(self.table) + "\n"


def choose_cell_types(
    obs: pd.DataFrame,
    cell_type_key: str,
    *,
    total: int,
    min_per_type: int,
    label_key: str | None = None,
) -> CellTypeChoice:
    """Most prevalent types, each giving at least `min_per_type` cells, summing to `total`.

    The number of types is total // min_per_type (fewer when fewer types are large enough):
    30,000 cells at 1,000 per type is a wide subset of 30 types; at 10,000 a deep one of 3.
    Types are ranked by usable cells (with `label_key`: cells in a 1:1:...:1 draw, so shares
    are in multiples of the number of labels and the sum may fall short of `total` by less
    than that). The total is split evenly, a type that cannot fill its share gives the rest to
    the larger ones. Raises InputError when the chosen types cannot reach `total`.
    """
    require_columns(obs, [cell_type_key] + ([label_key] if label_key else []))
    if min_per_type < 1 or total < min_per_type:
        raise InputError(
            f"need 1 <= min_per_type <= total, got min_per_type={min_per_type}, total={total}"
        )
    capacity = balanced_capacity(obs, label_key, cell_type_key).sort_values(
        ascending=False, kind="stable"
    )
    unit = len(require_classes(obs[label_key], label_key)) if label_key else 1
    eligible = capacity[capacity >= min_per_type]
    skipped = capacity.index[capacity < min_per_type].astype(str).tolist()
    n_types = min(len(eligible), (total // unit) // -(-min_per_type // unit))
    chosen = eligible.iloc[: max(n_types, 0)]
    units = (chosen // unit).astype(int)
    if n_types == 0 or units.sum() * unit < (total // unit) * unit:
        raise InputError(
            f"the {len(chosen)} cell type(s) with at least {min_per_type} usable cells hold "
            f"{int(chosen.sum())} cells, fewer than total={total}; lower total or min_per_type"
        )
    share = pd.Series(0, index=chosen.index)
    remaining = total // unit
    for i, name in enumerate(units.sort_values(kind="stable").index):  # smallest first
        share[name] = min(units[name], remaining // (len(units) - i))
        remaining -= share[name]
    table = pd.DataFrame(
        {
            "cell_type": chosen.index.astype(str),
            "available": chosen.to_numpy(dtype=int),
            "cells": (share * unit).to_numpy(dtype=int),
        }
    )
    log.info("chose %d cell type(s) for %d cells", len(table), int(table["cells"].sum()))
    return CellTypeChoice(table, total, min_per_type, skipped)
