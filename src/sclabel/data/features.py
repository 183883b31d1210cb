"""Inputs other than genes: an `.obsm` embedding, or principal components of expression.

Any head can train on a per-cell representation computed elsewhere (scGPT, scVI, PCA, or
`sclabel embed`): `obsm_key` reads it instead of the genes. `pca=N` projects normalized
expression onto N principal components fitted on the training cells only, so test cells
never shape the representation; the projection is saved with the model and applied again
at prediction time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch

from sclabel.data.genes import Vocabulary
from sclabel.errors import InputError

log = logging.getLogger("sclabel")


def read_obsm(adata: ad.AnnData, key: str, width: int | None = None) -> np.ndarray:
    """`adata.obsm[key]` as a dense float32 cells x dims array, checked for use as input."""
    if key not in adata.obsm:
        msg = f"obsm key {key!r} not found; available: {sorted(adata.obsm.keys())}"
        raise InputError(msg)
    values = adata.obsm[key]
    values = values.to_numpy() if hasattr(values, "to_numpy") else values
    values = values.toarray() if sp.issparse(values) else np.asarray(values)
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
        msg = f"obsm[{key!r}] must be a numeric cells x dimensions matrix, got {values.dtype}"
        raise InputError(msg)
    if width is not None and values.shape[1] != width:
        msg = (
            f"obsm[{key!r}] has {values.shape[1]} dimensions but the model was trained on "
            f"{width}; compute the query's embedding with the same encoder"
        )
        raise InputError(msg)
    values = values.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).any(axis=1).sum())
        raise InputError(f"obsm[{key!r}] has NaN or infinite values in {bad} cells")
    return values


def embedding_vocabulary(key: str, width: int) -> Vocabulary:
    """Names for an embedding's dimensions, in place of gene ids (saved in genes.json)."""
    return Vocabulary(tuple(f"{key}:{i}" for i in range(width)))


@dataclass
class Projection:
    """x -> (x - mean) @ components.T: principal components fitted on training cells."""

    mean: np.ndarray  # (genes,)
    components: np.ndarray  # (n_components, genes)
    explained_variance_ratio: np.ndarray  # (n_components,)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def apply(self, X: sp.csr_matrix | np.ndarray) -> np.ndarray:
        """Dense float32 scores; a sparse X stays sparse until the product."""
        scores = X @ self.components.T - self.mean @ self.components.T
        return np.asarray(scores, dtype=np.float32)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "mean": torch.from_numpy(self.mean),
            "components": torch.from_numpy(self.components),
            "explained_variance_ratio": torch.from_numpy(self.explained_variance_ratio),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Projection:
        parts = {k: tensors[k].numpy().astype(np.float32) for k in cls.__dataclass_fields__}
        if parts["components"].shape[1] != parts["mean"].shape[0]:
            raise ValueError("pca components and mean disagree on the number of genes")
        return cls(**parts)


def fit_pca(X: sp.csr_matrix, n_components: int, seed: int = 0) -> Projection:
    """PCA of the training cells' normalized expression (centered implicitly, X stays sparse).

    scikit-learn's ARPACK solver on sparse input: exact leading components without
    densifying cells x genes, which for an atlas would not fit in memory.
    """
    from sklearn.decomposition import PCA

    limit = min(X.shape) - 1
    if n_components < 1:
        raise InputError(f"pca must be at least 1, got {n_components}")
    if n_components > limit:
        msg = (
            f"pca={n_components} needs more training cells and genes than "
            f"{X.shape[0]} x {X.shape[1]}; choose at most {limit}"
        )
        raise InputError(msg)
    pca = PCA(n_components=n_components, svd_solver="arpack", random_state=seed)
    pca.fit(sp.csr_matrix(X, dtype=np.float64))
    explained = pca.explained_variance_ratio_.astype(np.float32)
    log.info(
        "pca: %d components explain %.1f%% of the training cells' variance",
        n_components,
        100 * float(explained.sum()),
    )
    return Projection(
        mean=pca.mean_.astype(np.float32),
        components=pca.components_.astype(np.float32),
        explained_variance_ratio=explained,
    )
