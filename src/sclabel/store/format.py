"""An on-disk training store for data bigger than memory: sparse rows as flat binary arrays.

A store is a folder:

    store.json          format, version, shapes, dtypes, gene vocabulary, obs columns, sources
    indptr.bin          int64 (n_cells + 1)    row pointers, CSR
    indices.bin         int32 (nnz)            gene positions in the vocabulary, unique per row
    data.bin            float32 (nnz)          count-space values (raw counts, or expm1 of log1p)
    size_factor.bin     float32 (n_cells)      target_sum / library size (1 for log1p input)
    obs/<i>.npy         one obs column each: int32 category codes (-1 missing) or numbers
    obs_names.txt       one cell name per line

Why flat binary files and not zarr, parquet or h5ad: a block of contiguous cells is one
`pread` per array, which needs no decompression, no Python per chunk and no memory map (so
reading a 30 GB store never shows up as resident memory). benchmarks/store_loader.py
measures it against backed h5ad and the field's loaders. Values stay in count space with the
library size kept aside, so the loader normalizes on the fly exactly as `InputSpec` does
(library size over all of a cell's genes in its source file, then log1p).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.data import genes
from sclabel.errors import InputError
from sclabel.io import read as io

log = logging.getLogger("sclabel")
FORMAT = "sclabel-store"
VERSION = 1
MARKER = "store.json"
ARRAYS = {"indptr": np.int64, "indices": np.int32, "data": np.float32, "size_factor": np.float32}


def is_store(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


@numba.njit(nogil=True, cache=True)
def _unique_per_row(indptr, indices, n_genes) -> bool:  # pragma: no cover
    """True when no row repeats a gene: one pass, no sorting (rows keep their order)."""
    last = np.full(n_genes, -1, np.int64)
    for row in range(indptr.size - 1):
        for k in range(indptr[row], indptr[row + 1]):
            if last[indices[k]] == row:
                return False
            last[indices[k]] = row
    return True


@numba.njit(nogil=True, cache=True)
def _sort_rows(indptr, indices, data):  # pragma: no cover
    """(indptr, indices, data) of the rows with entries ordered by gene and repeated genes
    summed in the order they appear. Why not scipy's sum_duplicates: rows from R-converted
    files often come unsorted, and its per-row std::sort took 4.2 of the 5.8 s a CellBench
    store build needed (~20 ns per non-zero); this is a stable radix sort per row, 8 bits
    of the gene a pass, with each entry's position in the low half of a uint64."""
    width, top = 1, 0
    for r in range(indptr.size - 1):
        width = max(width, indptr[r + 1] - indptr[r])
    for k in range(indices.size):
        top = max(top, indices[k])
    passes = 1
    while top >> (8 * passes):
        passes += 1
    keys, spare = np.empty(width, np.uint64), np.empty(width, np.uint64)
    hist = np.empty(256, np.int64)
    out_indptr = np.zeros(indptr.size, np.int64)
    out_indices, out_data = np.empty(indices.size, np.int32), np.empty(data.size, data.dtype)
    at = 0
    for r in range(indptr.size - 1):
        lo, m = indptr[r], indptr[r + 1] - indptr[r]
        for i in range(m):
            keys[i] = (np.uint64(indices[lo + i]) << np.uint64(32)) | np.uint64(i)
        for p in range(passes):
            shift = np.uint64(32 + 8 * p)
            hist[:] = 0
            for i in range(m):
                hist[(keys[i] >> shift) & np.uint64(255)] += 1
            total = 0
            for d in range(256):
                hist[d], total = total, total + hist[d]
            for i in range(m):
                d = (keys[i] >> shift) & np.uint64(255)
                spare[hist[d]] = keys[i]
                hist[d] += 1
            keys, spare = spare, keys
        previous = -1
        for i in range(m):
            gene = np.int64(keys[i] >> np.uint64(32))
            value = data[lo + np.int64(keys[i] & np.uint64(0xFFFFFFFF))]
            if gene == previous:
                out_data[at - 1] += value
            else:
                out_indices[at], out_data[at], at, previous = gene, value, at + 1, gene
        out_indptr[r + 1] = at
    return out_indptr, out_indices[:at], out_data[:at]


def canonical_rows(X: sp.csr_matrix) -> sp.csr_matrix:
    """X with each row's genes sorted and unique (the loader relies on it); X itself when
    it already is."""
    if X.has_canonical_format:
        return X
    indptr, indices, data = _sort_rows(X.indptr, X.indices, X.data)
    return sp.csr_matrix((data, indices, indptr), shape=X.shape)


class StoreWriter:
    """Append row chunks (already aligned to the store's genes) to a store being built.

    Files are written under a temporary name and the folder appears only on `close()`, so a
    crash or bad input leaves nothing behind. obs columns are kept in memory as codes (4 bytes
    per cell per column) and written at the end.

    `rank_order=True` keeps each row's genes in the order given (a tokenized corpus stores
    them highest rank first) instead of sorting them; rows must then not repeat a gene.
    """

    def __init__(
        self,
        folder: Path,
        vocabulary: genes.Vocabulary,
        *,
        target_sum: float,
        rank_order: bool = False,
    ):
        self.folder = folder
        self.vocabulary = vocabulary
        self.target_sum = float(target_sum)
        self.rank_order = rank_order
        self.files = {name: open(folder / f"{name}.bin", "wb") for name in ARRAYS}  # noqa: SIM115
        self.files["indptr"].write(np.zeros(1, np.int64).tobytes())
        self.names = open(folder / "obs_names.txt", "w", encoding="utf-8")  # noqa: SIM115
        self.n_cells = 0
        self.nnz = 0
        self.columns: dict[str, list] = {}
        self.categories: dict[str, dict[str, int]] = {}
        self.sources: list[dict] = []
        self.name_hashes: list[np.ndarray] = []  # 8 bytes per cell, to find repeated names

    def append(self, X: sp.csr_matrix, size_factor: np.ndarray, obs: pd.DataFrame) -> None:
        if X.shape[1] != len(self.vocabulary.ids) or X.shape[0] != len(obs):
            raise ValueError("chunk shape does not match the store's genes or obs")
        X = sp.csr_matrix(X, dtype=np.float32)
        if not self.rank_order:
            X = canonical_rows(X)
        elif not _unique_per_row(X.indptr, X.indices, X.shape[1]):
            raise ValueError("a rank-ordered chunk repeats a gene within a row")
        names = obs.index.astype(str)
        if names.str.contains("\n").any():
            raise InputError("cell names must not contain newlines")
        self.files["indptr"].write((X.indptr[1:].astype(np.int64) + self.nnz).tobytes())
        self.files["indices"].write(np.ascontiguousarray(X.indices, np.int32))  # no copy
        self.files["data"].write(np.ascontiguousarray(X.data))
        self.files["size_factor"].write(np.asarray(size_factor, np.float32).tobytes())
        self.names.write("".join(f"{name}\n" for name in names))
        self.name_hashes.append(pd.util.hash_array(names.to_numpy(dtype=object)))
        for column in obs.columns:
            self._append_column(str(column), obs[column])
        self.n_cells += X.shape[0]
        self.nnz += X.nnz

    def _append_column(self, name: str, values: pd.Series) -> None:
        if name not in self.columns:
            if self.n_cells:
                raise InputError(f"obs column {name!r} is missing from an earlier source")
            self.columns[name] = []
            numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(
                values
            )
            if not numeric:
                self.categories[name] = {}
        if name in self.categories:
            lookup = self.categories[name]
            strings = io.as_strings(values)
            for value in pd.unique(strings.dropna()):
                lookup.setdefault(value, len(lookup))
            codes = strings.map(lookup).fillna(-1).to_numpy(np.int32)
            self.columns[name].append(codes)
        else:
            self.columns[name].append(values.to_numpy(np.float64))

    def values(self, name: str) -> pd.Series:
        """A column written so far, as strings (categorical) or numbers."""
        values = np.concatenate(self.columns[name])
        if name not in self.categories:
            return pd.Series(values)
        categories = np.asarray([*self.categories[name], None], dtype=object)
        return pd.Series(categories[values])  # code -1 (missing) picks the trailing None

    def add_column(self, name: str, values: pd.Series) -> None:
        """A whole column computed after the rows were written (e.g. the split)."""
        self.columns.pop(name, None)
        self.categories.pop(name, None)
        n_cells, self.n_cells = self.n_cells, 0
        self._append_column(name, values)
        self.n_cells = n_cells

    def close_files(self) -> None:
        for handle in [*self.files.values(), self.names]:
            handle.close()

    def close(self, extra: dict | None = None) -> None:
        self.close_files()
        (self.folder / "obs").mkdir()
        hashes = np.concatenate(self.name_hashes) if self.name_hashes else np.zeros(0)
        unique_names = np.unique(hashes).size == hashes.size
        if not unique_names:  # e.g. 10x barcodes repeat across samples; rows stay the key
            log.warning("cell names repeat across sources; outputs carry the store row too")
        columns = {}
        for i, (name, parts) in enumerate(self.columns.items()):
            np.save(self.folder / "obs" / f"{i}.npy", np.concatenate(parts))
            categories = self.categories.get(name)
            columns[name] = {"file": f"obs/{i}.npy", "categories": categories and list(categories)}
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "n_cells": self.n_cells,
            "n_genes": len(self.vocabulary.ids),
            "nnz": self.nnz,
            "dtypes": {name: np.dtype(t).str for name, t in ARRAYS.items()},
            "target_sum": self.target_sum,
            "genes": self.vocabulary.to_dict(),
            "columns": columns,
            "sources": self.sources,
            "unique_names": unique_names,
            **({"rank_order": True} if self.rank_order else {}),
            **(extra or {}),
        }
        (self.folder / MARKER).write_text(json.dumps(meta, indent=1))


class ReadBuffer:
    """Reused destination arrays for `Store.read_runs`.

    A fresh 100 MB array page-faults on every first touch inside the read; reading into
    memory touched before measured 3x faster (5 GB/s against 1.4-3.3 GB/s from the page
    cache). Grows when a read needs more."""

    def __init__(self) -> None:
        self.indices = np.empty(0, np.int32)
        self.data = np.empty(0, np.float32)

    def take(self, nnz: int) -> tuple[np.ndarray, np.ndarray]:
        if self.data.size < nnz:
            size = nnz + nnz // 8 if self.data.size else nnz  # headroom once sizes vary
            self.indices = np.empty(size, np.int32)
            self.data = np.empty(size, np.float32)
        return self.indices[:nnz], self.data[:nnz]


@dataclass
class Store:
    """A read-only store; `read_block`/`read_rows` return raw count-space rows."""

    path: Path
    meta: dict
    indptr: np.ndarray
    _files: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> Store:
        path = Path(path)
        if not is_store(path):
            msg = f"{path} is not a sclabel store (no {MARKER}); build one with `sclabel store`"
            raise InputError(msg)
        meta = json.loads((path / MARKER).read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            msg = (
                f"{path}: store format {meta.get('format')} v{meta.get('version')} is not "
                f"{FORMAT} v{VERSION}; rebuild it with this sclabel version"
            )
            raise InputError(msg)
        indptr = np.fromfile(path / "indptr.bin", dtype=np.int64)
        if indptr.size != meta["n_cells"] + 1 or indptr[-1] != meta["nnz"]:
            raise InputError(f"{path} is incomplete or damaged (row pointers do not match)")
        for name in ("indices", "data"):
            size = (path / f"{name}.bin").stat().st_size
            if size != meta["nnz"] * np.dtype(ARRAYS[name]).itemsize:
                raise InputError(f"{path}/{name}.bin has the wrong size; rebuild the store")
        return cls(path, meta, indptr)

    @property
    def n_cells(self) -> int:
        return int(self.meta["n_cells"])

    def size_gb(self) -> float:
        """Bytes on disk of every file of the store, in GB."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file()) / 1e9

    @property
    def vocabulary(self) -> genes.Vocabulary:
        return genes.Vocabulary.from_dict(self.meta["genes"])

    @property
    def columns(self) -> list[str]:
        return list(self.meta["columns"])

    def column(self, name: str) -> pd.Series:
        """One obs column for every cell: categorical (strings) or numeric."""
        if name not in self.meta["columns"]:
            msg = f"column {name!r} is not in the store; available: {self.columns}"
            raise InputError(msg)
        info = self.meta["columns"][name]
        values = np.load(self.path / info["file"], allow_pickle=False)
        if info["categories"] is None:
            return pd.Series(values, name=name)
        return pd.Series(
            pd.Categorical.from_codes(values, categories=info["categories"]), name=name
        )

    def obs_names(self) -> pd.Index:
        with open(self.path / "obs_names.txt", encoding="utf-8") as handle:
            return pd.Index(handle.read().splitlines(), name="cell")

    @functools.cached_property
    def size_factor(self) -> np.ndarray:
        """target_sum / library size per cell (1 for log1p input); read once per store."""
        return np.fromfile(self.path / "size_factor.bin", dtype=np.float32)

    def read_block(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows start:stop as a CSR of raw count-space values: one read per array."""
        window, _ = self.read_runs(np.arange(start, stop))
        return window

    def read_rows(self, rows: np.ndarray) -> sp.csr_matrix:
        """Rows in the given (any) order, as a CSR of raw count-space values. Each row keeps
        its stored gene order (row indexing copies indices as they are), which a rank-ordered
        store relies on."""
        rows = np.asarray(rows, dtype=np.int64)
        unique, inverse = np.unique(rows, return_inverse=True)
        window, local = self.read_runs(unique)
        return window[local[inverse]]

    def read_runs(self, rows: np.ndarray, *, max_gap: int = 64, into: ReadBuffer | None = None):
        """Read sorted unique `rows`, each run of nearby rows with one contiguous read.

        Returns the CSR of the rows read, which include the gaps of up to `max_gap` rows
        between runs (a few cells too many cost less than another system call), and each
        requested row's position in it. With `into`, the CSR's values live in that reused
        buffer and are overwritten by its next read.
        """
        n_genes = int(self.meta["n_genes"])
        if rows.size == 0:
            return sp.csr_matrix((0, n_genes), dtype=np.float32), np.zeros(0, np.int64)
        breaks = np.flatnonzero(np.diff(rows) > max_gap) + 1
        first = rows[np.r_[0, breaks]]
        last = rows[np.r_[breaks - 1, rows.size - 1]] + 1
        lo, hi = self.indptr[first], self.indptr[last]
        nnz = np.r_[0, np.cumsum(hi - lo)]
        indices, data = (into or ReadBuffer()).take(int(nnz[-1]))
        for i in range(first.size):
            self._pread("indices", indices[nnz[i] : nnz[i + 1]], int(lo[i]))
            self._pread("data", data[nnz[i] : nnz[i + 1]], int(lo[i]))
        pieces = [
            self.indptr[a:b] - start + offset
            for a, b, start, offset in zip(first, last, lo, nnz, strict=False)
        ]
        indptr = np.concatenate([*pieces, nnz[-1:]])
        window = sp.csr_matrix((data, indices, indptr), shape=(indptr.size - 1, n_genes))
        row_offsets = np.r_[0, np.cumsum(last - first)[:-1]]
        run_of = np.searchsorted(first, rows, side="right") - 1
        return window, row_offsets[run_of] + rows - first[run_of]

    def _pread(self, name: str, out: np.ndarray, start: int) -> None:
        """Fill `out` from item `start` of an array file by positional reads. Not a memory
        map: the pages read stay in the page cache and do not count as this process's memory,
        and one file descriptor serves every thread."""
        if name not in self._files:
            self._files[name] = os.open(self.path / f"{name}.bin", os.O_RDONLY)
        view = memoryview(out).cast("B")
        offset = start * out.itemsize
        done = 0
        while done < view.nbytes:
            n = os.preadv(self._files[name], [view[done:]], offset + done)
            if n == 0:
                raise InputError(f"{self.path}/{name}.bin ended early; rebuild the store")
            done += n

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def __del__(self) -> None:
        self.close()
