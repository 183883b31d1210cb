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

from sclabel.data.genes import Vocabulary
from sclabel.data.inputs import InputSpec
from sclabel.data.loader import X_KEY, cell_bar, counted, iterate_batches
from sclabel.errors import InputError
from sclabel.io.sources import AnnDataSource
from sclabel.models import MODELS, rules

POOLED_FAMILIES = {"bert": "bert", "sclabel-perceiver": "perceiver"}


@dataclass
class Embedder:
    """A module that gives cell vectors, with the input it reads."""

    module: torch.nn.Module
    inputs: InputSpec | None  # None: the query's own genes (pretrained models bind to them)

    def bind(self, adata, *, layer: str | None = None, gene_key: str | None = None):
        """The query's input; a pretrained model is first bound to the query's genes."""
        if self.inputs is not None:
            return self.inputs.bind(adata, layer=layer, gene_key=gene_key)
        source = AnnDataSource(adata, layer)
        vocabulary, gene_key = Vocabulary.from_var(source.var, gene_key)
        self.module.bind(vocabulary)
        return InputSpec(vocabulary, gene_key=gene_key).bind(source, gene_key=gene_key)

    def vectors(self, x: torch.Tensor) -> np.ndarray:
        if isinstance(self.module, _PretrainedCells):
            return self.module.embed(x).float().numpy()
        embedding = self.module({X_KEY: x}).embedding
        if embedding is None:
            raise InputError(
                "this model has no cell embedding (an ensemble: embed with one member)"
            )
        return embedding.float().numpy()


def load_embedder(
    path: str | Path,
    *,
    pooling: str | None = None,
    max_len: int | None = None,
    tokenizer: str | Path | None = None,
) -> Embedder:
    """A sclabel model folder (`sclabel train`) or a pretrained one (`sclabel pretrain`,
    a Geneformer V1/V2 folder, its vocabulary beside it or in `tokenizer`); `max_len`
    defaults to the pretrained model's input size."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InputError(f"{path} is not a model folder (no config.json)")
    config = json.loads(config_path.read_text())
    if "family" in config:  # a trained sclabel model
        from sclabel.inference.model import Model

        model = Model.load(path)
        if model.input_spec.kind != "genes":
            msg = f"{path} was trained on {model.training_input} input, not genes: it has no "
            msg += "gene-level encoder to embed with; use the embedding it was trained on"
            raise InputError(msg)
        rules.check(model.family, model.module.capabilities, pooling=pooling, embed=True)
        return Embedder(model.module, model.input_spec)
    kind = POOLED_FAMILIES.get(config.get("model_type") or config.get("architecture"))
    if kind is None:
        raise InputError(f"{path}: not a BERT or sclabel Perceiver checkpoint (config.json)")
    params = {"from_dir": str(path), "max_len": max_len, "pooling": pooling or "mean"}
    if tokenizer is not None:
        params["tokenizer"] = str(tokenizer)
    return Embedder(_PretrainedCells(MODELS[kind], params), inputs=None)


class _PretrainedCells(torch.nn.Module):
    """A pretrained encoder bound to a query's genes when the query arrives."""

    def __init__(self, family, params: dict) -> None:
        super().__init__()
        self.family, self.params = family, params
        self.bound: torch.nn.Module | None = None
        self.vocabulary: Vocabulary | None = None

    def bind(self, vocabulary: Vocabulary) -> None:
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
    bound = embedder.bind(adata, layer=layer, gene_key=gene_key)
    embedder.module.eval()
    with torch.no_grad(), cell_bar(bound.n_cells, "embedding", progress) as bar:
        for chunk in bound.chunks(chunk_size):
            batches = counted(iterate_batches(chunk, batch_size=batch_size), bar)
            parts = [embedder.vectors(b[X_KEY]) for b in batches]
            yield np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def embed(
    adata: ad.AnnData,
    model: str | Path | Embedder,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    key_added: str = "X_sclabel",
    pooling: str | None = None,
    chunk_size: int = 8192,
    progress: bool = True,
) -> np.ndarray:
    """Cell embeddings of `adata` from a trained or pretrained model (a folder or a loaded
    `Embedder`), written to `adata.obsm[key_added]` and returned."""
    embedder = model if isinstance(model, Embedder) else load_embedder(model, pooling=pooling)
    blocks = cell_embeddings(
        embedder, adata, layer=layer, gene_key=gene_key, chunk_size=chunk_size, progress=progress
    )
    values = np.concatenate(list(blocks))
    adata.obsm[key_added] = values
    return values


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

    from sclabel.io.atomic import atomic_path

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
