"""What a biologist looks at after annotating a query: the HTML report's sections.

- the labels found, with confidence and how many cells stayed "unknown";
- an embedding of the query (its own `obsm["X_umap"]`, or a UMAP of the model's input built
  with scanpy on up to `max_cells` cells) coloured by label, by confidence and by agreement
  (between the members of a consensus, or between each cell and its cluster's vote);
- a dot plot of the genes that drive each predicted label in the model itself: TabNet's
  attention masks, or for other gene-input families the positive part of input x gradient of
  the label's logit (for a linear model: expression x weight), averaged over the cells given
  that label (`sclabel.inference.explain.cell_importance`, what `sclabel explain` uses);
- the majority-voting table.

`Prediction.to_report` writes them as report.html (self-contained) with a report.md beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sclabel.evaluation.html import Section

log = logging.getLogger("sclabel")
MAX_CELLS = 20_000  # cells drawn in the embedding and used for markers (a seeded sample)
PER_LABEL = 300  # cells per label used to rank marker genes


def summary_section(prediction) -> Section:
    labels = pd.Series(prediction.labels)
    frame = pd.DataFrame({"cells": labels.value_counts()})
    frame["share"] = frame["cells"] / len(labels)
    frame["mean confidence"] = pd.Series(prediction.confidence).groupby(labels).mean()
    frame.index.name = "predicted label"
    section = Section("Predicted labels")
    unknown = int((labels == "unknown").sum())
    section.text(
        f"{len(labels):,} cells, {labels.nunique()} labels; {unknown:,} cells 'unknown'"
        + (
            f" (confidence below {prediction.unknown_threshold:.3g})"
            if prediction.unknown_threshold is not None
            else ""
        )
        + (f"; {prediction.coverage:.1%} of the model's genes found" if prediction.coverage else "")
    )
    if prediction.sets is not None:
        section.text(sets_line(prediction))
    if prediction.shift and prediction.shift["flagged"]:
        section.text("Note: " + prediction.shift["message"] + ".", note=True)
    return section.table(frame)


def sets_line(prediction) -> str:
    """'90% prediction sets (weighted conformal ...): 91.2% of cells one label, ...'."""
    _, sizes = prediction.prediction_sets()
    shares = ", ".join(
        f"{np.mean(which):.1%} {name}"
        for name, which in (
            ("one label", sizes == 1),
            ("two or more (ambiguous)", sizes > 1),
            ("none (atypical)", sizes == 0),
        )
    )
    sets = prediction.sets
    return f"{100 * sets['coverage']:g}% prediction sets ({sets['note']}): {shares} of cells"


def model_values(bound, rows: np.ndarray):
    """For `rows`: the model's genes, log-normalized (gene and pca input), or the embedding
    the model reads (obsm input)."""
    if bound.values is not None:
        return np.asarray(bound.rows(rows), dtype=np.float32)
    return bound.normalized(rows)


def embedding(bound, rows: np.ndarray, x) -> tuple[np.ndarray, str]:
    """2-D coordinates of `rows`: the query's own UMAP when it has one, else one built."""
    import anndata as ad
    import scanpy as sc

    adata = getattr(bound.source, "adata", None)
    if adata is not None and "X_umap" in adata.obsm and len(adata.obsm["X_umap"]) == adata.n_obs:
        return np.asarray(adata.obsm["X_umap"])[rows, :2], "the query's obsm['X_umap']"
    what = "the model's input" if bound.values is not None else "the model's genes, log-normalized"
    work = ad.AnnData(x.astype(np.float32) if sp.issparse(x) else np.asarray(x, np.float32))
    from sclabel.inference.voting import neighbour_graph

    n_comps = max(2, min(30, work.n_obs - 1, work.n_vars - 1))
    sc.pp.pca(work, n_comps=n_comps, random_state=0)
    # the graph majority voting builds (scanpy's `neighbors` weights, in numpy: umap's numba
    # version compiled for ~11 s in every new process, most of a small report's time)
    k = min(15, work.n_obs - 1)
    work.obsp["connectivities"] = neighbour_graph(work.obsm["X_pca"], k=k)
    work.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "params": {"n_neighbors": k, "method": "umap", "random_state": 0},
    }
    sc.tl.umap(work, random_state=0)
    return work.obsm["X_umap"], f"UMAP of {what} (scanpy: PCA, 15 neighbours)"


def agreement(prediction) -> tuple[np.ndarray, str] | None:
    if "agreement" in prediction.extra:
        return np.asarray(prediction.extra["agreement"], dtype=float), "share of members agreeing"
    if prediction.vote is not None:
        return prediction.vote.agrees(prediction.labels).astype(float), "label = cluster vote"
    return None


def embedding_section(bound, prediction, rows, x) -> Section:
    """`prediction` holds the cells of `rows` (in that order)."""
    import matplotlib.pyplot as plt

    coords, how = embedding(bound, rows, x)
    labels = np.asarray(prediction.labels, dtype=object)
    panels = [("predicted label", None), ("confidence", prediction.confidence)]
    agree = agreement(prediction)
    if agree is not None:
        panels.append((f"agreement ({agree[1]})", agree[0]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.8), layout="constrained")
    size = max(1.0, min(12.0, 6000 / len(rows)))
    for ax, (title, values) in zip(np.atleast_1d(axes), panels, strict=True):
        if values is None:
            names = sorted(set(labels))
            colours = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
            for i, name in enumerate(names):
                keep = labels == name
                ax.scatter(*coords[keep].T, s=size, color=colours(i % colours.N), label=name,
                           linewidths=0)  # fmt: skip
            ax.legend(
                fontsize=7, markerscale=3, loc="best", frameon=False, ncol=1 + len(names) // 14
            )
        else:
            art = ax.scatter(*coords.T, s=size, c=values, cmap="viridis", vmin=0, vmax=1,
                             linewidths=0)  # fmt: skip
            fig.colorbar(art, ax=ax, shrink=0.8)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    section = Section("Embedding")
    section.text(f"{len(rows):,} cells; {how}.", note=True)
    return section.figure(fig, "embedding coloured by label, confidence and agreement")


def marker_genes(
    model, x, labels: np.ndarray, n: int = 4, seed: int = 0, present=None
) -> dict[str, list[int]]:
    """Per predicted label, the model-gene positions that drive it most (see the module
    docstring), from up to PER_LABEL of that label's cells; `present`: which model genes
    the query has (`BoundInput.present`), for models that leave missing genes out, so the
    network sees what prediction saw."""
    from sclabel.inference.explain import cell_importance

    module = model.module
    module.eval()
    classes = list(model.classes)
    method = "mask" if module.capabilities.explains else "gradient"
    markers, rng = {}, np.random.default_rng(seed)
    for label in sorted(set(labels) & set(classes)):
        cells = np.flatnonzero(labels == label)
        if cells.size > PER_LABEL:
            cells = np.sort(rng.choice(cells, PER_LABEL, replace=False))
        block = x[cells]
        dense = block.toarray() if sp.issparse(block) else np.asarray(block)
        inputs = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
        score = cell_importance(module, inputs, method, present)[0].mean(0)
        markers[label] = [int(i) for i in torch.argsort(score, descending=True)[:n]]
    return markers


def dotplot_section(model, x, labels: np.ndarray, n: int = 4, present=None) -> Section:
    import anndata as ad

    from sclabel.evaluation.plots import dotplot_figure

    section = Section("Marker genes per predicted label")
    family = model.family
    how = "TabNet attention masks" if family == "tabnet" else "input x gradient of each label"
    markers = marker_genes(model, x, labels, n, present=present)
    if not markers:
        return section.text("no labelled cells to rank genes on", note=True)
    names = list(model.vocabulary.symbols or model.genes)
    genes = {label: [names[i] for i in positions] for label, positions in markers.items()}
    work = ad.AnnData(x.astype(np.float32) if sp.issparse(x) else np.asarray(x, np.float32))
    work.var_names = pd.Index(names).astype(str)
    work.var_names_make_unique()
    work.obs["predicted"] = pd.Categorical(np.asarray(labels, dtype=str))
    unique = {label: [work.var_names[names.index(g)] for g in gs] for label, gs in genes.items()}
    figure = dotplot_figure(work, unique, "predicted")
    section.text(
        f"The {n} genes that drive each label in this {family} model ({how}), shown as the "
        "fraction of the label's cells expressing them and their mean log-normalized "
        "expression.",
        note=True,
    )
    section.figure(figure, "dot plot of marker genes")
    table = pd.DataFrame({"marker genes": {k: ", ".join(v) for k, v in genes.items()}})
    table.index.name = "predicted label"
    return section.table(table)


def vote_section(vote) -> Section:
    section = Section("Majority voting over clusters")
    section.text(f"clusters: {vote.source}", note=True)
    return section.table(vote.table.reset_index(), index=False)


def annotation_sections(prediction, bound=None, model=None, rows=None, *,
                        n_markers: int = 4) -> list[Section]:  # fmt: skip
    """The report's sections. `prediction` holds the cells of `rows` (row numbers of the
    query that `bound` reads; default: all); without `bound` there is no embedding, and
    without a gene-input `model` no marker genes."""
    sections = [summary_section(prediction)]
    if bound is not None:
        rows = np.arange(len(prediction.labels)) if rows is None else rows
        x = model_values(bound, rows)
        sections.append(embedding_section(bound, prediction, rows, x))
        # markers need a model that reads the genes themselves (not an embedding, principal
        # components or rank tokens)
        genes_in = model is not None and model.input_spec.kind == "genes"
        if genes_in and not model.module.capabilities.pretrained:
            labels = np.asarray(prediction.labels, dtype=object)
            sections.append(dotplot_section(model, x, labels, n_markers, bound.present))
    if prediction.vote is not None:
        sections.append(vote_section(prediction.vote))
    return sections


def markdown(prediction, title: str) -> str:
    """report.md: the tables of the HTML report (the figures are in report.html)."""
    labels = pd.Series(prediction.labels)
    lines = [f"# {title}", "", f"{len(labels):,} cells. Figures: report.html.", ""]
    if prediction.sets is not None:
        lines += [sets_line(prediction) + ".", ""]
    if prediction.shift and prediction.shift["flagged"]:
        lines += [f"**Note:** {prediction.shift['message']}.", ""]
    counts = labels.value_counts()
    lines += ["| predicted label | cells | share |", "|---|---|---|"]
    lines += [f"| {k} | {v:,} | {v / len(labels):.1%} |" for k, v in counts.items()]
    if prediction.vote is not None:
        table = prediction.vote.table.reset_index()
        lines += ["", "## Majority voting", "", f"clusters: {prediction.vote.source}", ""]
        lines += ["| " + " | ".join(map(str, table.columns)) + " |"]
        lines += ["|" + "---|" * len(table.columns)]
        for row in table.itertuples(index=False):
            cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(out_dir, prediction, *, bound=None, model=None, rows=None,
                 title: str = "sclabel annotation") -> Path:  # fmt: skip
    """report.html (self-contained) and report.md in `out_dir`, atomically."""
    from sclabel.evaluation.html import page
    from sclabel.io.atomic import atomic_dir

    sections = annotation_sections(prediction, bound, model, rows)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, marker="report.html", what="report") as tmp:
        (tmp / "report.md").write_text(markdown(prediction, title))
        (tmp / "report.html").write_text(page(title, sections))
    return out_dir
