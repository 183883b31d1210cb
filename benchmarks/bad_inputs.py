"""Every bad input we know of, run through the CLI: its exit status, its message, what it left.

The promise (README): an error a user can fix prints one line (`error: ...`) and exits 2,
and no half-written output is left behind. This runs each case in a fresh folder, in this
process through `sclabel.cli.main` (as `sclabel ARGS`), and writes the table of what
happened to docs/bad-inputs.md, so the table shows the messages users really see.

Usage: python benchmarks/bad_inputs.py
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402

import sclabel  # noqa: E402
from sclabel.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SCTAB_CKPT = (
    DATA
    / "sctab_reference/scTab-checkpoints/scTab/run1/val_f1_macro_epoch=39_val_f1_macro=0.000.ckpt"
)
OUT = ROOT / "docs" / "bad-inputs.md"
SHARED = ROOT.parent / "shared" / "data"


class Payload:
    """Unpickling runs open(marker, "w"): the stand-in for a pickle that runs code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run(args: list, cwd: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            try:
                code = main(["--quiet", *map(str, args)])
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
    return code, err.getvalue()


def predict_cmd(f: Path, *options) -> list:
    """`sclabel predict` of the case folder's cells with its model into p.csv, plus options."""
    return ["predict", f / "cells.h5ad", "--model", f / "model", "--out", f / "p.csv", *options]


def fixtures(base: Path) -> dict[str, Path]:
    """Good inputs to break: cells, a query, a trained model, a store."""
    cells = sclabel.datasets.synthetic(300, 60, 3, 4, seed=0)
    cells.write_h5ad(base / "cells.h5ad")
    model = sclabel.train(cells, label_key="cell_type", split_by="donor", model="linear",
                          max_epochs=2, progress=False)  # fmt: skip
    model.build_reference(cells)  # for `predict --model map:...` and `map`
    model.save(base / "model")
    sclabel.build_store([base / "cells.h5ad"], base / "cells.store", progress=False)
    return {"cells": base / "cells.h5ad", "model": base / "model", "store": base / "cells.store"}


def write_variant(folder: Path, name: str, change) -> Path:
    adata = sclabel.read(folder / "cells.h5ad")
    change(adata)
    path = folder / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_h5ad(path)
    return path


def set_first_value(value):
    def change(adata):
        adata.X.data[0] = value

    return change


def zero_cell(adata):
    X = adata.X.tolil()
    X[3, :] = 0
    adata.X = X.tocsr()


def copy_model(folder: Path, edit) -> Path:
    target = folder / "model-copy"
    shutil.copytree(folder / "model", target)
    edit(target)
    return target


def flip_weight_byte(model: Path) -> None:
    data = bytearray((model / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (model / "model.safetensors").write_bytes(bytes(data))


def reverse_labels(model: Path) -> None:
    labels = json.loads((model / "labels.json").read_text())
    (model / "labels.json").write_text(json.dumps(labels[::-1]))


def newer_format(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "format_version": 99}))


def interrupted(folder: Path, out: str, lock_pid: int | None = None) -> None:
    """A prediction into `out` stopped after two chunks (Ctrl-C, or kill -9 with a pid)."""
    import sclabel.inference.members as engine

    model = sclabel.Model.load(folder / "model")
    real, calls = engine.predict_proba, []

    def stop(*args, **kw):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    engine.predict_proba = stop
    try:
        with contextlib.suppress(KeyboardInterrupt):
            sclabel.predict_to_file(model, sclabel.read(folder / "cells.h5ad"), folder / out,
                                    chunk_size=50, progress=False)  # fmt: skip
    finally:
        engine.predict_proba = real
    parts = folder / f".{out}.parts"
    if lock_pid is not None:
        meta = json.loads((parts / "meta.json").read_text())
        holder = {"pid": lock_pid, "host": socket.gethostname(), "run": meta["run"]}
        (parts / "lock").write_text(json.dumps(holder))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def foreign_index(folder: Path, drop_genes: int = 0) -> Path:
    """Another model holding `model`'s reference index (reference.safetensors and its entry in
    config.json copied over, as a user copying files between folders would); `drop_genes`:
    the other model is trained without the last genes (another gene set)."""
    cells = sclabel.read(folder / "cells.h5ad")
    if drop_genes:
        cells = cells[:, cells.var_names[:-drop_genes]].copy()
    other = sclabel.train(cells, label_key="cell_type", split_by="donor", model="mlp",
                          max_epochs=1, progress=False)  # fmt: skip
    other.save(folder / "other")
    mine = json.loads((folder / "model" / "config.json").read_text())
    theirs = json.loads((folder / "other" / "config.json").read_text())
    shutil.copy(folder / "model" / "reference.safetensors", folder / "other")
    theirs["reference"] = mine["reference"]
    theirs.setdefault("extra_files", {})["reference.safetensors"] = mine["extra_files"][
        "reference.safetensors"
    ]
    (folder / "other" / "config.json").write_text(json.dumps(theirs))
    return folder / "other"


def wrong_graph(folder: Path) -> Path:
    """cells.h5ad with an obsp['connectivities'] of 50 x 50 (written past anndata's check,
    as another tool might)."""
    import h5py
    import scipy.sparse as sp
    from anndata.io import write_elem

    path = folder / "graph.h5ad"
    shutil.copy(folder / "cells.h5ad", path)
    with h5py.File(path, "a") as handle:
        write_elem(handle, "obsp/connectivities", sp.identity(50, format="csr"))
    return path


def hostile_bert(folder: Path) -> Path:
    from sclabel.models.foundation import TINY_BERT

    bert = folder / "bert"
    bert.mkdir()
    config = {**TINY_BERT, "model_type": "bert", "vocab_size": 64}
    (bert / "config.json").write_text(json.dumps(config))
    with open(bert / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"w": Payload(str(folder / "PWNED"))}, handle)
    return bert


def hostile_pickle(folder: Path) -> Path:
    path = folder / "model.pkl"
    path.write_bytes(pickle.dumps({"Model": Payload(str(folder / "PWNED")), "Scaler_": {}}))
    return path


def hostile_ckpt(folder: Path) -> Path:
    import torch

    path = folder / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload(str(folder / "PWNED"))}}, path)
    return path


def other_ckpt(folder: Path) -> Path:
    import torch

    path = folder / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2, 2)}}, path)
    return path


def sctab_args(folder: Path, ckpt: Path, genes: Path | None = None) -> list:
    ref = DATA / "sctab_reference" / "minimal"
    genes = genes or ref / "var.parquet"
    classes = ref / "categorical_lookup" / "cell_type.parquet"
    return ["import-sctab", ckpt, "--genes", genes, "--classes", classes, "--out", folder / "imp"]


def short_gene_table(folder: Path) -> Path:
    import pandas as pd

    path = folder / "var.parquet"
    pd.read_parquet(DATA / "sctab_reference" / "minimal" / "var.parquet")[:1000].to_parquet(path)
    return path


def offline_zoo(folder: Path, cached_index: bool = False) -> None:
    """Point the model index at a closed port on 127.0.0.1 (nothing listens there)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ["SCLABEL_CELLTYPIST_INDEX"] = f"http://127.0.0.1:{port}/models.json"
    os.environ["SCLABEL_CACHE"] = str(folder / ".cache")
    if cached_index:
        index = {"models": [{"filename": "Immune_All_Low.pkl", "url": "http://127.0.0.1:9/x"}]}
        (folder / ".cache" / "celltypist").mkdir(parents=True)
        (folder / ".cache" / "celltypist" / "models.json").write_text(json.dumps(index))


def corpus(folder: Path, interrupted_as: str | None = None) -> Path:
    """A tokenized corpus of the cells (a fitted vocabulary); with `interrupted_as`, the state
    folder an interrupted pretraining into that --out leaves."""
    from sclabel.foundation.corpus import tokenize
    from sclabel.foundation.vocabulary import GeneTokenizer

    cells = sclabel.read(folder / "cells.h5ad")
    store = tokenize([cells], folder / "corpus.store", GeneTokenizer.fit([cells], max_len=32,
                                                                         progress=False),
                     progress=False)  # fmt: skip
    if interrupted_as is not None:
        (folder / f".{interrupted_as}.pretraining").mkdir()
    return store.path


def user_folder(folder: Path) -> Path:
    (folder / "notes").mkdir()
    (folder / "notes" / "mine.txt").write_text("keep")
    return folder / "notes"


def renamed_bert(folder: Path, vocabulary: bool = True, rename: bool = True) -> Path:
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertForMaskedLM

    from sclabel.models.foundation import TINY_BERT

    bert = folder / "renamed"
    BertForMaskedLM(BertConfig(**TINY_BERT, vocab_size=64)).save_pretrained(bert)
    weights = bert / "model.safetensors"
    if rename:
        state = load_file(weights)
        state = {k.replace("attention.self", "attn.me"): v for k, v in state.items()}
        save_file(state, weights, metadata={"format": "pt"})
    if vocabulary:
        (bert / "token_dictionary.pkl").write_bytes(pickle.dumps({"<pad>": 0, "<mask>": 1}))
    return bert


# (case, what is broken, args builder: folder -> argv)
CASES = [
    ("train: input missing", lambda f: ["train", f / "nope.h5ad", "--label-key", "cell_type"]),
    (
        "train: not an HDF5 file",
        lambda f: (
            (f / "junk.h5ad").write_bytes(b"junk")
            and ["train", f / "junk.h5ad", "--label-key", "cell_type"]
        ),
    ),  # fmt: skip
    ("train: label column missing", lambda f: ["train", f / "cells.h5ad", "--label-key", "type"]),
    (
        "train: one class",
        lambda f: [
            "train",
            write_variant(f, "one.h5ad", lambda a: a.obs.__setitem__("cell_type", "T")),
            "--label-key",
            "cell_type",
        ],
    ),
    (
        "train: a NaN value",
        lambda f: [
            "train",
            write_variant(f, "nan.h5ad", set_first_value(np.nan)),
            "--label-key",
            "cell_type",
        ],
    ),
    (
        "train: an infinite value",
        lambda f: [
            "train",
            write_variant(f, "inf.h5ad", set_first_value(np.inf)),
            "--label-key",
            "cell_type",
        ],
    ),
    (
        "train: negative values (scaled data)",
        lambda f: [
            "train",
            write_variant(f, "neg.h5ad", set_first_value(-1.0)),
            "--label-key",
            "cell_type",
        ],
    ),
    (
        "train: normalized, not logged",
        lambda f: [
            "train",
            write_variant(f, "norm.h5ad", set_first_value(123.4)),
            "--label-key",
            "cell_type",
        ],
    ),
    (
        "train: a cell with zero counts",
        lambda f: ["train", write_variant(f, "zero.h5ad", zero_cell), "--label-key", "cell_type"],
    ),
    (
        "train: duplicate cell names",
        lambda f: [
            "train",
            write_variant(f, "dup.h5ad", lambda a: setattr(a, "obs_names", ["c"] * a.n_obs)),
            "--label-key",
            "cell_type",
        ],
    ),
    (
        "train: --out holds other files",
        lambda f: (
            (f / "mine").mkdir()
            or (f / "mine" / "notes.txt").write_text("x")
            and ["train", f / "cells.h5ad", "--label-key", "cell_type", "--out", f / "mine"]
        ),
    ),
    (
        "train: --out is a file",
        lambda f: (
            (f / "m.txt").write_text("x")
            and ["train", f / "cells.h5ad", "--label-key", "cell_type", "--out", f / "m.txt"]
        ),
    ),
    (
        "train: --report holds other files",
        lambda f: (
            (f / "rep").mkdir()
            or (f / "rep" / "x").write_text("x")
            and ["train", f / "cells.h5ad", "--label-key", "cell_type", "--report", f / "rep"]
        ),
    ),
    (
        "train: --split-key with other values",
        lambda f: [
            "train",
            write_variant(f, "split.h5ad", lambda a: a.obs.__setitem__("part", "training")),
            "--label-key",
            "cell_type",
            "--split-key",
            "part",
        ],
    ),
    (
        "train: unknown family",
        lambda f: ["train", f / "cells.h5ad", "--label-key", "cell_type", "--model", "forest"],
    ),
    (
        "train: unknown hyperparameter",
        lambda f: [
            "train",
            f / "cells.h5ad",
            "--label-key",
            "cell_type",
            "--model",
            "mlp",
            "--param",
            "depht=3",
        ],
    ),
    (
        "train: --augment without donors",
        lambda f: ["train", f / "cells.h5ad", "--label-key", "cell_type", "--augment"],
    ),
    (
        "train: --augment with celltypist",
        lambda f: [
            "train",
            f / "cells.h5ad",
            "--label-key",
            "cell_type",
            "--augment",
            "--model",
            "celltypist",
            "--split-by",
            "donor",
        ],
    ),
    (
        "train: --loss focal with celltypist",
        lambda f: [
            "train",
            f / "cells.h5ad",
            "--label-key",
            "cell_type",
            "--model",
            "celltypist",
            "--loss",
            "focal",
        ],
    ),
    (
        "train: --from with mlp",
        lambda f: ["train", f / "cells.h5ad", "--label-key", "cell_type", "--from", f],
    ),
    (
        "train: --obsm-key missing",
        lambda f: ["train", f / "cells.h5ad", "--label-key", "cell_type", "--obsm-key", "X_scvi"],
    ),
    (
        "train: --pca larger than the data",
        lambda f: ["train", f / "cells.h5ad", "--label-key", "cell_type", "--pca", "5000"],
    ),
    (
        "train: --cv 1",
        lambda f: ["train", f / "cells.h5ad", "--label-key", "cell_type", "--cv", "1"],
    ),
    (
        "train: --cv with --resume",
        lambda f: ["train", f / "cells.h5ad", "--label-key", "cell_type", "--cv", "3", "--resume"],
    ),
    (
        "train: a killed run's state, no --resume",
        lambda f: (
            (f / ".m2.training" / "member-0").mkdir(parents=True)
            or ["train", f / "cells.h5ad", "--label-key", "cell_type", "--out", f / "m2"]
        ),
    ),
    (
        "train: --from a pickle that runs code",
        lambda f: [
            "train",
            f / "cells.h5ad",
            "--label-key",
            "cell_type",
            "--model",
            "bert",
            "--from",
            hostile_bert(f),
        ],
    ),
    (
        "predict: model folder missing",
        lambda f: ["predict", f / "cells.h5ad", "--model", f / "none", "--out", f / "p.csv"],
    ),
    (
        "predict: a weight byte flipped",
        lambda f: [
            "predict",
            f / "cells.h5ad",
            "--model",
            copy_model(f, flip_weight_byte),
            "--out",
            f / "p.csv",
        ],
    ),
    (
        "predict: labels.json reordered",
        lambda f: [
            "predict",
            f / "cells.h5ad",
            "--model",
            copy_model(f, reverse_labels),
            "--out",
            f / "p.csv",
        ],
    ),
    (
        "predict: checkpoint from a newer sclabel",
        lambda f: [
            "predict",
            f / "cells.h5ad",
            "--model",
            copy_model(f, newer_format),
            "--out",
            f / "p.csv",
        ],
    ),
    (
        "predict: genes named differently",
        lambda f: [
            "predict",
            write_variant(
                f,
                "sym.h5ad",
                lambda a: (
                    setattr(a, "var_names", [f"S{i}" for i in range(a.n_vars)]),
                    a.var.drop(columns=a.var.columns, inplace=True),
                ),
            ),
            "--model",
            f / "model",
            "--out",
            f / "p.csv",
        ],
    ),
    (
        "predict: --out with another suffix",
        lambda f: ["predict", f / "cells.h5ad", "--model", f / "model", "--out", f / "p.xlsx"],
    ),
    (
        "predict: --out is a folder",
        lambda f: (f / "p.csv").mkdir() or predict_cmd(f),
    ),
    (
        "predict: --unknown-threshold 2",
        lambda f: predict_cmd(f, "--unknown-threshold", "2"),
    ),
    (
        "predict: --task the model lacks",
        lambda f: predict_cmd(f, "--task", "severity"),
    ),
    (
        "predict: interrupted, rerun without --resume",
        lambda f: interrupted(f, "p.csv") or predict_cmd(f, "--chunk-size", "50"),
    ),
    (
        "predict: --resume with another --chunk-size",
        lambda f: interrupted(f, "p.csv") or predict_cmd(f, "--chunk-size", "70", "--resume"),
    ),
    (
        "predict: --resume after the input was regenerated",
        lambda f: (
            interrupted(f, "p.csv")
            or [
                "predict",
                write_variant(
                    f,
                    "cells.h5ad",
                    lambda a: setattr(a, "obs_names", [f"x{i}" for i in range(a.n_obs)]),
                ),
                "--model",
                f / "model",
                "--out",
                f / "p.csv",
                "--chunk-size",
                "50",
                "--resume",
            ]
        ),
    ),
    (
        "predict: another run is writing the same --out",
        lambda f: (
            interrupted(f, "p.csv", lock_pid=os.getpid())
            or predict_cmd(f, "--chunk-size", "50", "--resume")
        ),
    ),
    (
        "predict: a killed run, rerun without --resume",
        lambda f: (
            interrupted(f, "p.csv", lock_pid=dead_pid()) or predict_cmd(f, "--chunk-size", "50")
        ),
    ),
    (
        "evaluate: label column missing",
        lambda f: [
            "evaluate",
            f / "cells.h5ad",
            "--model",
            f / "model",
            "--label-key",
            "type",
            "--out",
            f / "r",
        ],
    ),
    (
        "evaluate: --group-by column missing",
        lambda f: [
            "evaluate",
            f / "cells.h5ad",
            "--model",
            f / "model",
            "--group-by",
            "organ",
            "--out",
            f / "r",
        ],
    ),
    (
        "predict: --cluster-key not in obs",
        lambda f: predict_cmd(f, "--cluster-key", "leiden"),
    ),
    (
        "predict: --model map:DIR whose index another model built",
        lambda f: [
            "predict",
            f / "cells.h5ad",
            "--model",
            f"map:{foreign_index(f)}",
            "--out",
            f / "p.csv",
        ],  # fmt: skip
    ),
    (
        "map: an index another model built",
        lambda f: ["map", f / "cells.h5ad", "--model", foreign_index(f), "--out", f / "p.csv"],
    ),
    (
        "map: an index built on another gene set",
        lambda f: [
            "map",
            f / "cells.h5ad",
            "--model",
            foreign_index(f, drop_genes=10),
            "--out",
            f / "p.csv",
        ],  # fmt: skip
    ),
    (
        "predict --majority-voting: a graph of other cells",
        lambda f: [
            "predict",
            wrong_graph(f),
            "--model",
            f / "model",
            "--majority-voting",
            "--out",
            f / "p.csv",
        ],  # fmt: skip
    ),
    (
        "predict: --levels with classes outside the Cell Ontology",
        lambda f: predict_cmd(f, "--levels", "2"),
    ),
    (
        "predict: --coverage 1.5",
        lambda f: predict_cmd(f, "--coverage", "1.5"),
    ),
    (
        "predict: --sets aps (not a set rule)",
        lambda f: predict_cmd(f, "--coverage", "0.9", "--sets", "aps"),
    ),
    (
        "predict: --sets without --coverage",
        lambda f: predict_cmd(f, "--sets", "split"),
    ),
    (
        "predict: no --out (a usage error)",
        lambda f: ["predict", f / "cells.h5ad", "--model", f / "model"],
    ),
    (
        "predict: --report names a file",
        lambda f: [
            "predict",
            f / "cells.h5ad",
            "--model",
            f / "model",
            "--report",
            f / "cells.h5ad",
            "--out",
            f / "p.csv",
        ],  # fmt: skip
    ),
    (
        "train: --model auto with --param",
        lambda f: [
            "train",
            f / "cells.h5ad",
            "--label-key",
            "cell_type",
            "--model",
            "auto",
            "--param",
            "depth=3",
            "--out",
            f / "m",
        ],  # fmt: skip
    ),
    (
        "evaluate: a store",
        lambda f: ["evaluate", f / "cells.store", "--model", f / "model", "--out", f / "r"],
    ),
    (
        "store: obs column missing",
        lambda f: ["store", f / "cells.h5ad", "--columns", "tissue", "--out", f / "s"],
    ),
    (
        "store: --obs-filter on an .h5ad",
        lambda f: [
            "store",
            f / "cells.h5ad",
            "--obs-filter",
            "tissue == 'blood'",
            "--out",
            f / "s",
        ],
    ),
    (
        "import-celltypist: not a CellTypist model",
        lambda f: (
            (f / "x.pkl").write_bytes(pickle.dumps({"weights": [1]}))
            and ["import-celltypist", f / "x.pkl", "--out", f / "imp"]
        ),
    ),
    (
        "import-celltypist: a pickle that runs code",
        lambda f: ["import-celltypist", hostile_pickle(f), "--out", f / "imp"],
    ),
    (
        "import-sctab: not a checkpoint",
        lambda f: (f / "x.ckpt").write_text("text") and sctab_args(f, f / "x.ckpt"),
    ),
    (
        "import-sctab: a checkpoint that runs code",
        lambda f: sctab_args(f, hostile_ckpt(f)),
    ),
    (
        "import-sctab: another checkpoint layout",
        lambda f: sctab_args(f, other_ckpt(f)),
    ),
    (
        "import-sctab: a gene table of another width",
        lambda f: sctab_args(f, SCTAB_CKPT, short_gene_table(f)),
    ),
    (
        "models get: offline, nothing cached",
        lambda f: offline_zoo(f) or ["models", "get", "Immune_All_Low"],
    ),
    (
        "models get: an unknown name (cached index)",
        lambda f: offline_zoo(f, cached_index=True) or ["models", "get", "Immune_All_Lo"],
    ),
    (
        "train: --from a BERT folder with renamed weights",
        lambda f: [
            "train",
            f / "cells.h5ad",
            "--label-key",
            "cell_type",
            "--model",
            "bert",
            "--from",
            renamed_bert(f),
            "--out",
            f / "tuned",
        ],  # fmt: skip
    ),
    (
        "embed: a Geneformer folder without its vocabulary",
        lambda f: [
            "embed",
            f / "cells.h5ad",
            "--model",
            renamed_bert(f, False, False),
            "--out",
            f / "e.npy",
        ],  # fmt: skip
    ),
    (
        "simulate: --cells 0",
        lambda f: ["simulate", f / "cells.h5ad", "--cells", "0", "--out", f / "sim.h5ad"],
    ),
    (
        "pretrain: not a tokenized corpus",
        lambda f: ["pretrain", f / "cells.store", "--out", f / "bert-out"],
    ),
    (
        "pretrain: an interrupted run's state, no --resume",
        lambda f: ["pretrain", corpus(f, "bert-out"), "--out", f / "bert-out", "--max-steps", "2"],
    ),
    (
        "pretrain: --save-every -1",
        lambda f: ["pretrain", corpus(f), "--out", f / "bert-out", "--save-every", "-1"],
    ),
    (
        "explain: --method mask on a linear model",
        lambda f: [
            "explain",
            f / "cells.h5ad",
            "--model",
            f / "model",
            "--method",
            "mask",
            "--out",
            f / "explained",
        ],  # fmt: skip
    ),
    (
        "explain: --out is a file",
        lambda f: ["explain", f / "cells.h5ad", "--model", f / "model", "--out", f / "cells.h5ad"],
    ),
    (
        "annotate: --report into a folder of the user's files",
        lambda f: [
            "annotate",
            f / "cells.h5ad",
            "--model",
            f / "model",
            "--out",
            f / "a.h5ad",
            "--report",
            user_folder(f),
        ],  # fmt: skip
    ),
    (
        "embed: not a model folder",
        lambda f: ["embed", f / "cells.h5ad", "--model", f, "--out", f / "e.parquet"],
    ),
]


def main_() -> None:
    base = Path(tempfile.mkdtemp(prefix="sclabel-bad-inputs-"))
    good = base / "good"
    good.mkdir()
    fixtures(good)
    rows = []
    for name, build in CASES:
        folder = base / f"case-{len(rows)}"
        shutil.copytree(good, folder)
        args = build(folder)
        before = {p.relative_to(folder) for p in folder.rglob("*")}
        start = time.perf_counter()
        code, err = run(args, folder)
        seconds = time.perf_counter() - start
        after = {p.relative_to(folder) for p in folder.rglob("*")}
        left = sorted(
            str(p) for p in after - before if not str(p).startswith(".") or "parts" in str(p)
        )
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        ok = code == 2 and len(errors) == 1 and "Traceback" not in err and not left
        ok = ok and not (folder / "PWNED").exists()
        rows.append({
            "case": name,
            "exit": code,
            "message": (errors[0][7:] if errors else err.strip()[-300:]).replace(
                str(folder), "DIR"
            ),
            "left_behind": left,
            "payload_ran": (folder / "PWNED").exists(),
            "seconds": round(seconds, 2),
            "ok": ok,
        })  # fmt: skip
        print(f"{'ok ' if ok else 'BAD'} {code} {name}: {rows[-1]['message']}", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    header = bc.run_header(__file__)
    lines = [
        "# Bad input: what sclabel says",
        "",
        f"Generated by `{header['command']}` on {header['date']} ({header['machine']}): each case "
        "runs `sclabel --quiet ...` in a fresh copy of a folder holding good inputs (300 "
        "synthetic cells, a trained linear model, a store), then records the exit status, the "
        "one `error:` line, and any file the command left behind. The promise: exit 2, one "
        "line that says what to do, nothing left behind, and no code in a pickle ever runs.",
        "",
        f"{sum(r['ok'] for r in rows)} of {len(rows)} cases keep it.",
        "",
        "DIR stands for the case's folder.",
        "",
        "| case | exit | message | left behind |",
        "|---|---:|---|---|",
    ]
    for r in rows:
        message = str(r["message"]).replace("|", "\\|")
        left = ", ".join(r["left_behind"]) or "nothing"
        mark = "" if r["ok"] else " **(broken)**"
        lines.append(f"| {r['case']}{mark} | {r['exit']} | {message} | {left} |")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    bc.write_json(HERE / "results" / "bad_inputs.json", {**header, "rows": rows})
    print(f"written to {OUT}")
    if not all(r["ok"] for r in rows):
        raise SystemExit(1)


HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    main_()
