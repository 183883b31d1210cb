"""Majority voting over clusters: each over-cluster of the query takes its most common label.

CellTypist's most used option. Cells of one small cluster are usually one type, so the
cluster's majority corrects the scattered mistakes of single cells. The clusters come, in
this order, from an obs column the user names (`cluster_key`), from the query's own
neighbour graph (`obsp["connectivities"]`, over-clustered with Leiden), or are built: a PCA
of the query (its `obsm["X_pca"]` if present, else of the model's normalized input, computed
chunk by chunk on the most variable genes), a k-nearest-neighbour graph with pynndescent
(approximate, memory linear in cells) and Leiden at CellTypist's resolution for the data
size (5 below 5,000 cells ... 30 from 200,000). Each cell keeps its own label too.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.data.features import GenePCA
from sclabel.errors import InputError

log = logging.getLogger("sclabel")
HETEROGENEOUS = "Heterogeneous"
N_NEIGHBORS = 15


@dataclass
class Vote:
    """Per cell: its cluster and the cluster's majority label; per cluster: the table."""

    clusters: np.ndarray  # cluster id per cell (str)
    labels: np.ndarray  # the majority label of each cell's cluster
    purity: np.ndarray  # per cell: share of its cluster that has the majority label
    table: pd.DataFrame  # per cluster: cells, majority label, purity, runner-up
    source: str  # where the clusters came from

    def agrees(self, cell_labels: np.ndarray) -> np.ndarray:
        return np.asarray(cell_labels, dtype=object) == self.labels

    def describe(self, cell_labels: np.ndarray) -> str:
        """One line for the user: how many clusters, from where, and how often the vote
        overrules a cell's own label (a large share on rare classes says: read both)."""
        changed = int((~self.agrees(cell_labels)).sum())
        return (
            f"majority voting over {self.table.shape[0]:,} clusters ({self.source}): the "
            f"cluster's label differs from the cell's own for {changed:,} cells "
            f"({changed / max(len(self.labels), 1):.1%}); both are kept"
        )

    def subset(self, rows: np.ndarray) -> Vote:
        """The per-cell answers of some cells (row numbers); the cluster table is kept whole."""
        return dataclasses.replace(self, clusters=self.clusters[rows], labels=self.labels[rows],
                                   purity=self.purity[rows])  # fmt: skip


def resolution_for(n_cells: int) -> float:
    """CellTypist's over-clustering resolution for a data set of `n_cells`."""
    for limit, resolution in ((5_000, 5), (20_000, 10), (40_000, 15), (100_000, 20), (200_000, 25)):
        if n_cells < limit:
            return float(resolution)
    return 30.0


def vote(
    labels: np.ndarray, clusters: np.ndarray, *, min_prop: float = 0.0, source: str = ""
) -> Vote:
    """The majority of `labels` within each cluster; a cluster whose majority holds less
    than `min_prop` of its cells is "Heterogeneous"."""
    if not 0 <= min_prop <= 1:
        raise InputError(f"min_prop must be between 0 and 1, got {min_prop}")
    labels = np.asarray(labels, dtype=object).astype(str)
    clusters = np.asarray(clusters, dtype=object).astype(str)
    counts = pd.crosstab(clusters, labels)
    sizes = counts.sum(axis=1)
    ranked = np.argsort(-counts.to_numpy(), axis=1, kind="stable")
    top = counts.columns.to_numpy()[ranked[:, 0]]
    purity = counts.to_numpy()[np.arange(len(counts)), ranked[:, 0]] / sizes.to_numpy()
    second = np.where(
        counts.shape[1] > 1, counts.columns.to_numpy()[ranked[:, min(1, counts.shape[1] - 1)]], ""
    )
    majority = np.where(purity >= min_prop, top, HETEROGENEOUS)
    table = pd.DataFrame(
        {"cells": sizes.to_numpy(), "majority": majority, "purity": purity, "runner_up": second},
        index=pd.Index(counts.index, name="cluster"),
    ).sort_values("cells", ascending=False)
    where = pd.Index(counts.index).get_indexer(clusters)
    return Vote(clusters, majority[where].astype(object), purity[where], table, source)


def clusters_of(
    adata,
    *,
    cluster_key: str | None = None,
    representation=None,
    resolution: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, str]:
    """The query's over-clusters (see the module docstring) and where they came from.

    `representation`: a cells x dims matrix to build the graph on when the AnnData has
    neither clusters nor a graph (e.g. the PCA of the model's input)."""
    n = adata.n_obs
    if cluster_key is not None:
        if cluster_key not in adata.obs.columns:
            columns = list(adata.obs.columns)
            msg = f"cluster key {cluster_key!r} is not an obs column; available: {columns}"
            raise InputError(msg)
        return adata.obs[cluster_key].astype(str).to_numpy(), f"obs[{cluster_key!r}]"
    resolution = resolution or resolution_for(n)
    if "connectivities" in adata.obsp:
        graph = adata.obsp["connectivities"]
        if graph.shape != (n, n):
            msg = (
                f"obsp['connectivities'] is {graph.shape[0]} x {graph.shape[1]}, not {n} x {n}: "
                "a graph of other cells; drop it or recompute it"
            )
            raise InputError(msg)
        source = f"Leiden (resolution {resolution:g}) on the query's obsp['connectivities']"
    else:
        if representation is None:
            raise InputError("no clusters, graph or representation to build a graph on")
        graph = neighbour_graph(np.asarray(representation, np.float32), seed=seed)
        source = (
            f"Leiden (resolution {resolution:g}) on a {N_NEIGHBORS}-nearest-neighbour graph "
            f"of {representation.shape[1]} principal components"
        )
    return leiden(graph, resolution, seed=seed), source


def neighbour_graph(X: np.ndarray, *, k: int = N_NEIGHBORS, seed: int = 0) -> sp.csr_matrix:
    """UMAP's fuzzy connectivities (as scanpy's `neighbors` weighs edges) of the k nearest
    neighbours of every cell: exact below EXACT_MAX cells, approximate above."""
    k = min(k, X.shape[0] - 1)
    indices, distances = nearest_neighbours(X, k, seed=seed)
    return fuzzy_connectivities(indices, distances)


EXACT_MAX = 50_000  # below: exact neighbours (scikit-learn), no index to build


def nearest_neighbours(X: np.ndarray, k: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's k nearest other cells (indices, Euclidean distances), nearest first."""
    if X.shape[0] <= EXACT_MAX:
        from sklearn.neighbors import NearestNeighbors

        distances, indices = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
    else:
        from sclabel.inference.ann import AnnIndex

        indices, distances = AnnIndex.build(X, seed=seed).query(X, k + 1)
    return indices[:, 1:], distances[:, 1:]  # drop each cell itself


def fuzzy_connectivities(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """UMAP's fuzzy simplicial set (McInnes et al. 2018) in numpy: w_ij = exp(-(d_ij -
    rho_i) / sigma_i), rho_i the distance to the nearest neighbour and sigma_i such that the
    weights of i sum to log2(k); then w + w^T - w * w^T. Vectorized over cells, so it needs
    no compilation (umap's numba version spends ~15 s compiling in every new process)."""
    n, k = indices.shape
    rho = distances[:, 0]
    excess = np.maximum(distances - rho[:, None], 0)
    target = np.log2(k)
    low, high = np.zeros(n), np.full(n, np.inf)
    sigma = np.ones(n)
    for _ in range(64):  # binary search per cell, all cells at once
        total = np.exp(-excess / sigma[:, None]).sum(axis=1)
        too_big = total > target
        high = np.where(too_big, sigma, high)
        low = np.where(too_big, low, sigma)
        sigma = np.where(np.isinf(high), sigma * 2, (low + high) / 2)
    mean = excess.mean()
    sigma = np.maximum(sigma, 1e-3 * (excess.mean(axis=1) if mean > 0 else 1.0))
    weights = np.exp(-excess / sigma[:, None])
    rows = np.repeat(np.arange(n), k)
    graph = sp.csr_matrix((weights.ravel(), (rows, indices.ravel())), shape=(n, n))
    transpose = graph.T.tocsr()
    return (graph + transpose - graph.multiply(transpose)).tocsr()


def leiden(graph: sp.spmatrix, resolution: float, *, seed: int = 0) -> np.ndarray:
    """Leiden communities (igraph, modularity with `resolution`, two iterations as
    CellTypist runs it) of a weighted, symmetric graph."""
    import random

    import igraph

    upper = sp.triu(graph, k=1).tocoo()
    g = igraph.Graph(n=graph.shape[0], edges=np.column_stack([upper.row, upper.col]))
    random.seed(seed)  # igraph's Leiden draws from Python's generator
    igraph.set_random_number_generator(random)
    parts = g.community_leiden(
        objective_function="modularity",
        weights=upper.data.astype(np.float64),
        resolution=resolution,
        n_iterations=2,
    )
    return np.asarray(parts.membership).astype(str)


def pca_of(bound, *, progress: bool = False) -> np.ndarray:
    """Scores of the PCA of a bound input's normalized genes (see `GenePCA`)."""
    return GenePCA.fit(bound, progress=progress).scores(bound)


def query_pca(adata, *, layer: str | None = None) -> np.ndarray:
    """The query's own PCA: obsm["X_pca"] when it has one, else computed chunk by chunk on
    its own genes (normalized as every input is)."""
    if "X_pca" in adata.obsm:
        return np.asarray(adata.obsm["X_pca"], np.float32)
    from sclabel.data.genes import Vocabulary
    from sclabel.data.inputs import InputSpec
    from sclabel.io.sources import AnnDataSource

    source = AnnDataSource(adata, layer)
    vocabulary, gene_key = Vocabulary.from_var(source.var)
    bound = InputSpec(vocabulary, gene_key=gene_key).bind(source, gene_key=gene_key)
    log.info("majority voting: PCA of the query's %d genes", len(vocabulary.ids))
    return pca_of(bound)


def vote_on(source, labels: np.ndarray, *, bound=None, cluster_key=None, resolution=None,
            min_prop: float = 0.0, layer=None, seed: int = 0) -> Vote:  # fmt: skip
    """Majority voting for the cells of a `RowSource` (see the module docstring): an
    AnnData's clusters, graph or own PCA; a store's cells by the PCA of the model's input
    (`bound`)."""
    adata = getattr(source, "adata", None)
    if adata is None:
        if cluster_key is not None:
            raise InputError("--cluster-key needs an .h5ad query (a store has no obs to use)")
        representation = pca_of(bound)
        resolution = resolution or resolution_for(representation.shape[0])
        clusters = leiden(neighbour_graph(representation, seed=seed), resolution, seed=seed)
        return vote(labels, clusters, min_prop=min_prop, source="Leiden on the model input's PCA")
    has_graph = cluster_key is not None or "connectivities" in adata.obsp
    representation = None if has_graph else query_pca(adata, layer=layer)
    clusters, where = clusters_of(adata, cluster_key=cluster_key, representation=representation,
                                  resolution=resolution, seed=seed)  # fmt: skip
    return vote(labels, clusters, min_prop=min_prop, source=where)
