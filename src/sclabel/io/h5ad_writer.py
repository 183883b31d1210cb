"""Write an `.h5ad` with a CSR X chunk by chunk, for files bigger than memory.

anndata writes a whole AnnData at once; this appends rows to resizable HDF5 datasets in the
layout anndata reads (`X` as `csr_matrix` 0.1.0), and writes obs/var with anndata's own
`write_elem`, so `anndata.read_h5ad(path, backed="r")` opens the result.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.io.atomic import atomic_path


def write_h5ad_chunks(
    chunks: Iterable[tuple[sp.csr_matrix, pd.DataFrame]], var: pd.DataFrame, path: str | Path
) -> Path:
    """Rows of every (X, obs) chunk in order; obs is kept in memory (small), X is not."""
    path = Path(path)
    obs_parts = []
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs["encoding-type"] = "anndata"
        handle.attrs["encoding-version"] = "0.1.0"
        group = handle.create_group("X")
        group.attrs["encoding-type"] = "csr_matrix"
        group.attrs["encoding-version"] = "0.1.0"
        arrays = {
            name: group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=True)
            for name, dtype in (("data", np.float32), ("indices", np.int32))
        }
        indptr = [np.zeros(1, np.int64)]
        nnz = 0
        for X, obs in chunks:
            X = sp.csr_matrix(X, dtype=np.float32)
            for name, values in (("data", X.data), ("indices", X.indices)):
                arrays[name].resize((nnz + X.nnz,))
                arrays[name][nnz:] = values
            indptr.append(X.indptr[1:].astype(np.int64) + nnz)
            nnz += X.nnz
            obs_parts.append(obs)
        indptr = np.concatenate(indptr)
        group.create_dataset("indptr", data=indptr)
        group.attrs["shape"] = (indptr.size - 1, len(var))
        obs = pd.concat(obs_parts)
        for column in obs.columns:  # one categorical dtype across chunks
            if isinstance(obs[column].dtype, pd.CategoricalDtype) or obs[column].dtype == object:
                obs[column] = pd.Categorical(obs[column].astype(str))
        for key, frame in (("obs", obs), ("var", var)):
            ad.io.write_elem(handle, key, frame)
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            ad.io.write_elem(handle, key, {})
    return path
