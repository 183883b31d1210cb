"""Build a store from AnnData files, SOMA experiments or generated cells, chunk by chunk.

Every source is aligned to one gene vocabulary, validated row by row, and written in count
space with its size factors (see `store.py`); a train/val/test split can be recorded as a
column so every run on the store uses the same one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from sclabel.data import genes
from sclabel.data.normalize import count_space
from sclabel.data.splits import make_split
from sclabel.errors import InputError
from sclabel.io.atomic import atomic_dir
from sclabel.io.read import detect_values
from sclabel.io.sources import AnnDataSource
from sclabel.store.format import MARKER, Store, StoreWriter


def build_store(
    sources: Sequence,
    out: str | Path,
    *,
    columns: Iterable[str] | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    vocabulary: genes.Vocabulary | None = None,
    target_sum: float = 1e4,
    min_gene_coverage: float = 0.5,
    chunk_size: int = 16_384,
    split_by: str | None = None,
    label_key: str | None = None,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    progress: bool = True,
    reorder: Callable[[sp.csr_matrix, np.ndarray, genes.GeneAlignment], sp.csr_matrix]
    | None = None,
    finish: Callable[[Path], dict] | None = None,
) -> Store:
    """Convert sources into one store over one gene vocabulary (the first source's unless
    given), chunk by chunk, so inputs may be bigger than memory.

    Sources: `.h5ad` paths (read backed), AnnData objects, or any object with `var`,
    `obs_columns` or `obs`, `n_cells`, `name` and `iter_chunks(chunk_size)` yielding (raw
    rows, obs) (a `SomaSource`, a generator). `columns`: obs columns to carry (default:
    those every source has). With `label_key` (and optionally `split_by` groups, e.g.
    donors), a train/val/test `split` column is recorded too.

    Hooks for a tokenized corpus (`sclabel.data.tokenize`): `reorder(rows, size_factor,
    alignment)` replaces `alignment.apply` on each count-space chunk, returning it over the
    store's genes with every row's genes in the order to keep (the store then records
    `rank_order` and does not sort them); `finish(folder)` writes extra files into the store
    folder before it appears and returns extra `store.json` entries.
    """
    from tqdm.auto import tqdm

    if not sources:
        raise InputError("no input files given")
    opened = [s if hasattr(s, "iter_chunks") else AnnDataSource(s, layer) for s in sources]
    available = [_obs_columns(s) for s in opened]
    if columns is None:
        columns = [c for c in available[0] if all(c in a for a in available)]
    columns = list(columns)
    for wanted in (label_key, split_by):
        if wanted is not None and wanted not in columns:
            columns.append(wanted)
    for source, names in zip(opened, available, strict=True):
        missing = [c for c in columns if c not in names]
        if missing:
            raise InputError(f"{source.name} lacks obs column(s) {missing}; have {names}")
    if vocabulary is None:
        vocabulary, gene_key = genes.Vocabulary.from_var(opened[0].var, gene_key)
    total = sum(s.n_cells for s in opened)
    bar = tqdm(total=total, desc="building store", unit="cell", disable=not progress)
    with atomic_dir(out, marker=MARKER, what="store") as folder:
        writer = StoreWriter(
            folder, vocabulary, target_sum=target_sum, rank_order=reorder is not None
        )
        try:
            for source in opened:
                _append_source(
                    writer, source, columns, gene_key, min_gene_coverage, chunk_size, bar, reorder
                )
        finally:
            bar.close()
            writer.close_files()
        extra: dict = {"gene_key": gene_key}
        if label_key is not None:
            labels, groups = writer.values(label_key), split_by and writer.values(split_by)
            labeled = labels.notna()
            split = make_split(
                labels[labeled],
                groups=groups[labeled] if split_by else None,
                fractions=split_fractions,
                seed=seed,
            )
            writer.add_column("split", split.reindex(labels.index))
            extra["split"] = {"label_key": label_key, "split_by": split_by, "seed": seed}
        if finish is not None:
            extra.update(finish(folder))
        writer.close(extra)
    return Store.open(out)


def _append_source(
    writer, source, columns, gene_key, min_gene_coverage, chunk_size, bar, reorder=None
):
    alignment = genes.align(
        source.var, writer.vocabulary, gene_key=gene_key, min_coverage=min_gene_coverage,
        what="store",
    )  # fmt: skip
    kind, start, done, writing = None, writer.n_cells, 0, None
    # chunk i is written on a thread while chunk i + 1 is read (another thread) and prepared
    with ThreadPoolExecutor(1, thread_name_prefix="sclabel-write") as write:
        for chunk, obs in _read_ahead(source.iter_chunks(chunk_size)):
            if kind is None:  # judged on the first chunk; each chunk is then checked against it
                kind = detect_values(chunk).kind
            # no copy: nothing below changes the rows (the writer sorts into new arrays)
            chunk, factor = count_space(chunk, kind, writer.target_sum, done, copy=False)
            rows = alignment.apply(chunk) if reorder is None else reorder(chunk, factor, alignment)
            if writing is not None:
                writing.result()  # one write at a time, in order; its error raised here
            writing = write.submit(writer.append, rows, factor, obs[columns])
            done += chunk.shape[0]
            bar.update(chunk.shape[0])
        if writing is not None:
            writing.result()
    if writer.n_cells - start != source.n_cells:
        raise InputError(f"{source.name}: expected {source.n_cells} cells, read fewer")
    writer.sources.append(
        {
            "source": source.name,
            "first_row": start,
            "n_cells": source.n_cells,
            "values": kind,
            "gene_coverage": alignment.coverage,
        }
    )


def _read_ahead(items: Iterable) -> Iterator:
    """`items`, each next one read on a thread while the caller works on the current one.

    h5py holds the GIL while it reads, but validating, ranking (numba) and writing release
    it, so reading chunk i + 1 overlaps the work on chunk i; one extra chunk is in memory.
    A failed read is raised here, in order."""
    end = object()
    with ThreadPoolExecutor(1, thread_name_prefix="sclabel-read-ahead") as pool:
        source = iter(items)
        pending = pool.submit(next, source, end)
        while (item := pending.result()) is not end:
            pending = pool.submit(next, source, end)
            yield item


def _obs_columns(source) -> list[str]:
    return [str(c) for c in getattr(source, "obs_columns", None) or source.obs.columns]
