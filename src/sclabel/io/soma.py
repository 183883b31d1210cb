"""Read cells from a TileDB-SOMA experiment (a local path or a URI), a chunk at a time.

This is how the CELLxGENE census is served: an obs value filter picks the cells and X is
read one chunk of cells at a time, so a selection larger than memory can still be streamed.
`tiledbsoma` is an optional dependency, imported only when a SOMA experiment is opened.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.errors import InputError

_REMOTE = ("tiledb://", "s3://", "gs://", "gcs://", "az://", "azure://")
_FILTER_EXAMPLE = "tissue == 'blood' and is_primary_data == True"
_VAR_KEYS = ("feature_id", "feature_name", "var_id")  # census names first, then from_anndata's


def _tiledbsoma():
    try:
        import tiledbsoma
    except ImportError as err:
        msg = "reading a SOMA experiment needs tiledbsoma; pip install 'sclabel[soma]'"
        raise InputError(msg) from err
    return tiledbsoma


def _first_line(err: BaseException) -> str:
    """tiledbsoma errors can carry a C++ traceback; the first line says what went wrong."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def is_soma(path_or_uri: str | PathLike) -> bool:
    """Whether `path_or_uri` should be read with `open_soma` rather than `io.read`.

    Remote URIs are taken on trust (checking would mean a network round trip); a local
    directory must be a TileDB group, and only then is tiledbsoma imported to check that the
    group is an Experiment.
    """
    text = str(path_or_uri)
    if text.lower().startswith(_REMOTE):
        return True
    path = Path(text.removeprefix("file://"))
    if not ((path / "__tiledb_group.tdb").is_file() or (path / "__group").is_dir()):
        return False
    try:
        import tiledbsoma
    except ImportError:
        return True  # a TileDB group: let open_soma say how to install tiledbsoma
    return tiledbsoma.Experiment.exists(str(path))


def open_soma(
    uri: str | PathLike,
    *,
    measurement: str = "RNA",
    layer: str | None = None,
    obs_filter: str | None = None,
    obs_columns: Sequence[str] | None = None,
    var_key: str | None = None,
) -> SomaSource:
    """Open the cells of a SOMA experiment that pass `obs_filter`, e.g. `"tissue == 'blood'"`.

    obs and var are read now (they are small next to X) so bad input fails here, before any
    training starts; X is read later, per chunk, by `SomaSource.iter_chunks`. Use the result
    as a context manager so the experiment is closed.
    """
    soma = _tiledbsoma()
    uri = str(uri)
    try:
        experiment = soma.Experiment.open(uri)
    except (soma.SOMAError, RuntimeError) as err:
        what = "not found" if isinstance(err, soma.DoesNotExistError) else _first_line(err)
        if Path(uri).is_file():
            what = "a file; read .h5ad and other files with sclabel.read"
        msg = (
            f"could not open SOMA experiment {uri} ({what}); check that the path or URI exists, "
            "is reachable and holds a SOMA experiment (e.g. one written by tiledbsoma.io.from_h5ad)"
        )
        raise InputError(msg) from err
    try:
        return SomaSource(experiment, measurement, layer, obs_filter, obs_columns, var_key)
    except BaseException:
        experiment.close()
        raise


class SomaSource:
    """The selected cells of one SOMA measurement: `obs`, `var`, and X streamed by chunk.

    Attributes
    ----------
    obs : pandas.DataFrame
        The selected cells in read order, indexed by `obs_id` (or soma_joinid as str).
    var : pandas.DataFrame
        All genes of the measurement, indexed by `var_key` as str.
    """

    def __init__(self, experiment, measurement, layer, obs_filter, obs_columns, var_key):
        self._soma = _tiledbsoma()
        self._experiment = experiment
        self.uri = experiment.uri
        self.name = f"{self.uri} [{obs_filter}]" if obs_filter else str(self.uri)
        ms, self._X = self._x_layer(measurement, layer)
        self.var, self._var_ids = _read_var(ms, var_key)
        self.obs, self._obs_ids = self._read_obs(measurement, obs_filter, obs_columns)
        self._values = self._var_indexer = None

    @property
    def n_cells(self) -> int:
        return len(self.obs)

    def _x_layer(self, measurement: str, layer: str | None):
        available = sorted(self._experiment.ms)
        if measurement not in available:
            raise InputError(f"measurement {measurement!r} not found; available: {available}")
        ms = self._experiment.ms[measurement]
        layers = sorted(ms.X) if "X" in ms else []
        if layer is None:  # raw counts first; "data" is what tiledbsoma.io.from_anndata writes
            preferred = [name for name in ("raw", "counts", "data") if name in layers]
            layer = preferred[0] if preferred else (layers[0] if len(layers) == 1 else None)
            if layer is None:
                msg = f"measurement {measurement!r} has X layers {layers}; choose one with --layer"
                raise InputError(msg)
        self.layer = layer
        if layer not in layers:
            msg = f"X layer {layer!r} not in measurement {measurement!r}; available: {layers}"
            raise InputError(msg)
        if not isinstance(ms.X[layer], self._soma.SparseNDArray):
            raise InputError(f"X layer {layer!r} is dense; only sparse X layers can be read")
        return ms, ms.X[layer]

    def _read_obs(self, measurement, obs_filter, obs_columns):
        available = [c for c in self._experiment.obs.schema.names if c != "soma_joinid"]
        missing = [c for c in obs_columns or () if c not in [*available, "soma_joinid"]]
        if missing:
            raise InputError(f"obs columns {missing} not found; available: {available}")
        columns = list(obs_columns if obs_columns is not None else available)
        if obs_columns is None and "obs_id" in available:
            columns.remove("obs_id")  # it becomes the index
        key = ["obs_id"] if "obs_id" in available else []
        query = self._experiment.axis_query(
            measurement, obs_query=self._soma.AxisQuery(value_filter=obs_filter)
        )
        names = list(dict.fromkeys(["soma_joinid", *key, *columns]))
        try:
            frame = query.obs(column_names=names, result_order="row-major").concat().to_pandas()
        except self._soma.SOMAError as err:
            if obs_filter is None:
                raise
            msg = (
                f"invalid obs filter {obs_filter!r} ({_first_line(err)}); write it like "
                f"{_FILTER_EXAMPLE!r} (strings quoted) using obs columns {available}"
            )
            raise InputError(msg) from err
        if frame.empty:
            msg = f"obs filter {obs_filter!r} selects no cells; check the values' spelling and case"
            raise InputError(msg if obs_filter else f"{self.uri} holds no cells")
        ids = frame["soma_joinid"].to_numpy(np.int64)
        index = frame[key[0] if key else "soma_joinid"].astype(str)
        obs = frame[columns].set_axis(pd.Index(index.to_numpy(), dtype=object))
        return obs, ids  # frame[columns] also drops columns the filter read on its own

    def iter_chunks(self, chunk_size: int = 65536) -> Iterator[tuple[sp.csr_matrix, pd.DataFrame]]:
        """Yield (CSR float32 cells x all var genes, obs slice) for `chunk_size` cells at a time.

        Only one chunk of X is in memory at once, so any selection can be streamed.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        var_index = self._soma.IntIndexer(self._var_ids)
        for start in range(0, self.n_cells, chunk_size):
            ids = self._obs_ids[start : start + chunk_size]
            yield self._read_rows(ids, var_index), self.obs.iloc[start : start + chunk_size]

    def _read_rows(self, ids: np.ndarray, var_index) -> sp.csr_matrix:
        table = self._X.read((ids, slice(None))).tables().concat()
        rows = self._soma.IntIndexer(ids).get_indexer(table["soma_dim_0"])
        cols = var_index.get_indexer(table["soma_dim_1"])
        data = table["soma_data"].to_numpy().astype(np.float32, copy=False)
        X = sp.csr_matrix((data, (rows, cols)), shape=(len(ids), len(self.var)))
        X.sum_duplicates()  # also sorts the indices, which some consumers expect
        return X

    # the RowSource protocol (sclabel.io.sources): predict and train read a SOMA selection
    # chunk by chunk like any other source

    @property
    def values(self):
        """Raw counts or log1p, judged once from the first cells."""
        if self._values is None:
            from sclabel.io.read import detect_values

            self._values = detect_values(self._read_rows(self._obs_ids[:2000], self._indexer()))
        return self._values

    def count_rows(self, rows, target_sum: float, *, copy: bool = True):
        from sclabel.data.normalize import count_space

        X = self._read_rows(self._obs_ids[rows], self._indexer())
        first = rows.start if isinstance(rows, slice) else rows
        return count_space(X, self.values.kind, target_sum, first, copy=copy)

    def cell_names(self):
        return iter(self.obs.index)

    def obs_names(self) -> pd.Index:
        return pd.Index(self.obs.index)

    def fingerprint(self) -> dict:
        from sclabel.io.digest import name_digest

        names = self.obs.index.to_numpy(dtype=object).astype(str)
        return {"cells": self.n_cells, "genes": len(self.var), "file": self.name,
                "names": name_digest(names)}  # fmt: skip

    def _indexer(self):
        if self._var_indexer is None:
            self._var_indexer = self._soma.IntIndexer(self._var_ids)
        return self._var_indexer

    def to_anndata(self) -> ad.AnnData:
        """The whole selection in memory; meant for small selections (use iter_chunks else)."""
        X, obs = next(self.iter_chunks(self.n_cells))
        adata = ad.AnnData(X=X, obs=obs.copy(), var=self.var.copy())
        adata.layers[self.layer] = adata.X  # so --layer NAME finds the layer it was read from
        return adata

    def close(self) -> None:
        self._experiment.close()

    def __enter__(self) -> SomaSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_var(ms, var_key: str | None) -> tuple[pd.DataFrame, np.ndarray]:
    """var with gene ids as a str index, plus the soma_joinids that X columns refer to."""
    frame = ms.var.read(result_order="row-major").concat().to_pandas()
    ids = frame.pop("soma_joinid").to_numpy(np.int64)
    if var_key is None:
        var_key = next((c for c in _VAR_KEYS if c in frame), None)
    elif var_key not in frame:
        msg = f"var_key {var_key!r} not a var column; available: {list(frame.columns)}"
        raise InputError(msg)
    index = frame.pop(var_key).astype(str) if var_key else pd.Series(ids).astype(str)
    return frame.set_axis(pd.Index(index.to_numpy(), dtype=object)), ids
