"""Reference mapping: label query cells by their nearest reference cells, with a score that
says how well each query cell maps at all.

As scArches/scANVI and SCimilarity map cells onto an atlas, a model keeps an index of labelled
reference cells in its own representation: the embedding a classifier head reads (mlp hidden
layer, TabNet decision, pooled BERT/Perceiver states), or, for families without one (linear,
celltypist, ensembles), a PCA of the model's normalized input fitted on the reference. A
query cell gets the distance-weighted vote of its k nearest reference cells (the vote shares
are its probabilities) and a mapping score: the share of reference cells that sit farther
from their own k nearest neighbours than this cell sits from its k nearest reference cells.
A cell as close to the reference as reference cells are to each other scores about 0.5; a
cell of a type the reference lacks, far from everything, scores near 0.

The index is saved in the model folder as reference.safetensors (points, labels, PCA) plus
its description in config.json, never pickled, and is rebuilt on load; it records the
model's weights and genes, so an index built with another model is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from sclabel.data.features import GenePCA
from sclabel.data.loader import PRESENT_KEY, X_KEY, iterate_batches
from sclabel.errors import InputError
from sclabel.inference.ann import AnnIndex

log = logging.getLogger("sclabel")
K = 15
NOVEL_SCORE = 0.05  # below: the cell maps onto nothing the reference holds


@dataclass
class ReferenceIndex:
    points: np.ndarray  # reference cells x dims, float32
    codes: np.ndarray  # class code per reference cell
    classes: list[str]
    self_distances: np.ndarray  # sorted mean distance of each reference cell to its k nearest
    space: str  # "embedding" or "pca"
    model_digest: str  # the weights and genes it was built with
    k: int = K
    pca: GenePCA | None = None
    info: dict = field(default_factory=dict)
    _index: AnnIndex | None = field(default=None, repr=False)

    @property
    def index(self) -> AnnIndex:
        if self._index is None:
            self._index = AnnIndex.build(self.points)
        return self._index

    # -- building and saving ---------------------------------------------------------

    @classmethod
    def build(cls, model, adata, *, label_key: str, k: int = K, layer=None, gene_key=None,
              progress: bool = False) -> ReferenceIndex:  # fmt: skip
        """Index the labelled cells of `adata` (cells without a label are left out)."""
        from sclabel.data.obs import read_labels

        labels = read_labels(adata.obs, label_key)
        keep = labels.notna().to_numpy()
        if keep.sum() < 2:
            raise InputError(f"label column {label_key!r} labels fewer than 2 cells")
        bound = model.input_spec.bind(adata, layer=layer, gene_key=gene_key)
        space = "embedding" if has_embedding(model) else "pca"
        pca = GenePCA.fit(bound, progress=progress) if space == "pca" else None
        points = represent(model, bound, pca)[keep]
        classes = sorted(set(labels[keep]))
        codes = np.searchsorted(classes, labels[keep].to_numpy(dtype=object).astype(str))
        k = min(k, points.shape[0] - 1)
        index = AnnIndex.build(points)
        _, distances = index.query(points, k + 1)
        self_distances = np.sort(distances[:, 1:].mean(axis=1))  # each cell left out of its own
        info = {"cells": int(keep.sum()), "label_key": label_key, "dims": int(points.shape[1])}
        log.info("reference index: %d cells, %d classes, %s of %d dimensions", keep.sum(),
                 len(classes), space, points.shape[1])  # fmt: skip
        return cls(points.astype(np.float32), codes.astype(np.int32), classes, self_distances,
                   space, model.weights_digest(), k, pca, info, index)  # fmt: skip

    def to_dict(self) -> dict:
        return {"classes": self.classes, "space": self.space, "k": self.k,
                "model_digest": self.model_digest, "info": self.info}  # fmt: skip

    def tensors(self) -> dict[str, torch.Tensor]:
        tensors = {
            "points": torch.from_numpy(self.points),
            "codes": torch.from_numpy(self.codes),
            "self_distances": torch.from_numpy(self.self_distances.astype(np.float32)),
        }
        if self.pca is not None:
            tensors |= {f"pca.{k}": v for k, v in self.pca.tensors().items()}
        return tensors

    @classmethod
    def from_parts(cls, values: dict, tensors: dict) -> ReferenceIndex:
        pca = {k[4:]: v for k, v in tensors.items() if k.startswith("pca.")}
        return cls(
            tensors["points"].numpy(),
            tensors["codes"].numpy(),
            list(values["classes"]),
            tensors["self_distances"].numpy().astype(np.float64),
            values["space"],
            values["model_digest"],
            int(values["k"]),
            GenePCA.from_tensors(pca) if pca else None,
            values.get("info", {}),
        )

    # -- mapping -----------------------------------------------------------------------

    def _vote(self, points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Distance-weighted votes of each point's k nearest reference cells (as class
        probabilities) and its mean distance to its index-k nearest: the distance the
        reference cells' own (`self_distances`) were measured at, whatever k votes."""
        k = min(k, len(self.codes))
        neighbours, distances = self.index.query(points, max(k, self.k))
        weights = 1.0 / np.maximum(distances[:, :k], 1e-6)
        votes = np.zeros((len(points), len(self.classes)), np.float64)
        np.add.at(votes, (np.arange(len(points))[:, None], self.codes[neighbours[:, :k]]), weights)
        probabilities = (votes / votes.sum(axis=1, keepdims=True)).astype(np.float32)
        return probabilities, distances[:, : self.k].mean(axis=1)

    def map_rows(self, model, bound, rows: slice) -> np.ndarray:
        """Class probabilities of a bound query's rows by their nearest reference cells (a
        consensus member answers chunk by chunk)."""
        self._check(model)
        points = represent(model, bound, self.pca, rows=rows)
        return self._vote(points, self.k)[0]

    def _check(self, model) -> None:
        if model.weights_digest() != self.model_digest:
            msg = (
                "this reference index was built with another model (other weights or genes); "
                "rebuild it with this model: sclabel reference REF.h5ad --model MODEL"
            )
            raise InputError(msg)

    def map(self, model, adata, *, k: int | None = None, layer=None, gene_key=None,
            min_gene_coverage=None, progress: bool = False):  # fmt: skip
        """A `Prediction` of `adata` by its nearest reference cells, with `mapping_score`."""
        from sclabel.inference.prediction import Prediction

        self._check(model)
        bound = model.input_spec.bind(adata, layer=layer, gene_key=gene_key,
                                      min_gene_coverage=min_gene_coverage)  # fmt: skip
        probabilities, mean = self._vote(represent(model, bound, self.pca), k or self.k)
        farther = len(self.self_distances) - np.searchsorted(self.self_distances, mean)
        score = (farther / len(self.self_distances)).astype(np.float32)
        return Prediction(
            obs_names=bound.source.obs_names(),
            classes=list(self.classes),
            probabilities=probabilities,
            coverage=bound.coverage,
            extra={"mapping_score": score, "novel": score < NOVEL_SCORE},
        )


def has_embedding(model) -> bool:
    """Does the model's module give a per-cell embedding (a multi-member ensemble does not)?"""
    module = model.module
    return bool(module.capabilities.embeds) and getattr(module, "members", None) is None


@torch.no_grad()
def represent(model, bound, pca: GenePCA | None, *, rows: slice | None = None,
              chunk_size: int = 8192) -> np.ndarray:  # fmt: skip
    """Cells x dims: the model's embedding of the bound input's cells (or of `rows`), or
    their PCA."""
    if rows is not None:
        chunks = [bound.normalized(rows) if pca is not None else bound.rows(rows)]
    else:
        chunks = bound.chunks(chunk_size, project=pca is None)
    if pca is not None:
        return np.concatenate([pca.transform(chunk) for chunk in chunks])
    module = model.module.eval()
    present = bound.present
    parts = []
    for chunk in chunks:
        for batch in iterate_batches(chunk, batch_size=2048):
            out = module({X_KEY: batch[X_KEY], PRESENT_KEY: present})
            parts.append(out.embedding.float().numpy())
    return np.concatenate(parts)
