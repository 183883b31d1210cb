"""Where predictions go: one list of output formats, one writer per format.

Both prediction sinks write through these functions, frame by frame, so a file written
from an in-memory AnnData and one written chunk by chunk from a backed file or a store are
the same file, and memory never holds more than one frame of answers.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from sclabel.errors import InputError

# --out suffix -> what is written. Tables: one row per cell, "cell" first. An .h5ad is the
# input AnnData (its matrix, obs, obsm, ...) with the answers added: obs columns
# {key}_label/_confidence/_uncertainty, obsm[{key}_probabilities] (a DataFrame, one column
# per class) and uns[{key}_classes]; a store has no AnnData, so from a store it holds the
# cells and the answers only. The same with or without --backed.
OUTPUT_FORMATS = {
    ".csv": "comma-separated table",
    ".tsv": "tab-separated table",
    ".parquet": "Parquet table",
    ".h5ad": "the input AnnData with the answers added",
}
TABLES = (".csv", ".tsv", ".parquet")


def check_output(path: str | Path, formats=tuple(OUTPUT_FORMATS)) -> Path:
    """Refuse an output the writers cannot produce, before any work is spent."""
    path = Path(path)
    if path.suffix.lower() not in formats:
        msg = f"--out must end in {', '.join(formats)}, got {path.name}"
        raise InputError(msg)
    if path.is_dir():
        raise InputError(f"--out {path} is a folder; give a file name ending in {path.suffix}")
    parent = path.parent if str(path.parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write --out {path}: {existing} is not a writable folder")
    return path


PROBABILITY = "p_"  # the prefix of a frame's probability columns


def answer_names(frame: pd.DataFrame) -> list[str]:
    """A prediction frame's answers: every column but the class probabilities (label,
    confidence, uncertainty, sets, majority voting, mapping score, agreement, ...)."""
    return [c for c in frame.columns if not str(c).startswith(PROBABILITY)]


def answer_columns(frame: pd.DataFrame, key_added: str) -> dict[str, pd.Series | np.ndarray]:
    """The obs columns of a prediction frame's answers, as `{key_added}_{name}`; text
    columns (labels, sets, clusters) as categoricals."""
    columns = {}
    for name in answer_names(frame):
        values = frame[name].to_numpy()
        text = values.dtype == object
        columns[f"{key_added}_{name}"] = pd.Categorical(values) if text else values
    return columns


def answer_uns(key_added: str, vote=None, shift: dict | None = None,
               sets: dict | None = None) -> dict:  # fmt: skip
    """The whole-query answers as `uns` holds them: the vote table, the shift check and the
    sets' rule, each under `{key_added}_...` when there is one."""
    uns = {}
    if vote is not None:
        uns[f"{key_added}_majority_voting"] = vote_summary(vote)
    if shift is not None:
        uns[f"{key_added}_shift"] = dict(shift)
    if sets is not None:
        uns[f"{key_added}_sets"] = dict(sets)
    return uns


def vote_summary(vote) -> dict:
    """The majority vote as `uns` holds it: where the clusters came from and the table."""
    table = vote.table.reset_index()
    return {
        "source": vote.source,
        "clusters": {c: table[c].to_numpy() for c in table.columns},
    }


def write_table(frames: Iterable[pd.DataFrame], path: Path, suffix: str) -> None:
    """Prediction frames (index "cell") into one table, frame by frame: memory holds one."""
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer = None
        try:
            for frame in frames:
                table = pa.Table.from_pandas(frame.reset_index(), preserve_index=False)
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
        return
    with open(path, "w", encoding="utf-8", newline="") as handle:
        for i, frame in enumerate(frames):
            frame.to_csv(handle, sep="\t" if suffix == ".tsv" else ",", header=i == 0)


def write_h5ad(
    path: Path,
    frames: Callable[[], Iterable[pd.DataFrame]],
    *,
    base: ad.AnnData | None,
    names: pd.Index,
    classes: list[str],
    key_added: str,
    uns: dict | None = None,
) -> None:
    """The AnnData `base` (backed: its file is copied, never loaded) with the answers of
    `frames()` added; `base=None` (a store) gives the cells and the answers only. Class
    probabilities are written frame by frame, so memory holds one frame of them."""
    import h5py

    if base is not None and base.isbacked:
        shutil.copyfile(base.filename, path)
        obs = base.obs.copy()
    else:
        (base if base is not None else ad.AnnData(obs=pd.DataFrame(index=names))).write_h5ad(path)
        obs = base.obs.copy() if base is not None else pd.DataFrame(index=names)
    answers = pd.concat([frame[answer_names(frame)] for frame in frames()])
    if not answers.index.equals(pd.Index(names)):
        raise InputError("the answers do not match the cells of the input; nothing was written")
    for column, values in answer_columns(answers, key_added).items():
        obs[column] = values
    with h5py.File(path, "a") as handle:
        del handle["obs"]
        if f"{key_added}_probabilities" in handle.get("obsm", {}):
            del handle["obsm"][f"{key_added}_probabilities"]
        ad.io.write_elem(handle, "obs", obs)
        group = handle["uns"] if "uns" in handle else handle.create_group("uns")
        if f"{key_added}_classes" in group:
            del group[f"{key_added}_classes"]
        ad.io.write_elem(group, f"{key_added}_classes", np.asarray(classes, dtype=object))
        for name, value in (uns or {}).items():
            if name in group:
                del group[name]
            ad.io.write_elem(group, name, value)
        _write_probabilities(handle, frames(), names, classes, f"{key_added}_probabilities")


def _write_probabilities(handle, frames, names: pd.Index, classes: list[str], key: str) -> None:
    """obsm[key] in anndata's DataFrame encoding (one float32 column per class, named by
    it), filled frame by frame."""
    obsm = handle["obsm"] if "obsm" in handle else handle.create_group("obsm")
    ad.io.write_elem(obsm, key, pd.DataFrame(index=names))  # the index, written once
    group = obsm[key]
    columns = []
    for name in classes:
        column = group.create_dataset(str(name), shape=(len(names),), dtype="float32")
        column.attrs["encoding-type"] = "array"
        column.attrs["encoding-version"] = "0.2.0"
        columns.append(column)
    group.attrs["column-order"] = np.asarray([str(c) for c in classes], dtype=object)
    start = 0
    for frame in frames:
        block = frame[[f"p_{c}" for c in classes]].to_numpy(np.float32)
        for i, column in enumerate(columns):
            column[start : start + len(block)] = block[:, i]
        start += len(block)
