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


@dataclass
class GenePCA:
    """PCA of cells for neighbour graphs and reference mapping, fitted chunk by chunk: the
    `n_hvg` genes of highest variance, standardized and clipped at 10 (as scanpy's scale),
    then an exact PCA from their covariance, accumulated chunk by chunk; memory holds one
    dense chunk of the chosen genes and a genes x genes matrix. Saved as
    tensors, so a reference's PCA is applied to a query the same way."""

    genes: np.ndarray  # positions of the chosen genes in the input's genes
    mean: np.ndarray  # per chosen gene
    scale: np.ndarray
    components: np.ndarray  # n_pcs x chosen genes
    center: np.ndarray  # mean of the standardized chosen genes (the PCA's own mean)

    N_HVG, N_PCS = 2000, 50

    @classmethod
    def fit(cls, bound, *, n_hvg: int = N_HVG, n_pcs: int = N_PCS, chunk_size: int = 16_384,
            progress: bool = False) -> GenePCA:  # fmt: skip
        n_genes = len(bound.spec.vocabulary.ids)
        total, square = np.zeros(n_genes), np.zeros(n_genes)
        for chunk in bound.chunks(chunk_size, project=False, progress=progress, desc="variance"):
            total += np.asarray(chunk.sum(axis=0)).ravel()
            square += np.asarray(chunk.multiply(chunk).sum(axis=0)).ravel()
        n = bound.n_cells
        mean = total / n
        var = np.maximum(square / n - mean**2, 0)
        genes = np.sort(np.argsort(-var)[: min(n_hvg, int((var > 0).sum()))])
        if genes.size < 2 or n < 3:
            raise InputError("too few cells or varying genes for a PCA of the cells")
        n_pcs = min(n_pcs, genes.size - 1, n - 1)
        empty = np.zeros(0, np.float32)
        pca = cls(genes, mean[genes], np.sqrt(var[genes]), np.zeros((0, genes.size)), empty)
        # exact PCA from the covariance of the standardized genes, accumulated chunk by chunk:
        # one matrix product per chunk instead of IncrementalPCA's SVD of every chunk (which
        # took minutes at 100k cells; see RESULTS.md "Majority voting and mapping at ...")
        total_z, gram = np.zeros(genes.size), np.zeros((genes.size, genes.size))
        for chunk in bound.chunks(chunk_size, project=False, progress=progress, desc="PCA"):
            z = pca.standardized(chunk)
            total_z += z.sum(axis=0)
            gram += z.T @ z
        center = total_z / n
        covariance = gram / n - np.outer(center, center)
        values, vectors = np.linalg.eigh(covariance)
        top = vectors[:, np.argsort(values)[::-1][:n_pcs]].T
        top *= np.where(top[np.arange(n_pcs), np.abs(top).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
        pca.components = top.astype(np.float32)
        pca.center = center.astype(np.float32)
        return pca

    def standardized(self, chunk) -> np.ndarray:
        x = (np.asarray(chunk[:, self.genes].todense()) - self.mean) / self.scale
        return np.minimum(x, 10, out=x)

    def transform(self, chunk) -> np.ndarray:
        """Scores of normalized rows over the input's genes (a CSR chunk)."""
        return ((self.standardized(chunk) - self.center) @ self.components.T).astype(np.float32)

    def scores(self, bound, *, chunk_size: int = 16_384) -> np.ndarray:
        chunks = bound.chunks(chunk_size, project=False)
        return np.concatenate([self.transform(c) for c in chunks])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.asarray(getattr(self, name)))
                for name in ("genes", "mean", "scale", "components", "center")}  # fmt: skip

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> GenePCA:
        return cls(**{name: tensors[name].numpy() for name in cls.__dataclass_fields__})
