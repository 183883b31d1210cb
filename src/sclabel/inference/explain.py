"""Which genes a TabNet model looked at: per-cell feature-mask importances, per-class means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import torch

from sclabel.data.loader import X_KEY, iterate_batches
from sclabel.errors import InputError
from sclabel.models import rules

if TYPE_CHECKING:
    from sclabel.inference.model import Model


@dataclass
class Explanation:
    """`importance` is cells x model genes; each row sums to 1 (0 for genes never attended)."""

    obs_names: pd.Index
    genes: list[str]
    importance: np.ndarray
    labels: np.ndarray  # the predicted label of each cell

    def per_class(self) -> pd.DataFrame:
        """Mean importance per predicted class (classes x genes)."""
        frame = pd.DataFrame(self.importance, columns=self.genes)
        return frame.groupby(self.labels).mean()

    def top_genes(self, n: int = 10) -> dict[str, list[str]]:
        """The `n` most important genes of each predicted class, most important first."""
        return {c: list(row.nlargest(n).index) for c, row in self.per_class().iterrows()}


@torch.no_grad()
def explain(
    model: Model,
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    min_gene_coverage: float | None = None,
    chunk_size: int = 4096,
    progress: bool = True,
) -> Explanation:
    """Feature-mask importances for every cell. Holds cells x genes floats: subset large data."""
    module = model.module
    if model.projection is not None:
        raise InputError("a pca-input model weighs principal components, not genes")
    rules.check(model.family, module.capabilities, explain=True)
    bound = model.input_spec.bind(
        adata, layer=layer, gene_key=gene_key, min_gene_coverage=min_gene_coverage
    )
    module.eval()
    importance, predicted = [], []
    for chunk in bound.chunks(chunk_size, progress=progress, desc="explaining"):
        for batch in iterate_batches(chunk, batch_size=1024):
            weights, logits = module.explain_batch(batch[X_KEY])
            importance.append(weights.numpy())
            predicted.append(logits.argmax(dim=1).numpy())
    classes = np.asarray(model.classes, dtype=object)
    return Explanation(
        obs_names=bound.source.obs_names(),
        genes=list(model.genes),
        importance=np.concatenate(importance),
        labels=classes[np.concatenate(predicted)],
    )
