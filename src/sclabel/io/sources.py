"""Where cells come from: one `RowSource` protocol over AnnData, backed h5ad, store and SOMA.

Every consumer (training, prediction, explain, embed, store building, tokenizing) reads
cells through these classes, so each kind of input is handled in one place. A source
hands out rows in *count space* over its own genes, with each cell's size factor
(target_sum / library size over all of the cell's genes): raw counts as they are, log1p
input as expm1 of it with factor 1, a store's rows as stored. `sclabel.data.inputs` then
aligns them to a model's genes and normalizes them, the same way for every source.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.data.normalize import count_space, row_block
from sclabel.errors import InputError
from sclabel.io import read as readers
from sclabel.io.digest import name_digest, sha256_file

if TYPE_CHECKING:
    from sclabel.store.format import Store

CHUNK_VALUES = 2**21  # values (non-zeros) per chunk read from a file: 8 MB per array


@runtime_checkable
class RowSource(Protocol):
    """Cells a model can read. `count_rows` validates what it returns (finite, non-negative,
    no empty cell) and names the offending row by its number in the source."""

    name: str
    n_cells: int
    var: pd.DataFrame  # the source's genes, in column order

    def count_rows(self, rows: slice | np.ndarray, target_sum: float):
        """(count-space CSR over `var`, size factors) of rows start:stop or a sorted subset."""

    def cell_names(self) -> Iterator[str]:
        """Every cell name, in row order, read lazily."""

    def obs_names(self) -> pd.Index:
        """Every cell name, in row order, at once."""

    def fingerprint(self) -> dict:
        """What identifies these cells (for resuming work on them): names, shape, file."""


class AnnDataSource:
    """An AnnData in memory or backed (`.h5ad` opened with backed="r"), X or a layer/raw."""

    def __init__(
        self, source: str | Path | ad.AnnData, layer: str | None = None, values: str | None = None
    ):
        if isinstance(source, ad.AnnData):
            readers.check_cells(source, genes=False)  # an embedding alone is input too
            self.adata = source
            path = source.filename if source.isbacked else None
            self.name = str(path) if path else "<AnnData>"
        else:
            self.adata, self.name = readers.read(source, backed=True), str(source)
        self.layer = layer
        self.declared = values  # --input: what the values are, instead of detecting it
        self.X, self.var = readers.matrix(self.adata, layer)
        self.obs = self.adata.obs
        self.n_cells = self.adata.n_obs
        self._kind = None

    @property
    def values(self) -> readers.ValueReport:
        """What X holds (raw counts or log1p), judged once from a sample of rows."""
        if self._kind is None:
            if self.X is None:
                raise InputError(f"{self.name} has no expression matrix (X is empty)")
            self._kind = readers.detect_values(self.X, declared=self.declared)
        return self._kind

    def count_rows(self, rows: slice | np.ndarray, target_sum: float, *, copy: bool = True):
        if isinstance(rows, slice):
            chunk, first = row_block(self.X, rows.start, rows.stop), rows.start
        else:
            chunk, first = self.X[rows], rows
        return count_space(chunk, self.values.kind, target_sum, first, copy=copy)

    def cell_names(self) -> Iterator[str]:
        return iter(self.adata.obs_names)

    def obs_names(self) -> pd.Index:
        return pd.Index(self.adata.obs_names)

    def fingerprint(self) -> dict:
        names = self.adata.obs_names.to_numpy(dtype=object).astype(str)
        genes = 0 if self.X is None else int(self.X.shape[1])
        info = {"cells": self.n_cells, "genes": genes, "names": name_digest(names)}
        info["layer"] = self.layer
        if self.adata.isbacked:
            path = Path(self.adata.filename).resolve()
            stat = path.stat()
            info.update(file=str(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        return info

    def iter_chunks(self, chunk_size: int):
        """Raw row chunks (and their obs) of at most `chunk_size` cells and, after the first,
        about CHUNK_VALUES stored values (non-zeros; every value of a dense matrix), sized by
        the last one's density. Why: an array over ~32 MB is a fresh mmap each time, and on
        deep cells (CellBench, 5,364 genes a cell: 2,048 cells make 44 MB arrays) page faults
        took a third of `sclabel tokenize`'s CPU time; 512-cell chunks cut that fourfold."""
        start, rows = 0, min(chunk_size, 256)
        while start < self.n_cells:
            stop = min(start + rows, self.n_cells)
            chunk = self.X[start:stop]
            yield chunk, self.obs.iloc[start:stop]
            values = chunk.nnz if sp.issparse(chunk) else np.size(chunk)
            per_cell = max(values / (stop - start), 1.0)
            rows = int(min(chunk_size, max(16, CHUNK_VALUES // per_cell)))
            start = stop


class StoreSource:
    """A store's cells (`sclabel store`): rows are kept in count space with size factors,
    so they are only rescaled to the target sum asked for."""

    def __init__(self, store: Store):
        self.store = store
        self.name = f"store {store.path.resolve()}"
        self.n_cells = store.n_cells
        vocabulary = store.vocabulary
        self.var = pd.DataFrame(index=pd.Index(vocabulary.ids))
        if vocabulary.symbols is not None:
            self.var["gene_symbols"] = list(vocabulary.symbols)

    @property
    def values(self) -> readers.ValueReport:
        kinds = sorted({s["values"] for s in self.store.meta["sources"]})
        kind = kinds[0] if len(kinds) == 1 else "mixed"
        return readers.ValueReport(kind, float("nan"), f"a store of {' and '.join(kinds)}")

    def count_rows(self, rows: slice | np.ndarray, target_sum: float, *, copy: bool = True):
        ratio = target_sum / self.store.meta["target_sum"]
        if isinstance(rows, slice):
            raw = self.store.read_block(rows.start, min(rows.stop, self.n_cells))
        else:
            raw = self.store.read_rows(rows)
        return raw, self.store.size_factor[rows] * ratio

    def cell_names(self) -> Iterator[str]:
        with open(self.store.path / "obs_names.txt", encoding="utf-8") as handle:
            for line in handle:
                yield line.rstrip("\n")

    def obs_names(self) -> pd.Index:
        return self.store.obs_names()

    def fingerprint(self) -> dict:
        names = self.store.path / "obs_names.txt"
        stat = (self.store.path / "store.json").stat()
        return {
            "cells": self.n_cells,
            "genes": len(self.var),
            "file": str(self.store.path.resolve()),
            "names": sha256_file(names),
            "mtime_ns": stat.st_mtime_ns,
        }


def as_source(data, layer: str | None = None, values: str | None = None) -> RowSource:
    """The `RowSource` for what a user passed: AnnData, a store, a SOMA selection or a path."""
    from sclabel.store.format import Store

    if isinstance(data, Store):
        if layer is not None:
            raise InputError("a store has one matrix: drop --layer")
        return StoreSource(data)
    if isinstance(data, RowSource):
        return data
    return AnnDataSource(data, layer, values)
