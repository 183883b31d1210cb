"""Donor-difference augmentation (scTab, Fischer et al., Methods).

Differences between the mean expression of one cell type in two donors are what a model
must learn to ignore. They are collected from the training data and, during training, a
random one is added to or subtracted from a cell, so the model sees each cell type with
other donors' shifts:

1. subsample the training cells evenly across cell types (at most `max_cells`);
2. mean log-normalized expression per (cell type, donor);
3. within each cell type, the difference between every pair of its donors (at most
   `max_vectors` pairs, drawn at random);
4. entries in [-zero_below, zero_below] set to 0, the rest clamped to [-clip, clip];
5. k-means with `n_clusters` over the vectors; vectors in clusters holding fewer than
   `min_cluster_fraction` of them are dropped (rare, idiosyncratic shifts);
6. training adds (or subtracts) a random kept vector to a cell with probability `prob`,
   then clamps to [0, max_value].

The paper's sizes (500,000 cells, 5,000 vectors, 50 clusters) are the defaults; each is
capped by what the data has, so small data gets fewer vectors and clusters.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sclabel.config import _JSONConfig
from sclabel.errors import InputError

log = logging.getLogger("sclabel")


@dataclass(frozen=True)
class AugmentConfig(_JSONConfig):
    max_cells: int = 500_000
    max_vectors: int = 5_000
    n_clusters: int = 50
    min_cluster_fraction: float = 0.01  # of all vectors; 50 of 5,000 = half a mean cluster
    zero_below: float = 0.25
    clip: float = 1.5
    max_value: float = 9.0  # log1p(1e4 * x) of one gene stays below ~9.2
    prob: float = 0.5

    def __post_init__(self) -> None:
        if self.max_cells < 2 or self.max_vectors < 1 or self.n_clusters < 1:
            raise InputError("augmentation: max_cells, max_vectors and n_clusters must be >= 1")
        if not 0 <= self.prob <= 1 or not 0 <= self.min_cluster_fraction < 1:
            raise InputError("augmentation: prob must be in [0, 1], min_cluster_fraction in [0, 1)")


class DonorAugmentation:
    """The kept difference vectors (sparse rows over the model's genes) and how to apply them."""

    def __init__(self, vectors: sp.csr_matrix, config: AugmentConfig, info: dict) -> None:
        self.vectors = sp.csr_matrix(vectors, dtype=np.float32)
        self.config = config
        self.info = info

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def apply(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """A dense batch with a random ± vector added to each cell picked with `prob`."""
        picked = np.flatnonzero(rng.random(x.shape[0]) < self.config.prob)
        if picked.size == 0 or len(self) == 0:
            return x
        shift = self.vectors[rng.integers(0, len(self), size=picked.size)].toarray()
        shift *= rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(picked.size, 1))
        x = x.clone()
        index = torch.from_numpy(picked)
        x[index] = (x[index] + torch.from_numpy(shift)).clamp_(0.0, self.config.max_value)
        return x

    def tensors(self) -> dict[str, torch.Tensor]:
        """Safetensors-ready CSR parts (no pickle)."""
        v = self.vectors
        return {
            "indptr": torch.from_numpy(v.indptr.astype(np.int64)),
            "indices": torch.from_numpy(v.indices.astype(np.int64)),
            "data": torch.from_numpy(v.data.astype(np.float32)),
            "shape": torch.tensor(v.shape, dtype=torch.int64),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], config: dict, info: dict):
        shape = tuple(int(s) for s in tensors["shape"])
        parts = (tensors["data"].numpy(), tensors["indices"].numpy(), tensors["indptr"].numpy())
        return cls(sp.csr_matrix(parts, shape=shape), AugmentConfig.from_dict(config), info)


def even_subsample(cell_type: np.ndarray, max_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices: up to max_cells // n_types cells of each type (all of a rarer type)."""
    types = np.unique(cell_type)
    per_type = max(1, max_cells // types.size)
    rows = [rng.permutation(np.flatnonzero(cell_type == t))[:per_type] for t in types]
    return np.sort(np.concatenate(rows))


def centroids(X: sp.csr_matrix, cell_type: np.ndarray, donor: np.ndarray):
    """Mean expression per (type, donor) present: (matrix of means, list of (type, donor))."""
    group, names = pd.MultiIndex.from_arrays([cell_type, donor]).factorize()
    counts = np.bincount(group)
    membership = sp.csr_matrix(
        (1.0 / counts[group], (group, np.arange(group.size))), shape=(len(names), group.size)
    )
    means = np.asarray((membership @ X).todense(), dtype=np.float32)
    pairs = [(str(t), str(d)) for t, d in names]
    return means, pairs


def difference_vectors(
    means: np.ndarray, pairs: list[tuple[str, str]], max_vectors: int, rng: np.random.Generator
) -> np.ndarray:
    """Differences between every two donors' centroids of the same type (sampled if many)."""
    by_type: dict[str, list[int]] = {}
    for row, (cell_type, _) in enumerate(pairs):
        by_type.setdefault(cell_type, []).append(row)
    first, second = [], []
    for rows in by_type.values():
        i, j = np.triu_indices(len(rows), k=1)
        first.extend(np.asarray(rows)[i])
        second.extend(np.asarray(rows)[j])
    first, second = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    if first.size > max_vectors:
        keep = np.sort(rng.choice(first.size, size=max_vectors, replace=False))
        first, second = first[keep], second[keep]
    return means[first] - means[second]


def threshold(vectors: np.ndarray, zero_below: float, clip: float) -> np.ndarray:
    out = np.where(np.abs(vectors) <= zero_below, 0.0, vectors)
    return np.clip(out, -clip, clip).astype(np.float32)


def keep_large_clusters(
    vectors: np.ndarray, n_clusters: int, min_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(kept vectors, cluster sizes); clusters below min_fraction of all vectors are dropped."""
    from sklearn.cluster import KMeans

    n_clusters = min(n_clusters, vectors.shape[0])
    if n_clusters < 2:
        return vectors, np.array([vectors.shape[0]])
    kmeans = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed)
    cluster = kmeans.fit_predict(sp.csr_matrix(vectors))
    sizes = np.bincount(cluster, minlength=n_clusters)
    minimum = max(1, math.ceil(min_fraction * vectors.shape[0]))
    return vectors[sizes[cluster] >= minimum], sizes


def fit_augmentation(
    X: sp.csr_matrix,
    cell_type: np.ndarray,
    donor: np.ndarray,
    config: AugmentConfig | None = None,
    *,
    seed: int = 0,
) -> DonorAugmentation:
    """Compute the kept difference vectors from log-normalized training cells."""
    config = config or AugmentConfig()
    cell_type, donor = np.asarray(cell_type), np.asarray(donor)
    if np.unique(donor).size < 2:
        raise InputError("donor augmentation needs at least 2 donors in the training split")
    rng = np.random.default_rng(seed)
    rows = even_subsample(cell_type, config.max_cells, rng)
    means, pairs = centroids(X[rows], cell_type[rows], donor[rows])
    raw = difference_vectors(means, pairs, config.max_vectors, rng)
    if raw.shape[0] == 0:
        raise InputError(
            "donor augmentation found no cell type seen in two donors of the training split"
        )
    vectors = threshold(raw, config.zero_below, config.clip)
    vectors = vectors[np.abs(vectors).sum(axis=1) > 0]  # all-zero shifts change nothing
    kept, sizes = keep_large_clusters(vectors, config.n_clusters, config.min_cluster_fraction, seed)
    info = {
        "cells_used": int(rows.size),
        "centroids": len(pairs),
        "difference_vectors": int(raw.shape[0]),
        "nonzero_vectors": int(vectors.shape[0]),
        "cluster_sizes": sorted(sizes.tolist(), reverse=True),
        "kept_vectors": int(kept.shape[0]),
        "mean_nonzero_genes": float((kept != 0).sum(axis=1).mean()) if kept.size else 0.0,
    }
    log.info(
        "donor augmentation: %d of %d difference vectors kept (%d centroids from %d cells)",
        info["kept_vectors"],
        info["difference_vectors"],
        info["centroids"],
        info["cells_used"],
    )
    return DonorAugmentation(sp.csr_matrix(kept), config, info)


def variance_explained(
    X: sp.csr_matrix | np.ndarray, cell_type: np.ndarray, donor: np.ndarray
) -> dict[str, float]:
    """Share of total expression variance (summed over genes) that a linear model on one-hot
    cell type, one-hot donor, or both explains: R^2 of ordinary least squares."""
    X = sp.csr_matrix(X, dtype=np.float64)
    n = X.shape[0]
    mean = np.asarray(X.mean(axis=0)).ravel()
    total = float(X.multiply(X).sum() - n * mean @ mean)

    def r2(*factors: np.ndarray) -> float:
        blocks = [_one_hot(f) for f in factors]
        design = sp.hstack(blocks, format="csr")
        gram = (design.T @ design).toarray()
        beta = np.linalg.pinv(gram) @ (design.T @ X).toarray()  # pinv: donors nest in types
        fitted = float((beta * (gram @ beta)).sum())  # ||D beta||^2 without forming D beta
        return (fitted - n * mean @ mean) / total if total > 0 else 0.0

    return {
        "r2_cell_type": r2(cell_type),
        "r2_donor": r2(donor),
        "r2_cell_type_and_donor": r2(cell_type, donor),
    }


def _one_hot(values: np.ndarray) -> sp.csr_matrix:
    _, codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return sp.csr_matrix((np.ones(codes.size), (np.arange(codes.size), codes)))


def augmentation_r2(
    X: sp.csr_matrix,
    cell_type: np.ndarray,
    donor: np.ndarray,
    augmentation: DonorAugmentation,
    *,
    max_cells: int = 5_000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Variance explained by cell type and donor on training cells, before and after one
    pass of augmentation (on a random subsample of at most `max_cells` cells)."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.permutation(X.shape[0])[:max_cells])
    before = X[rows]
    after = augmentation.apply(torch.from_numpy(before.toarray()), rng).numpy()
    labels = (np.asarray(cell_type)[rows], np.asarray(donor)[rows])
    return {
        "before": variance_explained(before, *labels),
        "after": variance_explained(after, *labels),
        "cells": int(rows.size),
        "prob": augmentation.config.prob,
    }


def config_from(value: bool | dict | AugmentConfig | None) -> AugmentConfig | None:
    """`augment=True`, a dict of AugmentConfig fields, or an AugmentConfig; False/None: off."""
    if value is None or value is False:
        return None
    if value is True:
        return AugmentConfig()
    if isinstance(value, AugmentConfig):
        return value
    if isinstance(value, dict):
        return AugmentConfig.from_dict(value)
    raise InputError(f"augment must be True/False or a dict of options, got {value!r}")
