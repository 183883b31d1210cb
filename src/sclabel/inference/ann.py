"""Nearest neighbours at atlas scale: exact for small sets, an HNSW graph index above.

Majority voting (a kNN graph of the query) and reference mapping (query cells looked up in
an index of reference cells) both need the k nearest of millions of points in a few dozen
dimensions. Below `EXACT_MAX` points scikit-learn's exact search is fast and needs no index;
above it an HNSW graph (faiss's IndexHNSWFlat) answers at recall ~0.99 with memory linear in
the points. benchmarks/ann_choice.py compares hnswlib, faiss and pynndescent (RESULTS.md,
"Nearest neighbours: which library"): on 20k points hnswlib and faiss built in 2-3 s at
recall 0.996, while pynndescent spent 200 s compiling with numba in every new process, 51 s
building and 838 MiB, at recall 0.959. On 1M points (100k queries) hnswlib and faiss both
built in ~195 s; faiss queried faster (9.6 vs 11.0 s), peaked lower (368 vs 445 MiB) and
recalled slightly more (0.750 vs 0.736 of the 15 exact neighbours at the benchmark's
ef_search 64: enough for a clustering graph; raise EF_SEARCH for mapping at that size).
faiss ships wheels for every platform. The index is never
pickled: a saved reference keeps the points (safetensors) and the index is rebuilt on load.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXACT_MAX = 50_000
HNSW_M, EF_CONSTRUCTION, EF_SEARCH = 16, 100, 64


@dataclass
class AnnIndex:
    points: np.ndarray  # n x d float32
    index: object | None  # a faiss index, or None for exact search

    @classmethod
    def build(cls, points: np.ndarray, *, seed: int = 0, exact: bool | None = None) -> AnnIndex:
        points = np.ascontiguousarray(points, dtype=np.float32)
        if exact if exact is not None else points.shape[0] <= EXACT_MAX:
            return cls(points, None)
        import faiss

        faiss.omp_set_num_threads(_threads())
        index = faiss.IndexHNSWFlat(points.shape[1], HNSW_M)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        index.add(points)
        index.hnsw.efSearch = EF_SEARCH
        return cls(points, index)

    def query(self, queries: np.ndarray, k: int, *, chunk: int = 65_536):
        """(indices, Euclidean distances) of each query's k nearest points, nearest first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.points.shape[0])
        if self.index is None:
            from sklearn.neighbors import NearestNeighbors

            search = NearestNeighbors(n_neighbors=k).fit(self.points)
            parts = [
                search.kneighbors(queries[i : i + chunk]) for i in range(0, len(queries), chunk)
            ]
            distances = np.concatenate([d for d, _ in parts]) if parts else np.zeros((0, k))
            indices = np.concatenate([i for _, i in parts]) if parts else np.zeros((0, k), int)
            return indices, distances.astype(np.float32)
        out_i, out_d = [], []
        for start in range(0, len(queries), chunk):
            squared, found = self.index.search(queries[start : start + chunk], k)
            out_i.append(found)
            out_d.append(np.sqrt(np.maximum(squared, 0)))
        return np.concatenate(out_i), np.concatenate(out_d)


def _threads() -> int:
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
