"""The one input pipeline: what a model reads, fitted on the reference, applied to every query.

    reference (training)                         query (predict, evaluate, explain, embed)
    InputSpec.fit(source, config, parts) --saved in the checkpoint--> spec.bind(source)
                                                                      -> BoundInput.chunks()

An `InputSpec` owns every decision about a model's input: the genes (or embedding
dimensions) it reads, how a query's genes are aligned onto them, the normalization
(log1p of counts scaled to `target_sum` per cell, library size over all of a cell's genes in
its own file) and the input kind: genes, an `.obsm` embedding, or principal components of
normalized expression fitted on the training cells. Training, in-memory and streamed
prediction, explain, embed, store building and the disease runner all call it, so their
inputs are equal by construction. It is saved in a checkpoint under the keys it always had
(genes.json, pca.safetensors, config.json's data and preprocessing entries).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sclabel.data.features import Projection, embedding_vocabulary, fit_pca, read_obsm
from sclabel.data.genes import GeneAlignment, Vocabulary, align, restrict
from sclabel.data.normalize import log_normalize, log_normalize_within
from sclabel.errors import InputError
from sclabel.io.sources import RowSource, as_source

log = logging.getLogger("sclabel")
NORMALIZED = "log1p(counts / total_counts * target_sum)"
# where a cell's library size is summed: all of its genes in its own file (scanpy, CellTypist
# and sclabel's training), or only the genes the model reads (scTab's published recipe)
LIBRARY_SIZES = {
    "cell": NORMALIZED,
    "model_genes": "log1p(counts / total_counts over the model's genes * target_sum)",
}


# what was done to the training values, by what they were (io.read.detect_values)
TRAINING_TRANSFORMS = {
    "counts": NORMALIZED,
    "log1p": "log1p-normalized input used as given (assumed normalized to target_sum)",
    "log1p_rescaled": "expm1 of the log1p input, each cell rescaled to target_sum, log1p",
    "log2": "2^x - 1 of the log2(x+1) input, each cell rescaled to target_sum, log1p",
    "normalized": "per-cell-normalized input (CPM/TPM/FPKM) rescaled to target_sum, log1p",
}


@dataclass(frozen=True)
class InputSpec:
    """A model's input, as fitted on its training data (see the module docstring)."""

    vocabulary: Vocabulary  # model genes, or for obsm input the embedding's dimension names
    target_sum: float = 1e4
    min_gene_coverage: float = 0.5
    gene_key: str | None = None  # the var key the training genes were read from
    obsm_key: str | None = None  # read this embedding instead of genes
    projection: Projection | None = None  # pca input: fitted on the training cells
    training_input: str = "counts"  # what the training values were (counts, log1p, ...)
    library_size: str = "cell"  # a key of LIBRARY_SIZES

    def __post_init__(self) -> None:
        if self.library_size not in LIBRARY_SIZES:
            msg = f"library_size must be one of {sorted(LIBRARY_SIZES)}, not {self.library_size!r}"
            raise InputError(msg)

    @property
    def kind(self) -> str:
        if self.obsm_key is not None:
            return "obsm"
        return "genes" if self.projection is None else "pca"

    @property
    def n_inputs(self) -> int:
        """Width of the model's input: genes, embedding dimensions or components."""
        if self.projection is not None:
            return self.projection.n_components
        return len(self.vocabulary.ids)

    @property
    def transform(self) -> str:
        """The transform applied to a query, as config.json records it."""
        if self.kind == "obsm":
            return f"obsm[{self.obsm_key!r}] as given"
        if self.kind == "pca":
            return f"top {self.n_inputs} principal components of {NORMALIZED}"
        if self.library_size == "cell" and self.training_input in TRAINING_TRANSFORMS:
            return TRAINING_TRANSFORMS[self.training_input]
        return LIBRARY_SIZES[self.library_size]

    def describe(self) -> str:
        if self.kind == "obsm":
            return f"{self.n_inputs} dimensions of obsm[{self.obsm_key!r}]"
        if self.kind == "pca":
            return f"{len(self.vocabulary.ids)} genes -> {self.n_inputs} principal components"
        return f"{len(self.vocabulary.ids)} genes"

    def project(self, normalized):
        """Model input from normalized rows over the model's genes (identity for genes)."""
        return normalized if self.projection is None else self.projection.apply(normalized)

    def with_projection(self, projection: Projection) -> InputSpec:
        return replace(self, projection=projection)

    def bind(
        self,
        data,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        min_gene_coverage: float | None = None,
        values: str | None = None,
    ) -> BoundInput:
        """This input applied to a query (AnnData, store, SOMA source): genes aligned and
        coverage checked once; rows are then read, normalized and projected on demand.
        `values` says what the query holds (counts, log1p, log2, normalized) instead of
        detecting it."""
        source = as_source(data, layer, values)
        if self.kind == "obsm":
            values = _embedding(source, self.obsm_key, width=self.n_inputs)
            return BoundInput(self, source, None, values)
        report = source.values
        log.info("input: %s", report.detail)
        alignment = align(
            source.var,
            self.vocabulary,
            gene_key=gene_key,
            min_coverage=min_gene_coverage or self.min_gene_coverage,
        )
        return BoundInput(self, source, alignment, None)

    @classmethod
    def fit(
        cls,
        data,
        parts: dict[str, np.ndarray],
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        obsm_key: str | None = None,
        pca: int | None = None,
        target_sum: float = 1e4,
        min_gene_coverage: float = 0.5,
        seed: int = 0,
        progress: bool = False,
        values: str | None = None,
        genes: tuple[pd.DataFrame, str] | None = None,
    ) -> tuple[InputSpec, dict[str, np.ndarray | sp.csr_matrix]]:
        """Fit the input on a reference held in memory; returns the spec and the model input
        of each part's rows (`parts`: name -> sorted row numbers). `genes`: (a var-like
        table, its name): train only on the genes it shares (e.g. a query's)."""
        source = as_source(data, layer, values)
        if obsm_key is not None:
            values = _embedding(source, obsm_key)
            spec = cls(
                embedding_vocabulary(obsm_key, values.shape[1]),
                target_sum=target_sum,
                min_gene_coverage=min_gene_coverage,
                obsm_key=obsm_key,
                training_input="embedding",
            )
            return spec, {name: values[rows] for name, rows in parts.items()}
        if getattr(source, "X", True) is None or source.var.shape[0] == 0:
            obsm = list(source.adata.obsm) if hasattr(source, "adata") else []
            msg = f"this AnnData has no genes; train on an embedding (obsm: {obsm})"
            raise InputError(msg)
        report = source.values
        log.info("input: %s", report.detail)
        vocabulary, used_key = Vocabulary.from_var(source.var, gene_key)
        if genes is not None:
            vocabulary = restrict(vocabulary, *genes)
        spec = cls(
            vocabulary,
            target_sum=target_sum,
            min_gene_coverage=min_gene_coverage,
            gene_key=used_key,
            training_input=report.kind,
        )
        bound = BoundInput(spec, source, align(source.var, vocabulary, gene_key=used_key), None)
        matrices = {
            name: bound.gather(rows, progress=progress, desc=f"preparing {name}", project=False)
            for name, rows in parts.items()
        }
        if pca is not None:
            spec = spec.with_projection(fit_pca(matrices["train"], pca, seed=seed))
            matrices = {name: spec.project(m) for name, m in matrices.items()}
        return spec, matrices


@dataclass
class BoundInput:
    """An `InputSpec` bound to one query: rows in, model input out, chunk by chunk."""

    spec: InputSpec
    source: RowSource
    alignment: GeneAlignment | None  # None for obsm input
    values: np.ndarray | None  # obsm input: the query's embedding

    @property
    def n_cells(self) -> int:
        return self.source.n_cells

    @property
    def coverage(self) -> float | None:
        """Fraction of the model's genes found in the query (None: the model reads an
        embedding, not genes)."""
        return None if self.alignment is None else self.alignment.coverage

    @property
    def present(self) -> torch.Tensor:
        """One bool per model input: the query's genes, or for an embedding and for
        principal components (each computed from whichever genes were present) all."""
        if self.alignment is None or self.spec.projection is not None:
            return torch.ones(self.spec.n_inputs, dtype=torch.bool)
        return torch.from_numpy(self.alignment.present)

    def normalized(self, rows: slice | np.ndarray) -> sp.csr_matrix:
        """log1p-normalized rows over the model's genes (before any projection)."""
        raw, factors = self.source.count_rows(rows, self.spec.target_sum)
        if self.spec.library_size == "model_genes":
            return log_normalize_within(raw, self.alignment, self.spec.target_sum)
        return log_normalize(raw, factors, self.alignment)

    def rows(self, rows: slice | np.ndarray):
        """Model input of rows start:stop (a slice) or of sorted row numbers."""
        if self.values is not None:
            return self.values[rows]
        return self.spec.project(self.normalized(rows))

    def chunks(
        self,
        chunk_size: int,
        *,
        rows: np.ndarray | None = None,
        progress: bool = False,
        desc: str = "reading",
        project: bool = True,
    ) -> Iterator[sp.csr_matrix | np.ndarray]:
        """Model input of every row (or of sorted `rows`), `chunk_size` rows at a time; the
        bar (cells) moves as the consumer finishes each chunk."""
        from sclabel.data.loader import cell_bar

        n = self.n_cells if rows is None else rows.size
        read = self.rows if project else self.normalized
        with cell_bar(n, desc, progress) as bar:
            for start in range(0, n, chunk_size):
                stop = min(start + chunk_size, n)
                yield read(slice(start, stop) if rows is None else rows[start:stop])
                bar.update(stop - start)

    def gather(self, rows: np.ndarray, *, chunk_size: int = 8192, project: bool = True, **options):
        """The model input of sorted `rows` as one matrix, read chunk by chunk."""
        parts = list(self.chunks(chunk_size, rows=rows, project=project, **options))
        if self.values is not None or (project and self.spec.projection is not None):
            return np.concatenate([np.zeros((0, self.spec.n_inputs), np.float32), *parts])
        empty = sp.csr_matrix((0, len(self.spec.vocabulary.ids)), dtype=np.float32)
        return sp.vstack([empty, *parts], format="csr")


def _embedding(source: RowSource, key: str, width: int | None = None) -> np.ndarray:
    """`obsm[key]` of the source's AnnData as a checked float32 cells x dims array."""
    adata = getattr(source, "adata", None)
    if adata is None:
        msg = f"{source.name} holds genes only: obsm[{key!r}] input needs an AnnData (.h5ad)"
        raise InputError(msg)
    return read_obsm(adata, key, width=width)
