"""Cell and gene embeddings from a trained sclabel model or a pretrained foundation model.

`cell_embeddings` streams a query chunk by chunk (in memory or backed) and yields one block
of embeddings per chunk, so the caller writes them to `.obsm`, a parquet file or a `.npy`
without holding more than a chunk. The representation is what a classifier head sees
(`ModelOutput.embedding`): the last hidden layer of an mlp, the pooled BERT states (mean of
gene states, or the first position), the Perceiver's latent mean.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from sclabel.data import genes, io
from sclabel.data.loader import X_KEY, iterate_batches
from sclabel.data.normalize import iter_prepared
from sclabel.errors import InputError
from sclabel.models import MODELS

POOLED_FAMILIES = {"bert": "bert", "sclabel-perceiver": "perceiver"}


@dataclass
class Embedder:
    """A module whose `embed(x)` gives cell vectors, with the genes and normalization it wants."""

    module: torch.nn.Module
    vocabulary: genes.Vocabulary | None  # None: the query's own genes (pretrained models)
    target_sum: float = 1e4
    min_gene_coverage: float = 0.5


def load_embedder(path: str | Path, *, pooling: str | None = None, max_len: int = 2048) -> Embedder:
    """A sclabel model folder (`sclabel train`) or a pretrained one (`sclabel pretrain`,
    a Geneformer checkpoint with its tokenizer files)."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InputError(f"{path} is not a model folder (no config.json)")
    config = json.loads(config_path.read_text())
    if "family" in config:  # a trained sclabel model
        from sclabel.model import Model

        model = Model.load(path)
        if model.data_config.obsm_key is not None or model.projection is not None:
            msg = f"{path} was trained on {model.training_input} input, not genes: it has no "
            msg += "gene-level encoder to embed with; use the embedding it was trained on"
            raise InputError(msg)
        if pooling is not None and model.family not in ("bert", "perceiver"):
            raise InputError(f"--pooling applies to bert/perceiver models, not {model.family}")
        module = model.module
        return Embedder(
            module,
            model.vocabulary,
            model.data_config.target_sum,
            model.data_config.min_gene_coverage,
        )
    kind = POOLED_FAMILIES.get(config.get("model_type") or config.get("architecture"))
    if kind is None:
        raise InputError(f"{path}: not a BERT or sclabel Perceiver checkpoint (config.json)")
    params = {"from_dir": str(path), "max_len": max_len, "pooling": pooling or "mean"}
    return Embedder(_PretrainedCells(MODELS[kind], params), vocabulary=None)


class _PretrainedCells(torch.nn.Module):
    """A pretrained encoder bound to a query's genes when the query arrives."""

    def __init__(self, family, params: dict) -> None:
        super().__init__()
        self.family, self.params = family, params
        self.bound: torch.nn.Module | None = None
        self.vocabulary: genes.Vocabulary | None = None

    def bind(self, vocabulary: genes.Vocabulary) -> None:
        """Load the pretrained weights for these genes; `sclabel embed --genes` asks twice
        for the same query, and the weights are read once."""
        from sclabel.models import resolve_params

        if self.bound is not None and vocabulary == self.vocabulary:
            return
        self.vocabulary = vocabulary
        params = self.family.Params(**resolve_params(self.family.family, self.params))
        self.bound = self.family(len(vocabulary.ids), 1, params)
        self.bound.bind(vocabulary)
        self.bound.eval()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.bound.embed(x)


def cell_embeddings(
    embedder: Embedder,
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    chunk_size: int = 8192,
    batch_size: int = 64,
    progress: bool = True,
) -> Iterator[np.ndarray]:
    """One float32 block (cells x dims) per chunk of `adata`, in row order."""
    io.check_cells(adata)
    vocabulary = embedder.vocabulary
    if vocabulary is None:
        vocabulary, gene_key = genes.Vocabulary.from_var(io.matrix(adata, layer)[1], gene_key)
        embedder.module.bind(vocabulary)
    chunks = _prepared_chunks(
        embedder, vocabulary, adata, layer, gene_key, chunk_size, progress, "embedding"
    )
    module = embedder.module
    module.eval()
    with torch.no_grad():
        for chunk in chunks:
            parts = [
                _embed(module, b[X_KEY]) for b in iterate_batches(chunk, batch_size=batch_size)
            ]
            yield np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _prepared_chunks(embedder, vocabulary, adata, layer, gene_key, chunk_size, progress, desc):
    """Chunks of `adata` aligned to `vocabulary` and normalized as the embedder wants."""
    X, var = io.matrix(adata, layer)
    alignment = genes.align(
        var, vocabulary, gene_key=gene_key, min_coverage=embedder.min_gene_coverage
    )
    return iter_prepared(
        X,
        kind=io.detect_values(X).kind,
        alignment=alignment,
        target_sum=embedder.target_sum,
        chunk_size=chunk_size,
        progress=progress,
        desc=desc,
    )


def _embed(module, x: torch.Tensor) -> np.ndarray:
    if hasattr(module, "embed"):
        return module.embed(x).float().numpy()
    out = module({X_KEY: x})
    if out.embedding is None:
        raise InputError("this model has no cell embedding (an ensemble: embed with one member)")
    return out.embedding.float().numpy()


def write_embeddings(
    blocks: Iterator[np.ndarray],
    obs_names: pd.Index,
    out: str | Path,
    *,
    key_added: str,
    obs: pd.DataFrame | None = None,
) -> Path:
    """Stream blocks into `.parquet` (one row group per chunk) or `.npy`; an `.h5ad` gets
    the cells' `obs` columns (labels, patients: any head can train on it with
    `--obsm-key key_added`) and `.obsm[key_added]`, no genes. Written under a temporary
    name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sclabel._atomic import atomic_path

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in {".parquet", ".npy", ".h5ad"}:
        raise InputError(f"--out must end in .parquet, .npy or .h5ad, got {out.name}")
    with atomic_path(out) as tmp:
        if suffix == ".parquet":
            writer, start = None, 0
            for block in blocks:
                names = obs_names[start : start + len(block)]
                table = pa.table(
                    {"cell": pa.array(names.astype(str)), **_columns(block, key_added)}
                )
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                start += len(block)
            if writer is not None:
                writer.close()
        else:
            matrix = np.concatenate(list(blocks))
            if suffix == ".npy":
                with open(tmp, "wb") as handle:  # np.save(path) would append ".npy"
                    np.save(handle, matrix)
            else:
                frame = pd.DataFrame(index=obs_names) if obs is None else obs.copy()
                frame.index = obs_names.astype(str)
                result = ad.AnnData(obs=frame)
                result.obsm[key_added] = matrix
                result.write_h5ad(tmp)
    return out


def _columns(block: np.ndarray, key: str) -> dict:
    import pyarrow as pa

    return {f"{key}_{i}": pa.array(block[:, i]) for i in range(block.shape[1])}


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
    module = embedder.module
    if embedder.vocabulary is None:
        vocabulary, _ = genes.Vocabulary.from_var(io.matrix(adata, layer)[1], gene_key)
        module.bind(vocabulary)
        bound = module.bound
    else:
        vocabulary, bound = embedder.vocabulary, module
    if not hasattr(bound, "gene_states"):
        raise InputError("gene embeddings need a bert or perceiver model")
    subset = adata if max_cells is None else adata[: min(max_cells, adata.n_obs)]
    sums = counts = None
    for chunk_x in _prepared_batches(
        embedder, vocabulary, subset, layer, gene_key, batch_size, progress
    ):
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


def _prepared_batches(embedder, vocabulary, adata, layer, gene_key, batch_size, progress):
    chunks = _prepared_chunks(
        embedder, vocabulary, adata, layer, gene_key, 8192, progress, "gene states"
    )
    with torch.no_grad():
        for chunk in chunks:
            for batch in iterate_batches(chunk, batch_size=batch_size):
                yield batch[X_KEY]
