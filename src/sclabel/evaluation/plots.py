"""The pictures of reports and explain: confusion matrix, per-class F1, reliability diagram,
gene-importance heat map and marker dot plot."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    with warnings.catch_warnings():  # labels in scripts DejaVu lacks: boxes, not a warning
        warnings.filterwarnings("ignore", "Glyph .* missing from", UserWarning)
        warnings.filterwarnings("ignore", "Matplotlib currently does not support", UserWarning)
        warnings.filterwarnings("ignore", ".*not compatible with tight_layout", UserWarning)
        fig.tight_layout()
        fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def tick_label(label, width: int = 24) -> str:
    """A class name as a tick label: wrapped over at most two lines, then cut with '…', so a
    long name neither crops the plot nor squeezes the matrix."""
    lines = textwrap.wrap(str(label), width) or [""]
    if len(lines) > 2:
        lines = [lines[0], lines[1][: width - 1] + "…"]
    return "\n".join(lines)


def confusion_plot(metrics: dict, path: Path) -> Path:
    """Row-normalized confusion matrix: each row shows where a true class went. When the
    true labels are not all model classes (e.g. 8 lineages against a 71-class model), the
    cross-tab of given vs predicted labels instead: only the predicted labels used, ordered
    by the given label they took most cells from."""
    from sclabel.evaluation.crosstab import differ as labels_differ

    differ = labels_differ(metrics)
    conf = metrics["crosstab"] if differ else metrics["confusion"]
    counts = np.asarray(conf["counts"], dtype=float)
    normalized = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n_rows, n_cols = normalized.shape
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * n_cols + 3), max(4, 0.4 * n_rows + 2)))
    image = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(n_cols), map(tick_label, conf["columns"]), rotation=60, ha="right",
                  fontsize=8)  # fmt: skip
    ax.set_yticks(range(n_rows), map(tick_label, conf["rows"]), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("given" if differ else "true")
    if n_rows * n_cols <= 400:
        for i in range(n_rows):
            for j in range(n_cols):
                value = normalized[i, j]
                if value >= 0.01:
                    color = "white" if value > 0.5 else "black"
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, label="fraction of the row's cells")
    ax.set_title(("given vs predicted labels" if differ else "confusion matrix")
                 + " (row-normalized)")  # fmt: skip
    return save_figure(fig, path)


def per_class_f1_plot(metrics: dict, path: Path) -> Path:
    per_class = metrics["per_class"]
    names = sorted(per_class, key=lambda c: per_class[c]["f1"])
    f1 = [per_class[c]["f1"] for c in names]
    support = [per_class[c]["support"] for c in names]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.3 * len(names) + 1.5)))
    ax.barh(range(len(names)), f1, color="tab:blue")
    ticks = [f"{tick_label(n)} (n={s})" for n, s in zip(names, support, strict=True)]
    ax.set_yticks(range(len(names)), ticks)
    ax.set_xlim(0, 1)
    ax.axvline(metrics["macro_f1"], color="tab:red", linestyle="--", label="macro-F1")
    ax.set_xlabel("F1")
    ax.legend(loc="lower right")
    ax.set_title("per-class F1")
    return save_figure(fig, path)


def chance_range(table: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per reliability bin: the accuracy a perfectly calibrated model would have (the bin's
    mean confidence) and the central 95% range chance gives it on the bin's cells (binomial
    2.5% and 97.5% quantiles over the bin's count); NaN for empty bins."""
    from scipy.stats import binom

    n = np.array([0 if v is None else v for v in table["n"]], dtype=float)
    mean = np.array([np.nan if c is None else c for c in table["confidence"]], dtype=float)
    filled = n > 0
    low, high = np.full(n.size, np.nan), np.full(n.size, np.nan)
    low[filled] = binom.ppf(0.025, n[filled], mean[filled]) / n[filled]
    high[filled] = binom.ppf(0.975, n[filled], mean[filled]) / n[filled]
    return mean, low, high  # an empty bin's mean confidence is already NaN


def reliability_plot(metrics: dict, path: Path) -> Path:
    """Accuracy per confidence bin against the diagonal of perfect calibration, with the
    range a perfectly calibrated model's accuracy takes by chance on as many cells."""
    table = metrics["reliability"]
    centers = np.array(
        [(lo + hi) / 2 for lo, hi in zip(table["lower"], table["upper"], strict=True)]
    )
    accuracy = [np.nan if a is None else a for a in table["accuracy"]]
    width = table["upper"][0] - table["lower"][0]
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.bar(centers, accuracy, width=width * 0.95, color="tab:blue", label="accuracy")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect calibration")
    expected, low, high = chance_range(table)
    ax.errorbar(centers, expected, yerr=[expected - low, high - expected], fmt="_",
                color="black", capsize=3, label="calibrated: 95% by chance")  # fmt: skip
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    chance = metrics.get("ece_by_chance")
    by_chance = "" if chance is None else f"; by chance alone {chance:.3f}"
    ax.set_title(f"reliability (ECE {metrics['ece']:.3f}{by_chance})")
    ax.legend(loc="upper left", fontsize=8)
    ax_n.bar(centers, table["n"], width=width * 0.95, color="tab:gray")
    ax_n.set_xlabel("confidence")
    ax_n.set_ylabel("cells")
    ax_n.set_xlim(0, 1)
    return save_figure(fig, path)


def importance_heatmap(per_class, top: dict, names: dict, path: Path, *, title: str) -> Path:
    """Classes x the union of their top genes (in class order), mean importance; a gene's
    column is labelled by its symbol where known."""
    genes = list(dict.fromkeys(g for label in per_class.index for g in top.get(label, [])))
    values = per_class[genes].to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * n_cols + 3), max(3, 0.35 * n_rows + 2)))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_cols), [tick_label(names.get(g, g), 16) for g in genes], rotation=90,
                  fontsize=7)  # fmt: skip
    ax.set_yticks(range(n_rows), map(tick_label, per_class.index), fontsize=8)
    ax.set_xlabel("gene")
    ax.set_ylabel("predicted label")
    fig.colorbar(image, ax=ax, label="mean importance")
    ax.set_title(title)
    return save_figure(fig, path)


def dotplot_figure(adata, genes: dict, groupby: str):
    """scanpy's dot plot of `genes` (label -> var names) per `groupby` group: fraction of the
    group's cells expressing each gene and their mean expression."""
    import scanpy as sc

    groups = [g for g in genes if g in set(adata.obs[groupby].astype(str))]
    work = adata[adata.obs[groupby].astype(str).isin(groups)].copy()
    work.obs[groupby] = pd.Categorical(work.obs[groupby].astype(str), categories=groups)
    plot = sc.pl.dotplot(work, {g: genes[g] for g in groups}, groupby=groupby, show=False,
                         return_fig=True)  # fmt: skip
    plot.make_figure()
    return plt.gcf() if plot.fig is None else plot.fig


def explain_dotplot(adata, genes: dict, path: Path) -> Path:
    """Dot plot of each predicted label's top genes (`genes`: label -> var names)."""
    return save_figure(dotplot_figure(adata, genes, "predicted_label"), path)
