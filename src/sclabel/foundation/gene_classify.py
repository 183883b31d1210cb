"""Gene classification on contextual gene embeddings, with k-fold cross-validation over genes.

Geneformer's gene tasks (e.g. dosage-sensitive vs insensitive transcription factors) ask
whether a pretrained model's view of a gene predicts a property of the gene. Here the
embeddings come from `gene_embeddings` below (each gene's hidden state averaged over
the cells it is expressed in) and a scaled, class-balanced logistic regression is fitted per
fold: cheap, and it measures what the embedding holds rather than what a deep head can learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from sclabel.data.inputs import BoundInput
from sclabel.data.loader import X_KEY, cell_bar, counted, iterate_batches
from sclabel.errors import InputError
from sclabel.inference.embed import Embedder

MIN_PER_CLASS = 3


@dataclass
class GeneClassification:
    classes: list[str]
    folds: list[dict]  # fold, n_train, n_test, auroc, macro_f1
    n_genes: int
    unmatched: int  # labelled genes without an embedding

    def summary(self) -> dict:
        out = {}
        for key in ("auroc", "macro_f1"):
            values = np.array([f[key] for f in self.folds], dtype=float)
            out[key] = {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values))}
        return out

    def to_markdown(self) -> str:
        lines = ["| fold | train genes | test genes | AUROC | macro-F1 |", "|---|---|---|---|---|"]
        lines += [
            f"| {f['fold']} | {f['n_train']} | {f['n_test']} | {f['auroc']:.3f} | "
            f"{f['macro_f1']:.3f} |"
            for f in self.folds
        ]
        s = self.summary()
        lines.append(
            f"| mean ± sd | | | {s['auroc']['mean']:.3f} ± {s['auroc']['std']:.3f} | "
            f"{s['macro_f1']['mean']:.3f} ± {s['macro_f1']['std']:.3f} |"
        )
        return "\n".join(lines) + "\n"

    def save(self, out: str | Path) -> Path:
        """cv.json (classes, folds, summary) and cv.md in the folder `out`, atomically."""
        import json

        from sclabel.io.atomic import atomic_dir

        with atomic_dir(out, marker="cv.json", what="gene classification") as folder:
            info = {
                "classes": self.classes,
                "n_genes": self.n_genes,
                "unmatched": self.unmatched,
                "folds": self.folds,
                "summary": self.summary(),
            }
            (folder / "cv.json").write_text(json.dumps(info, indent=1))
            (folder / "cv.md").write_text(self.to_markdown())
        return Path(out)


def read_gene_labels(path: str | Path, *, gene_column: str, label_column: str) -> pd.Series:
    """A .csv/.tsv table of genes and labels -> labels indexed by gene id."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"gene label table {path} not found")
    table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    for column in (gene_column, label_column):
        if column not in table.columns:
            raise InputError(f"{path} has no column {column!r}; columns: {list(table.columns)}")
    table = table.dropna(subset=[gene_column, label_column])
    table[gene_column] = table[gene_column].astype(str).str.strip()
    repeated = table[gene_column][table[gene_column].duplicated()]
    if not repeated.empty:
        raise InputError(f"{path}: gene {repeated.iloc[0]!r} is listed more than once")
    return pd.Series(
        table[label_column].astype(str).to_numpy(), index=pd.Index(table[gene_column]), name="label"
    )


def classify_genes(
    embeddings: pd.DataFrame, labels: pd.Series, *, folds: int = 5, seed: int = 0
) -> GeneClassification:
    """Stratified k-fold over the labelled genes that have an embedding."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = embeddings.drop(columns=["n_cells"], errors="ignore")
    matched = labels[labels.index.isin(features.index)]
    unmatched = int(labels.size - matched.size)
    classes = sorted(matched.unique())
    counts = matched.value_counts()
    if len(classes) < 2 or counts.min() < max(MIN_PER_CLASS, folds):
        msg = (
            f"{matched.size} of {labels.size} labelled genes have an embedding, with classes "
            f"{counts.to_dict()}; need 2+ classes with at least {max(MIN_PER_CLASS, folds)} genes "
            "each (check that gene ids match the model's, e.g. Ensembl vs symbols)"
        )
        raise InputError(msg)
    X = features.loc[matched.index].to_numpy(np.float64)
    y = pd.Categorical(matched, categories=classes).codes
    results = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (train, test) in enumerate(splitter.split(X, y)):
        classifier = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced")
        )
        classifier.fit(X[train], y[train])
        proba = classifier.predict_proba(X[test])
        if len(classes) == 2:
            auroc = roc_auc_score(y[test], proba[:, 1])
        else:
            auroc = roc_auc_score(y[test], proba, multi_class="ovr", labels=np.arange(len(classes)))
        results.append(
            {
                "fold": fold,
                "n_train": int(train.size),
                "n_test": int(test.size),
                "auroc": float(auroc),
                "macro_f1": float(f1_score(y[test], proba.argmax(1), average="macro")),
            }
        )
    return GeneClassification(classes, results, int(matched.size), unmatched)


def gene_embeddings(
    embedder: Embedder,
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    max_cells: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> pd.DataFrame:
    """Contextual gene embeddings: each gene's final hidden state, averaged over the cells of
    `adata` in whose first `max_len` ranked genes it appears (BERT; a Perceiver has no
    per-gene states and gives its gene-id embedding). Index: gene id; column `n_cells`."""
    subset = adata if max_cells is None else adata[: min(max_cells, adata.n_obs)]
    query = embedder.bind(subset, layer=layer, gene_key=gene_key)
    bound = getattr(embedder.module, "bound", embedder.module)  # the classifier family
    if not bound.capabilities.pretrained:
        raise InputError("gene embeddings need a bert or perceiver model")
    vocabulary = query.spec.vocabulary
    sums = counts = None
    for chunk_x in _batches(query, batch_size, progress):
        tokens, states = bound.gene_states(chunk_x)
        if sums is None:
            sums = torch.zeros(bound.n_tokens, states.shape[-1], dtype=torch.float64)
            counts = torch.zeros(bound.n_tokens, dtype=torch.float64)
        flat = tokens.reshape(-1)
        sums.index_add_(0, flat, states.reshape(flat.numel(), -1).double())
        counts.index_add_(0, flat, torch.ones(flat.numel(), dtype=torch.float64))
    token = bound.cells.gene_token.numpy()
    keep = (token >= 0) & (counts[np.clip(token, 0, None)].numpy() > 0)
    means = (sums[token[keep]] / counts[token[keep]].unsqueeze(1)).float().numpy()
    frame = pd.DataFrame(means, index=pd.Index(np.asarray(vocabulary.ids)[keep], name="gene"))
    frame.columns = [f"dim_{i}" for i in range(frame.shape[1])]
    frame["n_cells"] = counts[token[keep]].numpy().astype(np.int64)
    return frame


def _batches(query: BoundInput, batch_size: int, progress: bool):
    with torch.no_grad(), cell_bar(query.n_cells, "gene states", progress) as bar:
        for chunk in query.chunks(8192):
            for batch in counted(iterate_batches(chunk, batch_size=batch_size), bar):
                yield batch[X_KEY]
