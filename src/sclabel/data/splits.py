"""Train/validation/test splits: by group (donor, sample, batch) or stratified by label.

Grouped splits keep every cell of a donor in one part, so test scores measure transfer to
unseen donors, not memorised donor effects (scTab's practice).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sclabel.errors import InputError

PARTS = ("train", "val", "test")


def make_split(
    labels: pd.Series,
    *,
    groups: pd.Series | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> pd.Series:
    """Assign each cell to "train", "val" or "test"; returns a Series indexed like `labels`."""
    rng = np.random.default_rng(seed)
    if groups is None:
        parts = _stratified(labels.to_numpy(), fractions, rng)
    else:
        parts = _grouped(labels.to_numpy(), groups.astype(str).to_numpy(), fractions, rng)
    return pd.Series(pd.Categorical(parts, categories=PARTS), index=labels.index, name="split")


def _counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """How many of n items go to train and val; the rest go to test."""
    n_val = round(fractions[1] * n)
    n_test = round(fractions[2] * n)
    if fractions[1] > 0 and n >= 3:
        n_val = max(n_val, 1)
    if fractions[2] > 0 and n >= 3:
        n_test = max(n_test, 1)
    n_train = max(n - n_val - n_test, 1)
    n_val = min(n_val, n - n_train)
    return n_train, n_val


def _stratified(labels: np.ndarray, fractions, rng) -> np.ndarray:
    parts = np.empty(labels.size, dtype=object)
    for label in pd.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_train, n_val = _counts(members.size, fractions)
        parts[members[:n_train]] = "train"
        parts[members[n_train : n_train + n_val]] = "val"
        parts[members[n_train + n_val :]] = "test"
    return parts


def _grouped(labels: np.ndarray, groups: np.ndarray, fractions, rng) -> np.ndarray:
    names = rng.permutation(pd.unique(groups))
    needed = 1 + (fractions[1] > 0) + (fractions[2] > 0)
    if names.size < needed:
        msg = (
            f"the split column has {names.size} group(s), need at least {needed} for "
            "train/val/test; choose a column with more donors/samples or omit --split-by"
        )
        raise InputError(msg)
    n_train, n_val = _counts(names.size, fractions)
    assign = {g: "train" for g in names[:n_train]}
    assign |= {g: "val" for g in names[n_train : n_train + n_val]}
    assign |= {g: "test" for g in names[n_train + n_val :]}
    table = pd.crosstab(groups, labels)  # groups x classes, cell counts
    _cover_classes_in_train(assign, table)
    return pd.Series(groups).map(assign).to_numpy(dtype=object)


def _cover_classes_in_train(assign: dict, table: pd.DataFrame) -> None:
    """Move held-out groups into train until every class is seen in training, if possible.

    A part emptied by a move is refilled with the smallest train group that is not the only
    training source of any class.
    """
    for label in table.columns:
        in_train = [g for g in table.index if assign[g] == "train" and table.at[g, label] > 0]
        if in_train:
            continue
        donor = table[label].idxmax()
        emptied = assign[donor]
        assign[donor] = "train"
        if any(part == emptied for part in assign.values()):
            continue
        train = [g for g in table.index if assign[g] == "train"]
        train_counts = table.loc[train]
        sources = (train_counts > 0).sum(axis=0)
        spare = [g for g in train if not ((train_counts.loc[g] > 0) & (sources == 1)).any()]
        if spare:
            assign[min(spare, key=lambda g: table.loc[g].sum())] = emptied
