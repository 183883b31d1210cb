"""k-means baseline on a representation: does it group cells by a label without training?

Why: before crediting a classifier on an embedding (scGPT, PCA of expression) with learning
severity, check what unsupervised structure already gives: if clusters follow cell type
(high ARI) but not severity (ARI ~0), the disease signal is subtle and per-cell-type.

The number of clusters is chosen by the elbow of the inertia curve, "maximum distance to
the chord" (the kneedle idea): scale k and inertia to [0, 1], draw the straight line from
the first to the last point, and take the k whose inertia lies furthest below that line.
Because the scaled chord is fixed, the perpendicular distance is proportional to the
vertical gap, so the vertical gap is what is maximised. No point below the chord (a
straight or concave curve, no elbow) gives the smallest k.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, silhouette_score
from tqdm.auto import tqdm

from sclabel.data.obs import markdown_table, require_classes
from sclabel.errors import InputError
from sclabel.evaluation.plots import plt, save_figure

log = logging.getLogger("sclabel")
ELBOW_RULE = "maximum vertical gap below the chord of the [0, 1]-scaled inertia curve"


@dataclass
class ClusteringResult:
    """Inertia/silhouette per k, the chosen k, and how its clusters match each label."""

    curve: pd.DataFrame  # k, inertia, silhouette
    k: int
    silhouette: float
    ari: dict[str, float]  # label -> adjusted Rand index
    majority_accuracy: dict[str, float]  # label -> cells in their cluster's majority label
    clusters: pd.DataFrame  # cluster, n_cells, <label>_majority, <label>_purity per label
    assignments: np.ndarray = field(repr=False)
    plots: dict[str, str] = field(default_factory=dict)
    elbow_rule: str = ELBOW_RULE

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "elbow_rule": self.elbow_rule,
            "silhouette": self.silhouette,
            "ari": self.ari,
            "majority_accuracy": self.majority_accuracy,
            "curve": self.curve.to_dict(orient="records"),
            "clusters": self.clusters.to_dict(orient="records"),
            "plots": self.plots,
        }

    def to_markdown(self) -> str:
        scores = pd.DataFrame(
            {
                "label": list(self.ari),
                "ARI": list(self.ari.values()),
                "majority-label accuracy": [self.majority_accuracy[k] for k in self.ari],
            }
        )
        return "\n".join(
            [
                f"k-means: k = {self.k} (elbow: {self.elbow_rule}); "
                f"silhouette {self.silhouette:.3f}.",
                "",
                markdown_table(scores),
                "",
                "## Inertia curve",
                "",
                markdown_table(self.curve),
                "",
                "## Clusters",
                "",
                markdown_table(self.clusters),
                "",
            ]
        )


def elbow(ks: Sequence[int], inertia: Sequence[float]) -> int:
    """The k furthest below the chord of the scaled inertia curve (see the module docstring)."""
    ks, inertia = np.asarray(ks, dtype=float), np.asarray(inertia, dtype=float)
    x = (ks - ks[0]) / (ks[-1] - ks[0])
    spread = inertia.max() - inertia.min()
    y = (inertia - inertia.min()) / spread if spread > 0 else np.zeros_like(inertia)
    gap = (y[0] + (y[-1] - y[0]) * x) - y  # chord minus curve
    return int(ks[int(np.argmax(gap))]) if gap.max() > 1e-12 else int(ks[0])


def _check(x, labels, k_range) -> tuple[np.ndarray, dict[str, np.ndarray], list[int]]:
    x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise InputError("the representation must be a finite cells x dims matrix")
    ks = sorted({int(k) for k in k_range})
    if len(ks) < 3 or ks[0] < 2 or ks[-1] >= x.shape[0]:
        raise InputError(
            f"k_range must hold at least 3 values between 2 and n_cells - 1 ({x.shape[0] - 1}) "
            f"for an elbow; got {list(k_range)}"
        )
    columns = {}
    for name, values in ({} if labels is None else dict(labels)).items():
        values = np.asarray(values, dtype=object)
        if values.shape != (x.shape[0],):
            raise InputError(f"label {name!r} has {values.size} entries for {x.shape[0]} cells")
        require_classes(pd.Series(values), name)
        columns[str(name)] = values
    return x, columns, ks


def kmeans_baseline(
    x: np.ndarray,
    labels: pd.DataFrame | Mapping[str, Sequence] | None = None,
    *,
    k_range: Sequence[int] = range(2, 11),
    k: int | None = None,
    n_init: int = 4,
    silhouette_cells: int = 2000,
    seed: int = 0,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> ClusteringResult:
    """k-means over `k_range`, the elbow k (or the given `k`), and its fit to each label.

    Parameters
    ----------
    x
        Cells x dims (PCA of log-normalized expression, or a model embedding).
    labels
        Columns to compare with the clusters (e.g. obs[["cell_type", "severity"]]); cells
        with a missing label are left out of that label's scores.
    k_range, k
        The ks for the inertia curve (>= 3 values, for an elbow); `k` overrides the elbow.
    n_init, seed
        KMeans restarts and seed (n_init is explicit so results do not depend on the
        scikit-learn version's default).
    silhouette_cells
        Silhouette on a seeded subsample of this many cells (it is quadratic in cells).
    out_dir
        Where to write kmeans_elbow.png, pca_cluster.png and pca_<label>.png.
    """
    x, columns, ks = _check(x, labels, k_range)
    if k is not None and not 2 <= k < x.shape[0]:
        raise InputError(f"k must be between 2 and n_cells - 1 ({x.shape[0] - 1}), got {k}")
    sample = min(silhouette_cells, x.shape[0])
    fits, rows = {}, []
    for kk in tqdm(ks, desc="k-means", disable=not progress):
        fits[kk] = KMeans(n_clusters=kk, n_init=n_init, random_state=seed).fit(x)
        sil = silhouette_score(x, fits[kk].labels_, sample_size=sample, random_state=seed)
        rows.append({"k": kk, "inertia": float(fits[kk].inertia_), "silhouette": float(sil)})
    curve = pd.DataFrame(rows)
    chosen = elbow(curve["k"], curve["inertia"]) if k is None else int(k)
    if chosen not in fits:
        fits[chosen] = KMeans(n_clusters=chosen, n_init=n_init, random_state=seed).fit(x)
    assignments = fits[chosen].labels_
    silhouette = silhouette_score(x, assignments, sample_size=sample, random_state=seed)
    clusters = pd.DataFrame({"cluster": np.arange(chosen), "n_cells": np.bincount(assignments)})
    ari, majority = {}, {}
    for name, values in columns.items():
        known = ~pd.isna(values)
        ari[name] = float(adjusted_rand_score(values[known].astype(str), assignments[known]))
        table = pd.crosstab(assignments[known], values[known].astype(str))
        table = table.reindex(range(chosen), fill_value=0)
        majority[name] = float(table.max(axis=1).sum() / known.sum())
        clusters[f"{name}_majority"] = table.idxmax(axis=1).where(table.sum(axis=1) > 0).values
        clusters[f"{name}_purity"] = (table.max(axis=1) / table.sum(axis=1).clip(lower=1)).values
    log.info("k-means: k=%d, silhouette %.3f, ARI %s", chosen, silhouette, ari)
    result = ClusteringResult(
        curve, chosen, float(silhouette), ari, majority, clusters, assignments
    )
    if out_dir is not None:
        result.plots = _plots(x, result, columns, Path(out_dir), seed)
    return result


def _plots(x, result: ClusteringResult, columns, out_dir: Path, seed: int) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(result.curve["k"], result.curve["inertia"], marker="o")
    ax.axvline(result.k, color="tab:red", linestyle="--", label=f"k = {result.k}")
    ax.set_xlabel("k")
    ax.set_ylabel("inertia")
    ax.legend()
    ax.set_title("k-means inertia")
    paths = {"elbow": str(save_figure(fig, out_dir / "kmeans_elbow.png"))}
    xy = x[:, :2] if x.shape[1] <= 2 else PCA(2, random_state=seed).fit_transform(x)
    if xy.shape[1] == 1:
        xy = np.column_stack([xy[:, 0], np.zeros(len(xy))])
    for name, values in {"cluster": result.assignments.astype(str), **columns}.items():
        fig, ax = plt.subplots(figsize=(6, 5))
        values = pd.Series(values).astype(str).to_numpy()
        for i, value in enumerate(sorted(set(values))):
            here = values == value
            ax.scatter(*xy[here].T, s=4, color=plt.cm.tab20(i % 20), label=value)
        if len(set(values)) <= 20:
            ax.legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
        ax.set_title(f"PCA coloured by {name}")
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        paths[name] = str(save_figure(fig, out_dir / f"pca_{safe}.png"))
    return paths
