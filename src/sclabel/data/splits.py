"""Train/validation/test splits: by group (donor, sample, batch) or stratified by label.

Grouped splits keep every cell of a donor in one part, so test scores measure transfer to
unseen donors, not memorised donor effects (scTab's practice).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from sclabel.errors import InputError, listing

log = logging.getLogger("sclabel")
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
    table = pd.crosstab(groups, labels)  # groups x classes, cell counts
    assign = _stratified_groups(table, names, fractions, rng)
    if assign is None:
        n_train, n_val = _counts(names.size, fractions)
        assign = {g: "train" for g in names[:n_train]}
        assign |= {g: "val" for g in names[n_train : n_train + n_val]}
        assign |= {g: "test" for g in names[n_train + n_val :]}
    _cover_classes_in_train(assign, table)
    _warn_if_few_groups(assign, groups)
    return pd.Series(groups).map(assign).to_numpy(dtype=object)


FEW_GROUPS = 3  # fewer groups than this in a part: its scores rest on one or two donors


def _warn_if_few_groups(assign: dict, groups: np.ndarray) -> None:
    """Say which groups went where, and warn when training or a held-out part has fewer
    than FEW_GROUPS of them (3 replicates: one trains, one validates, one tests)."""
    cells = pd.Series(groups).value_counts()
    chosen = {part: sorted(g for g, p in assign.items() if p == part) for part in PARTS}
    described = "; ".join(
        f"{part}: {len(names)} group(s) {listing(names, 6)}, "
        f"{int(cells[names].sum()) if names else 0} cells"
        for part, names in chosen.items()
    )
    few = [part for part, names in chosen.items() if 0 < len(names) < FEW_GROUPS]
    if few:
        log.warning(
            "grouped split: %s. %s %s fewer than %d groups: scores then rest on one or two "
            "groups, and a model trained on few groups may not generalize; use a column with "
            "more groups, or --cv to rotate them",
            described, " and ".join(few), "has" if len(few) == 1 else "have", FEW_GROUPS,
        )  # fmt: skip
    else:
        log.info("grouped split: %s", described)


def _stratified_groups(table: pd.DataFrame, names, fractions, rng) -> dict | None:
    """For sample-level labels (every group has one label, e.g. a patient's severity): deal
    each class's groups by `fractions`, so with few patients per class every part still
    sees each class where it can. None when labels vary within groups (cell types) or when a
    part would be left empty; the caller then deals groups at random."""
    if not ((table > 0).sum(axis=1) == 1).all():
        return None
    group_label = table.loc[names].idxmax(axis=1).to_numpy()  # in the shuffled order
    parts = _stratified(group_label, fractions, rng)
    needed = {"train"} | {p for p, f in zip(PARTS[1:], fractions[1:], strict=True) if f > 0}
    if not needed <= set(parts):
        return None
    return dict(zip(names, parts, strict=True))


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


def kfold_by_group(
    labels: pd.Series,
    groups: pd.Series | None,
    k: int,
    seed: int = 0,
    *,
    val_fraction: float = 0.15,
) -> list[pd.Series]:
    """k train/val/test splits (Series like `make_split`'s) for cross-validation.

    With `groups` (donors), each group is in exactly one fold's test part; folds get about
    equal numbers of cells (largest groups first, each to the fold with fewest cells). The
    validation groups (about `val_fraction` of all cells, at least one group) come from
    the other groups, and validation groups move into train while a class present outside
    the test part is missing from train. Without groups, folds are stratified by label
    over cells, and validation cells are drawn per class from the rest.
    """
    check_folds(k, val_fraction)
    rng = np.random.default_rng(seed)
    values = labels.to_numpy()
    if groups is None:
        if k > values.size:
            raise InputError(f"{k} folds need at least {k} cells; there are {values.size}")
        folds = _stratified_folds(values, k, rng)
    else:
        groups = groups.astype(str)
        folds = _group_folds(groups.to_numpy(), k, rng)
    return [
        pd.Series(
            pd.Categorical(_fold_parts(values, groups, folds == f, val_fraction, k, rng), PARTS),
            index=labels.index,
            name="split",
        )
        for f in range(k)
    ]


def check_folds(k: int, val_fraction: float) -> None:
    if not isinstance(k, int | np.integer) or k < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {k}")
    if not 0 <= val_fraction < 1 - 1 / k:
        msg = f"val_fraction must be in [0, {1 - 1 / k:.2f}) with {k} folds, got {val_fraction}"
        raise InputError(msg)


def _stratified_folds(labels: np.ndarray, k: int, rng) -> np.ndarray:
    """Fold of each cell: every class's cells dealt round-robin from a random start."""
    fold = np.empty(labels.size, dtype=np.int64)
    offset = 0
    for label in pd.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold[members] = (offset + np.arange(members.size)) % k
        offset += members.size  # the next class starts where this one stopped: even folds
    return fold


def _group_folds(groups: np.ndarray, k: int, rng) -> np.ndarray:
    """Fold of each cell: whole groups, largest first, each to the fold with fewest cells."""
    names, sizes = np.unique(groups, return_counts=True)
    if k > names.size:
        msg = (
            f"{k} folds need at least {k} groups in the split column; it has {names.size}: "
            "use fewer folds (--cv) or a column with more donors/samples"
        )
        raise InputError(msg)
    shuffled = rng.permutation(names.size)  # random ties among groups of one size
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    load = np.zeros(k, dtype=np.int64)
    fold_of = {}
    for i in order:
        target = int(np.argmin(load))
        fold_of[names[i]] = target
        load[target] += sizes[i]
    return pd.Series(groups).map(fold_of).to_numpy(dtype=np.int64)


def _fold_parts(labels, groups, test, val_fraction, k, rng) -> np.ndarray:
    """train/val/test per cell for one fold, given its test cells."""
    parts = np.full(labels.size, "test", dtype=object)
    rest = np.flatnonzero(~test)
    share = val_fraction * k / (k - 1)  # of the non-test cells: val_fraction of all cells
    if groups is None:
        parts[rest] = _stratified(labels[rest], (1 - share, share, 0.0), rng)
        return parts
    rest_groups = groups.to_numpy()[rest]
    names = rng.permutation(pd.unique(rest_groups))
    n_val = _counts(names.size, (1 - share, share, 0.0))[1]
    if share > 0 and names.size >= 2:
        n_val = max(n_val, 1)
    assign = {g: "val" for g in names[:n_val]} | {g: "train" for g in names[n_val:]}
    table = pd.crosstab(rest_groups, labels[rest])
    _cover_classes_in_train(assign, table.loc[:, table.sum(axis=0) > 0])
    parts[rest] = pd.Series(rest_groups).map(assign).to_numpy(dtype=object)
    return parts
