"""Batches from an in-memory sparse matrix: the batch contract lives here.

A batch is a dict of tensors with fixed keys: `x` (cells x genes, float32, normalized),
`y` (class index, int64) when labels are known, and at prediction time `present` (one bool
per model gene: was it in the query?) for models that leave missing genes out. Rows are
densified per batch only, or not at all (`sparse=True`, a torch CSR tensor) for models that
declare `sparse_input`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

X_KEY = "x"
Y_KEY = "y"
PRESENT_KEY = "present"  # (genes,) bool: which model genes the query had; prediction only


def n_batches(n_cells: int, batch_size: int, world_size: int = 1) -> int:
    per_rank = -(-n_cells // world_size)
    return -(-per_rank // batch_size)


def iterate_batches(
    X: sp.csr_matrix,
    y: np.ndarray | None = None,
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    sparse: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batches; under DDP each rank takes every `world_size`-th cell of one permutation.

    Shards are padded by wrapping around so every rank runs the same number of steps (as
    torch's DistributedSampler does); with one process nothing is repeated.
    """
    n = X.shape[0]
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if world_size > 1:
        per_rank = -(-n // world_size)
        order = np.resize(order, per_rank * world_size)[rank::world_size]
    for start in range(0, order.size, batch_size):
        index = order[start : start + batch_size]
        rows = X[index]
        batch = {X_KEY: _torch_csr(rows) if sparse else torch.from_numpy(rows.toarray())}
        if y is not None:
            batch[Y_KEY] = torch.from_numpy(y[index])
        yield batch


def _torch_csr(rows: sp.csr_matrix) -> torch.Tensor:
    with warnings.catch_warnings():  # torch flags sparse CSR as beta; we use only matmul
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(rows.indptr.astype(np.int64)),
            torch.from_numpy(rows.indices.astype(np.int64)),
            torch.from_numpy(np.asarray(rows.data, dtype=np.float32)),
            size=rows.shape,
            check_invariants=False,  # scipy already guarantees a valid CSR
        )
