"""A tokenized corpus: cells written as a rank-ordered store, and read back as token rows.

`tokenize` writes each cell's expressed genes highest rank first (see `ranking.py`) into a
store over the tokenizer's genes, with the tokenizer saved beside it; pretraining reads it
with `token_rows`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.data import genes as gene_ids
from sclabel.errors import InputError
from sclabel.foundation.ranking import rank_counts
from sclabel.foundation.vocabulary import FORMAT, VERSION, GeneTokenizer

if TYPE_CHECKING:
    from sclabel.store.format import Store

PSEUDO_KEY = "_tokenizer_gene"  # the var column tokenize hands build_store: gene id or ""


def tokenize(sources, out: str | Path, tokenizer: GeneTokenizer, *,
             columns: list[str] | None = None, layer: str | None = None,
             gene_key: str | None = None, chunk_size: int = 2048, truncate: bool = False,
             threads: int | None = None, progress: bool = True) -> Store:  # fmt: skip
    """Write `sources` (.h5ad paths read backed, AnnData) as a rank-ordered store (returned):
    its genes are the tokenizer's (column i has token gene_tokens[i]); a row holds the cell's
    genes highest rank first with raw counts, and the size factor target_sum / total over
    all of the cell's genes in its file (Geneformer's n_counts); obs `columns` as in
    `build_store`. Full rows unless `truncate` (then max_len). The folder appears when done.
    Chunks of at most ~2,000 cells (and ~2M non-zeros, see `AnnDataSource`) keep each
    temporary array small enough for malloc to reuse (with 8,192 droplet cells the kernel
    spent as long in page faults as in ranking)."""
    from sclabel.io.sources import AnnDataSource
    from sclabel.store.build import build_store

    if not sources:
        raise InputError("no input files given")
    opened = [
        copy.copy(s) if hasattr(s, "iter_chunks") else AnnDataSource(s, layer) for s in sources
    ]
    genes = np.asarray([*tokenizer.genes, ""], dtype=object)
    for source in opened:  # build_store aligns on PSEUDO_KEY: exactly `positions`' mapping
        ids = genes[tokenizer.positions(source.var, gene_key)]  # -1 picks ""
        source.var = pd.DataFrame({PSEUDO_KEY: ids}, index=source.var.index)
    token, median = tokenizer.gene_tokens, tokenizer.medians

    def reorder(chunk: sp.csr_matrix, factor: np.ndarray, alignment) -> sp.csr_matrix:
        mapping = alignment.mapping  # input gene -> store column, at most one
        target = np.full(mapping.shape[0], -1, np.int32)
        has = np.diff(mapping.indptr) > 0
        target[has] = mapping.indices[mapping.indptr[:-1][has]]
        limit = tokenizer.max_len if truncate else None
        ranked = rank_counts(chunk, factor, np.where(has, token[target], -1), median[target], limit,
                       threads, relabel=target)  # fmt: skip
        indptr = ranked[0].astype(np.int32) if ranked[0][-1] < 2**31 else ranked[0]
        return sp.csr_matrix((ranked[2], ranked[1], indptr), (chunk.shape[0], mapping.shape[1]))

    def finish(folder: Path) -> dict:
        files = tokenizer.save(folder)
        info = {"format": FORMAT, "version": VERSION, "files": files, "truncated": truncate}
        return {"tokenizer": info | {"max_len": tokenizer.max_len}, "gene_key": gene_key}

    return build_store(opened, out, columns=columns, gene_key=PSEUDO_KEY,
                       vocabulary=gene_ids.Vocabulary(tokenizer.genes),
                       target_sum=tokenizer.target_sum, min_gene_coverage=0.0,
                       chunk_size=chunk_size, progress=progress, reorder=reorder,
                       finish=finish)  # fmt: skip


def token_rows(
    store: Store, rows, max_len: int | None = None, *, tokenizer: GeneTokenizer | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of a tokenized store in rank order, the first `max_len` (default the
    tokenizer's) genes each: tokens (n, L) int64 padded with 0, counts (n, L) float32,
    lengths (n,) int64 and size factors (n,) float32."""
    if not store.meta.get("rank_order"):
        raise InputError(f"{store.path} is not a tokenized corpus; make one with tokenize()")
    tokenizer = tokenizer or GeneTokenizer.load(store.path)
    if tuple(store.vocabulary.ids) != tokenizer.genes:
        raise InputError(f"{store.path}: its genes are not the tokenizer's; re-tokenize")
    rows = np.asarray(rows, np.int64)
    matrix = store.read_rows(rows)  # row indexing keeps each row's stored order
    lengths = np.minimum(np.diff(matrix.indptr), max_len or tokenizer.max_len)
    present = np.arange(lengths.max(initial=0))[None, :] < lengths[:, None]
    at = np.where(present, matrix.indptr[:-1, None] + np.arange(present.shape[1]), 0)
    tokens = np.where(present, tokenizer.gene_tokens[matrix.indices[at]], 0)
    counts = np.where(present, matrix.data[at], 0).astype(np.float32)
    return tokens, counts, lengths, store.size_factor[rows]
