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
# batch size for scoring (no gradients): larger is faster, but from a store each dense batch
# buffer grows with it (2,048 x 20,000 genes is 164 MB, and the loader keeps five)
EVAL_BATCH = 2048


def n_batches(n_cells: int, batch_size: int, world_size: int = 1) -> int:
    """Steps per epoch on every rank (the largest shard decides)."""
    per_rank = -(-n_cells // world_size)
    return -(-per_rank // batch_size)


def plan_epoch(
    n: int,
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    block_size: int = 1,
) -> list[np.ndarray]:
    """This rank's batches for one epoch, as positions 0..n-1.

    Shuffling permutes blocks of `block_size` consecutive cells (1: every cell). Under DDP the
    order is cut into `world_size` slices that differ by at most one cell, and every rank
    splits its slice into the same number of nearly equal batches (at most `batch_size`):
    ranks stay in step and no cell is seen twice per epoch (torch's DistributedSampler
    repeats cells instead), unless a rank has fewer cells than steps.
    """
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        blocks = rng.permutation(-(-n // block_size))
        order = (blocks[:, None] * block_size + np.arange(block_size)).ravel()
        order = order[order < n]
    else:
        order = np.arange(n)
    shard = np.array_split(order, world_size)[rank]
    steps = n_batches(n, batch_size, world_size)
    if shard.size < steps:  # tiny data (fewer cells than ranks x steps): repeat a few cells
        shard = np.resize(shard if shard.size else order[:1], steps)
    return np.array_split(shard, steps) if steps else []


def iterate_batches(
    X,
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
    """Yield batches of X (an in-memory CSR or dense array, or `StoreRows` from a store)."""
    options = dict(batch_size=batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
    options.update(rank=rank, world_size=world_size)
    if hasattr(X, "batches"):  # StoreRows: block shuffle, reads in background threads
        yield from X.batches(y, sparse=sparse, **options)
        return
    for index in plan_epoch(X.shape[0], **options):
        rows = X[index]
        if isinstance(rows, np.ndarray):  # dense input (an embedding, principal components)
            batch = {X_KEY: torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))}
        else:
            batch = {X_KEY: torch_csr(rows) if sparse else torch.from_numpy(rows.toarray())}
        if y is not None:
            batch[Y_KEY] = torch.from_numpy(y[index])
        yield batch


def torch_csr(rows: sp.csr_matrix) -> torch.Tensor:
    with warnings.catch_warnings():  # torch flags sparse CSR as beta; we use only matmul
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(rows.indptr.astype(np.int64)),
            torch.from_numpy(rows.indices.astype(np.int64)),
            torch.from_numpy(np.asarray(rows.data, dtype=np.float32)),
            size=rows.shape,
            check_invariants=False,  # scipy already guarantees a valid CSR
        )


def cell_bar(total: int, desc: str, progress: bool = True, **options):
    """A progress bar on stderr counting cells (1.2k, 3.4M): how every long pass over cells
    shows itself, once it has run a second (short passes stay silent). Disabled by
    `progress=False` (the CLI's --quiet)."""
    from tqdm.auto import tqdm

    options = {"mininterval": 0.5, "smoothing": 0.1, "delay": 1.0, **options}
    return tqdm(total=total, desc=desc, unit="cell", unit_scale=True, disable=not progress,
                **options)  # fmt: skip


def counted(batches: Iterator[dict[str, torch.Tensor]], bar) -> Iterator[dict[str, torch.Tensor]]:
    """`batches` unchanged, ticking `bar` by each batch's cells once the consumer is done
    with it (so a slow model shows progress within a chunk)."""
    for batch in batches:
        yield batch
        bar.update(batch[X_KEY].shape[0])
