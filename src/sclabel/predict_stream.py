"""Prediction over data bigger than memory: chunk by chunk into a file, resumable.

Each chunk of cells is predicted and written as its own part file under `.OUT.parts/` (one
atomic rename per part); a rerun with `resume=True` skips the parts already there. When
every part exists they are joined into OUT (.parquet, .csv, .tsv, or an .h5ad holding only
obs and obsm), the parts are deleted, and memory never held more than one chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from tqdm.auto import tqdm

from sclabel._atomic import atomic_path
from sclabel.data import genes, io
from sclabel.data.normalize import log_normalize, prepare_rows
from sclabel.data.store import Store
from sclabel.errors import InputError
from sclabel.models.base import predict_proba
from sclabel.predict import UNKNOWN, model_batches

if TYPE_CHECKING:
    from sclabel.model import Model

SUFFIXES = {".parquet", ".csv", ".tsv", ".h5ad"}


def predict_to_file(
    model: Model,
    source: ad.AnnData | Store,
    out: str | Path,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    unknown_threshold: float | None = None,
    min_gene_coverage: float | None = None,
    key_added: str = "sclabel",
    chunk_size: int = 65_536,
    batch_size: int = 2048,
    resume: bool = False,
    progress: bool = True,
    task: str | None = None,
) -> StreamResult:
    """Predict every cell of a (backed) AnnData or a store into `out`, one chunk at a time.

    `task` picks the label column of a multi-task model (default: its primary column)."""
    index = model.task_index(task)
    classes = list(model.tasks.values())[index]
    out = Path(out)
    if out.suffix.lower() not in SUFFIXES:
        raise InputError(f"--out must end in {', '.join(sorted(SUFFIXES))}, got {out.name}")
    if unknown_threshold is not None and not 0 <= unknown_threshold <= 1:
        raise InputError("unknown_threshold must be between 0 and 1")
    if model.data_config.obsm_key is not None:
        msg = (
            f"this model reads obsm[{model.data_config.obsm_key!r}], which is held in memory "
            "anyway: predict in memory (drop --backed and --resume)"
        )
        raise InputError(msg)
    reader = _ChunkReader(model, source, layer, gene_key, min_gene_coverage)
    parts = out.with_name(f".{out.name}.parts")
    meta = {
        "model": _fingerprint(model),
        "input": reader.describe,
        "n_cells": reader.n_cells,
        "chunk_size": chunk_size,
        "unknown_threshold": unknown_threshold,
        "task": index,
    }
    _start_parts(parts, meta, resume)
    present = model.present_inputs(reader.alignment.present)
    starts = range(0, reader.n_cells, chunk_size)
    with reader.names() as names:
        bar = tqdm(starts, desc="predicting", unit="chunk", disable=not progress or len(starts) < 2)
        for i, start in enumerate(bar):
            stop = min(start + chunk_size, reader.n_cells)
            chunk_names = list(itertools.islice(names, stop - start))
            part = parts / f"part-{i:06d}.parquet"
            if part.exists():
                continue  # done before an interruption
            X = model.inputs(reader.chunk(start, stop))
            sparse = model.module.sparse_input
            batches = model_batches(X, present, batch_size=batch_size, sparse=sparse)
            proba = predict_proba(model.module, batches, task=index).numpy()
            frame = _frame(chunk_names, classes, proba, unknown_threshold)
            with atomic_path(part) as tmp:
                frame.to_parquet(tmp, index=False)
    files = sorted(parts.glob("part-*.parquet"))
    labels = [pq.read_table(f, columns=["label"]).column("label").to_pandas() for f in files]
    counts = pd.concat(labels).value_counts()  # one string column: small next to the parts
    _join(files, out, classes, key_added)
    shutil.rmtree(parts)
    return StreamResult(out, reader.n_cells, reader.alignment.coverage, counts)


@dataclass
class StreamResult:
    path: Path
    n_cells: int
    coverage: float
    label_counts: pd.Series


class _ChunkReader:
    """Rows start:stop of the input, aligned and normalized the way the model was trained."""

    def __init__(self, model, source, layer, gene_key, min_gene_coverage):
        coverage = min_gene_coverage or model.data_config.min_gene_coverage
        self.target_sum = model.data_config.target_sum
        self.source = source
        if isinstance(source, Store):
            if layer is not None:
                raise InputError("a store has one matrix: drop --layer")
            vocab = source.vocabulary
            var = pd.DataFrame(index=pd.Index(vocab.ids))
            if vocab.symbols is not None:
                var["gene_symbols"] = list(vocab.symbols)
            self.n_cells, self.describe = source.n_cells, f"store {source.path.resolve()}"
        else:
            io.check_cells(source)
            self.X, var = io.matrix(source, layer)
            self.kind = io.detect_values(self.X).kind
            self.n_cells = source.n_obs
            path = source.filename if source.isbacked else None
            self.describe = f"h5ad {Path(path).resolve()}" if path else "in-memory AnnData"
        self.alignment = genes.align(
            var, model.vocabulary, gene_key=gene_key, min_coverage=coverage
        )

    def chunk(self, start: int, stop: int) -> sp.csr_matrix:
        if not isinstance(self.source, Store):
            return prepare_rows(
                self.X[start:stop],
                kind=self.kind,
                alignment=self.alignment,
                target_sum=self.target_sum,
                first_row=start,
            )
        raw = self.source.read_block(start, stop)
        ratio = self.target_sum / self.source.meta["target_sum"]
        return log_normalize(raw, self.source.size_factor[start:stop] * ratio, self.alignment)

    @contextlib.contextmanager
    def names(self):
        """Cell names in order, lazily (a store's names are read line by line)."""
        if not isinstance(self.source, Store):
            yield iter(self.source.obs_names)
            return
        with open(self.source.path / "obs_names.txt", encoding="utf-8") as handle:
            yield (line.rstrip("\n") for line in handle)


def _frame(names, classes, proba, unknown_threshold) -> pd.DataFrame:
    confidence = proba.max(axis=1)
    labels = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    if unknown_threshold is not None:
        labels[confidence < unknown_threshold] = UNKNOWN
    frame = pd.DataFrame(
        {"cell": names, "label": labels, "confidence": confidence, "uncertainty": 1 - confidence}
    )
    probs = pd.DataFrame(proba, columns=[f"p_{c}" for c in classes])
    return pd.concat([frame, probs], axis=1)


def _fingerprint(model: Model) -> str:
    digest = hashlib.sha256(json.dumps(model.config_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _start_parts(parts: Path, meta: dict, resume: bool) -> None:
    if parts.exists():
        if not resume:
            msg = (
                f"an interrupted prediction left {parts}; pass --resume to continue it, "
                "or delete that folder to start again"
            )
            raise InputError(msg)
        old = json.loads((parts / "meta.json").read_text())
        changed = [k for k in meta if old.get(k) != meta[k]]
        if changed:
            msg = (
                f"cannot resume: {', '.join(changed)} differ from the interrupted run; "
                f"delete {parts} to start again"
            )
            raise InputError(msg)
        return
    parts.mkdir(parents=True)
    (parts / "meta.json").write_text(json.dumps(meta, indent=1))


def _join(files: list[Path], out: Path, classes: list[str], key_added: str) -> None:
    """Concatenate the parts into `out` without holding more than one part in memory."""
    suffix = out.suffix.lower()
    with atomic_path(out) as tmp:
        if suffix == ".parquet":
            with pq.ParquetWriter(tmp, pq.read_schema(files[0])) as writer:
                for f in files:
                    writer.write_table(pq.read_table(f))
        elif suffix in {".csv", ".tsv"}:
            with open(tmp, "w", encoding="utf-8") as handle:
                for i, f in enumerate(files):
                    frame = pd.read_parquet(f)
                    frame.to_csv(
                        handle, sep="\t" if suffix == ".tsv" else ",", header=i == 0, index=False
                    )
        else:
            _write_h5ad(files, tmp, classes, key_added)


def _write_h5ad(files: list[Path], path: Path, classes: list[str], key_added: str) -> None:
    """obs (label, confidence, uncertainty) and obsm probabilities, written part by part."""
    import h5py

    columns = ["cell", "label", "confidence", "uncertainty"]
    obs = pa.concat_tables([pq.read_table(f, columns=columns) for f in files]).to_pandas()
    obs = obs.set_index("cell")
    obs.index.name = None
    obs.columns = [f"{key_added}_{c}" for c in obs.columns]
    obs[f"{key_added}_label"] = pd.Categorical(obs[f"{key_added}_label"])
    adata = ad.AnnData(obs=obs, uns={f"{key_added}_classes": list(classes)})
    adata.write_h5ad(path)
    p_columns = [f"p_{c}" for c in classes]
    with h5py.File(path, "a") as handle:
        data = handle["obsm"].create_dataset(
            f"{key_added}_probabilities", shape=(len(obs), len(classes)), dtype="float32"
        )
        data.attrs["encoding-type"] = "array"
        data.attrs["encoding-version"] = "0.2.0"
        start = 0
        for f in files:
            block = pq.read_table(f, columns=p_columns).to_pandas().to_numpy(np.float32)
            data[start : start + len(block)] = block
            start += len(block)
