"""Class weights for the loss."""

from __future__ import annotations

import numpy as np


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
