"""Class weights for the loss, upsampling of rare classes in the training part, and seeded
samples of rows (a report's cells; a big query's confidences)."""

from __future__ import annotations

import numpy as np

from sclabel.errors import InputError


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """weight_c = n_cells / (n_classes * n_cells_in_class); 0 for a class absent from `y`.

    Balances the loss so rare cell types count as much as abundant ones (scTab, CellTypist's
    `balance_cell_type`); an absent class gets no weight rather than an infinite one.
    """
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes, dtype=np.float32)
    weights[present] = y.size / (n_classes * counts[present])
    return weights


def upsample_indices(y: np.ndarray, target: float, seed: int = 0) -> np.ndarray:
    """Positions into `y` (each cell at least once) with rare classes repeated.

    Every class smaller than ceil(target * largest class) is brought to that size: its cells
    are repeated as whole copies, and the remainder is a seeded random draw without
    replacement (so no cell is repeated more than once beyond the others). Classes absent
    from `y` stay absent. The original positions come first, in order, then the extra copies
    per class, so a store reads them in runs. `target` 0 returns `arange(len(y))`.

    Why: with very rare cell types a batch seldom holds any, and class weights then turn
    those few cells into huge, noisy gradient steps; repetition spreads them over batches.
    Apply it to the training part only, never to validation or test cells.
    """
    y = np.asarray(y)
    if not 0 <= target <= 1:
        raise InputError(f"upsample target must be in [0, 1], got {target}")
    positions = np.arange(y.size)
    if target == 0 or y.size == 0:
        return positions
    rng = np.random.default_rng([seed, 7])
    classes, counts = np.unique(y, return_counts=True)
    goal = int(np.ceil(target * counts.max()))
    extra = []
    for label, count in zip(classes, counts, strict=True):
        if count >= goal:
            continue
        members = np.flatnonzero(y == label)
        whole, rest = divmod(goal - count, count)
        drawn = np.sort(rng.choice(members, size=rest, replace=False))
        extra.append(np.concatenate([np.tile(members, whole), drawn]))
    return np.concatenate([positions, *extra])


def sample_rows(n: int, max_cells: int, seed: int = 0) -> np.ndarray:
    """Sorted row numbers of a seeded sample of at most `max_cells` of `n` rows (all of them,
    in order, when there are no more)."""
    if n <= max_cells:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))
