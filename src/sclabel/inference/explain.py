"""Which genes a model looked at: per-cell gene importances, per-class means, a table and plots.

Two ways to weigh genes, one per kind of model:

- `mask`: TabNet's feature mask (each step's attention weighted by that step's decision
  magnitude, as TabNet's own explain). An ensemble of TabNets averages its members' masks.
- `gradient`: input x gradient of the predicted class's logit, its positive part (the evidence
  a gene's expression gave for the label the cell got). Works for every gene-input family
  (linear, celltypist, mlp, tabnet, and their ensembles); one backward pass per batch.

`method="auto"` takes the mask where the model has one. Either way each cell's importances
sum to 1, so per-class means compare across cells and classes (a cell with no positive
evidence at all, e.g. an empty one, has importances of 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sclabel.config import EXPLAIN_METHODS
from sclabel.data.loader import PRESENT_KEY, X_KEY, cell_bar, counted, iterate_batches
from sclabel.errors import InputError
from sclabel.models import rules

if TYPE_CHECKING:
    from sclabel.inference.model import Model

METHODS = EXPLAIN_METHODS


@dataclass
class Explanation:
    """`importance` is cells x model genes; each row sums to 1 (0 for genes never used).
    `expression` is the model's input for those cells (log1p of counts per 10k for count
    models): what the dot plot shows."""

    obs_names: pd.Index
    genes: list[str]
    importance: np.ndarray
    labels: np.ndarray  # the predicted label of each cell
    symbols: list[str] | None = None  # gene symbols, when the model knows them
    method: str = "mask"
    expression: sp.csr_matrix | np.ndarray | None = None

    def per_class(self) -> pd.DataFrame:
        """Mean importance per predicted class (classes x genes); computed once."""
        if getattr(self, "_per_class", None) is None:
            frame = pd.DataFrame(self.importance, columns=self.genes, copy=False)
            self._per_class = frame.groupby(self.labels).mean()
        return self._per_class.copy()

    def top_genes(self, n: int = 10, *, symbols: bool = False) -> dict[str, list[str]]:
        """The `n` most important genes of each predicted class, most important first (gene
        ids; `symbols=True`: their symbols where the model knows them)."""
        names = dict(zip(self.genes, self.names, strict=True)) if symbols else None
        return {
            c: [names[g] if names else g for g in row.nlargest(n).index]
            for c, row in self.per_class().iterrows()
        }

    @property
    def names(self) -> list[str]:
        """Gene symbols where known, else the ids (labels for tables and plots)."""
        return list(self.symbols) if self.symbols is not None else list(self.genes)

    def to_table(self, n: int = 10) -> pd.DataFrame:
        """One row per (predicted class, rank): gene id, symbol, mean importance, and the
        fraction of the class's cells that express the gene (when the input was kept)."""
        per_class = self.per_class()
        sizes = pd.Series(self.labels).value_counts()
        position = {g: i for i, g in enumerate(self.genes)}
        rows = []
        for label, row in per_class.iterrows():
            cells = np.flatnonzero(self.labels == label)
            for rank, (gene, value) in enumerate(row.nlargest(n).items(), start=1):
                entry = {
                    "predicted_label": label,
                    "cells": int(sizes[label]),
                    "rank": rank,
                    "gene_id": gene,
                    "gene_symbol": self.names[position[gene]],
                    "importance": float(value),
                }
                if self.expression is not None:
                    column = self.expression[cells, position[gene]]
                    column = column.toarray() if sp.issparse(column) else np.asarray(column)
                    entry["fraction_expressing"] = float((column > 0).mean())
                    entry["mean_expression"] = float(column.mean())
                rows.append(entry)
        return pd.DataFrame(rows)

    def to_adata(self) -> ad.AnnData:
        """The explained cells as an AnnData: X the model input, obs the predicted label,
        var the genes (index: symbols when known, made unique), obsm the importances."""
        if self.expression is None:
            raise InputError("this explanation kept no input; explain with keep_input=True")
        adata = ad.AnnData(
            self.expression,
            obs=pd.DataFrame(
                {"predicted_label": pd.Categorical(self.labels.astype(str))},
                index=self.obs_names.astype(str),
            ),
            var=pd.DataFrame({"gene_id": self.genes}, index=pd.Index(self.names).astype(str)),
        )
        adata.var_names_make_unique()
        adata.obsm["importance"] = self.importance
        return adata

    def write(self, out_dir, n: int = 10, n_plot: int = 4) -> dict[str, Path]:
        """A folder (written whole or not at all) with `top_genes.csv` (`to_table(n)`),
        `importance_per_class.csv` (genes x classes), `top_genes.png` (a heat map of each
        class's `n_plot` top genes) and, with the input kept, `dotplot.png` (their expression
        per predicted label). Returns the paths written."""
        from sclabel.evaluation.plots import explain_dotplot, importance_heatmap
        from sclabel.io.atomic import atomic_dir

        out = Path(out_dir)
        names = {"table": "top_genes.csv", "per_class": "importance_per_class.csv",
                 "heatmap": "top_genes.png", "dotplot": "dotplot.png"}  # fmt: skip
        if self.expression is None:
            del names["dotplot"]
        top = self.top_genes(n_plot)
        with atomic_dir(out, marker=names["table"], what="explain output") as tmp:
            self.to_table(n).to_csv(tmp / names["table"], index=False)
            per_class = self.per_class()
            labelled = per_class.T
            labelled.index = [f"{g} ({s})" if s != g else g for g, s in
                              zip(self.genes, self.names, strict=True)]  # fmt: skip
            labelled.to_csv(tmp / names["per_class"], index_label="gene")
            symbol = dict(zip(self.genes, self.names, strict=True))
            importance_heatmap(per_class, top, symbol, tmp / names["heatmap"],
                               title=f"gene importance ({self.method})")  # fmt: skip
            if self.expression is not None:
                adata = self.to_adata()
                var = dict(zip(adata.var["gene_id"], adata.var_names, strict=True))
                genes = {label: [var[g] for g in ids] for label, ids in top.items()}
                explain_dotplot(adata, genes, tmp / names["dotplot"])
        return {key: out / name for key, name in names.items()}


def cell_importance(
    module, x: torch.Tensor, method: str, present: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(importances, logits) of a batch of model inputs; `method` "mask" or "gradient";
    `present`: which model genes the query has (models that leave missing genes out)."""
    if method == "mask":
        with torch.no_grad():
            return module.explain_batch(x)
    # the positive part of input x gradient of each cell's predicted logit, summing to 1
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        batch = {X_KEY: x} if present is None else {X_KEY: x, PRESENT_KEY: present}
        logits = module(batch).logits
        chosen = logits.argmax(dim=1, keepdim=True)
        (grad,) = torch.autograd.grad(logits.gather(1, chosen).sum(), x)
    score = (x.detach() * grad).clamp_min(0)
    return score / score.sum(dim=1, keepdim=True).clamp_min(1e-12), logits.detach()


def _method(model: Model, method: str) -> str:
    if method not in METHODS:
        raise InputError(f"explain method must be one of {', '.join(METHODS)}, not {method!r}")
    capabilities = model.module.capabilities
    if method == "mask":
        rules.check(model.family, capabilities, explain=True)
    if capabilities.genes_only:
        raise InputError(
            f"{model.family} models read genes as tokens; explain works on gene-input models "
            "(linear, celltypist, mlp, tabnet and their ensembles)"
        )
    if model.projection is not None:
        raise InputError("a pca-input model weighs principal components, not genes")
    if method == "auto":
        return "mask" if capabilities.explains else "gradient"
    return method


def explain(
    model: Model,
    adata: ad.AnnData,
    *,
    method: str = "auto",
    layer: str | None = None,
    gene_key: str | None = None,
    min_gene_coverage: float | None = None,
    chunk_size: int = 4096,
    batch_size: int = 512,
    keep_input: bool = True,
    progress: bool = True,
) -> Explanation:
    """Gene importances for every cell (see the module docstring for `method`). Holds cells x
    genes floats: subset large data first (e.g. a few thousand cells per label)."""
    method = _method(model, method)
    module = model.module
    bound = model.input_spec.bind(
        adata, layer=layer, gene_key=gene_key, min_gene_coverage=min_gene_coverage
    )
    if bound.values is not None:
        raise InputError("a model on an obsm embedding weighs its dimensions, not genes")
    module.eval()
    importance, predicted, kept = [], [], []
    present = bound.present
    with cell_bar(bound.n_cells, "explaining", progress) as bar:
        for chunk in bound.chunks(chunk_size):
            for batch in counted(iterate_batches(chunk, batch_size=batch_size), bar):
                weights, logits = cell_importance(module, batch[X_KEY], method, present)
                importance.append(weights.numpy())
                predicted.append(logits.argmax(dim=1).numpy())
            if keep_input:
                kept.append(sp.csr_matrix(chunk, dtype=np.float32))
    classes = np.asarray(model.classes, dtype=object)
    symbols = model.vocabulary.symbols
    return Explanation(
        obs_names=bound.source.obs_names(),
        genes=list(model.genes),
        importance=np.concatenate(importance),
        labels=classes[np.concatenate(predicted)],
        symbols=None if symbols is None else list(symbols),
        method=method,
        expression=sp.vstack(kept, format="csr") if kept else None,
    )
