"""Size-factor normalization + log1p on sparse row chunks, fused with gene alignment.

Library size comes from all of a cell's genes in its own file (as scanpy and CellTypist do),
so a query's normalization does not depend on how many genes the model happens to share.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

from sclabel.data.genes import GeneAlignment
from sclabel.io.read import ValueKind, check_chunk


def to_csr(chunk) -> sp.csr_matrix:
    chunk = chunk if sp.issparse(chunk) else sp.csr_matrix(np.asarray(chunk))
    return sp.csr_matrix(chunk, dtype=np.float32)


def count_space(
    chunk, kind: ValueKind, target_sum: float, first_row: int | np.ndarray = 0, *, copy=True
):
    """Validate a raw chunk; return (a count-space CSR over its own genes, size factors).

    counts, normalized: the values, factors target_sum / library size over the cell's genes.
    log1p:  expm1 of the values (already normalized), factors 1.
    log1p_rescaled, log2: expm1 (2^x - 1) of the values, rescaled like counts.
    The store keeps exactly this, so it normalizes later as `log_normalize` does now.
    The result is a new matrix unless `copy=False` and the values are counts: then it may
    share the chunk's arrays, for callers that only read it (store building, tokenizing: a
    deep file's copy took a tenth of `sclabel tokenize`'s time).
    """
    chunk = to_csr(chunk)
    check_chunk(chunk, kind, first_row)
    raw = chunk.copy() if copy or kind != "counts" else chunk  # the caller's, unchanged
    if kind == "log2":  # log2(x+1) -> x
        np.exp2(raw.data, out=raw.data)
        raw.data -= 1
    elif kind.startswith("log1p"):
        np.expm1(raw.data, out=raw.data)
    if kind == "log1p":  # normalized already (to target_sum, as sclabel assumes)
        return raw, np.ones(raw.shape[0], np.float32)
    # counts, per-cell-normalized values, and log input whose rows sum to one total
    # (rescaled, e.g. from CPM): each row to target_sum
    totals = np.asarray(raw.sum(axis=1, dtype=np.float64)).ravel()
    return raw, (target_sum / totals).astype(np.float32)


@numba.njit(nogil=True, cache=True)
def _scale_rows(indptr, data, factors):  # pragma: no cover
    """data of row i *= factors[i], in place: no per-value copy of the factors (np.repeat
    would allocate one, which page-faults on every window the loader reads)."""
    for row in range(indptr.size - 1):
        factor = factors[row]
        for k in range(indptr[row], indptr[row + 1]):
            data[k] *= factor


def log_normalize(
    raw: sp.csr_matrix, factors: np.ndarray, alignment: GeneAlignment | None = None
) -> sp.csr_matrix:
    """log1p(row x factor), aligned to a model's genes in count space first (so duplicate
    genes sum as counts). Scales `raw` in place: pass a matrix this call may own."""
    _scale_rows(raw.indptr, raw.data, np.asarray(factors, np.float32))
    aligned = raw if alignment is None else alignment.apply(raw)
    np.log1p(aligned.data, out=aligned.data)
    return aligned


def log_normalize_within(
    raw: sp.csr_matrix, alignment: GeneAlignment | None, target_sum: float
) -> sp.csr_matrix:
    """log1p of rows scaled to `target_sum` over the model's genes only (scTab's recipe:
    the library size is the sum over the genes the model reads; an all-zero row stays 0)."""
    aligned = raw if alignment is None else alignment.apply(raw)
    totals = np.asarray(aligned.sum(axis=1, dtype=np.float64)).ravel()
    totals[totals == 0] = 1.0
    _scale_rows(aligned.indptr, aligned.data, (target_sum / totals).astype(np.float32))
    np.log1p(aligned.data, out=aligned.data)
    return aligned


def row_block(X, start: int, stop: int):
    """Rows start:stop; for an in-memory CSR a view without copying (count_space copies once)."""
    if isinstance(X, sp.csr_matrix | sp.csr_array):
        stop = min(stop, X.shape[0])
        lo, hi = X.indptr[start], X.indptr[stop]
        return sp.csr_matrix(
            (X.data[lo:hi], X.indices[lo:hi], X.indptr[start : stop + 1] - lo),
            shape=(stop - start, X.shape[1]),
            copy=False,
        )
    return X[start:stop]
