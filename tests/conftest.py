"""Shared fixtures: small synthetic data, a trained model, and the real files in ../shared/data."""

from __future__ import annotations

import contextlib
import io
import os
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

import sclabel

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FAST = {"max_epochs": 8, "batch_size": 128, "progress": False}


def shared_file(name: str) -> Path:
    """Path to a real dataset, or skip the test with the reason when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {name} not found in {SHARED_DATA} (see ../shared/data/README.md)")
    return path


@pytest.fixture
def synthetic():
    """600 cells x 200 genes, 4 types, 6 donors, raw counts (a fresh copy per test)."""
    return sclabel.datasets.synthetic(600, 200, 4, 6, seed=1)


@pytest.fixture(scope="session")
def trained_model():
    """An mlp trained once per session on donor-split synthetic data; do not mutate it."""
    adata = sclabel.datasets.synthetic(600, 200, 4, 6, seed=1)
    return sclabel.train(adata, label_key="cell_type", split_by="donor", model="mlp", **FAST)


@pytest.fixture(scope="session")
def saved_model(trained_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "mlp"
    trained_model.save(path)
    return path


def model_batch(model, adata) -> dict:
    """Every cell of `adata` as one batch of the model's input (the prediction pipeline's)."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    x = model.input_spec.bind(adata).rows(slice(0, adata.n_obs))
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return {"x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))}


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run(*args, cwd=None) -> CliResult:
    """`sclabel ARGS` in this process: exit status, stdout and stderr as a subprocess would
    give them (an exception the CLI lets through becomes a traceback and status 1)."""
    from sclabel.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("default")  # printed, as a real run prints them
            try:
                code = main([str(a) for a in args])
            except SystemExit as stop:  # argparse: --help, usage errors
                code = stop.code if isinstance(stop.code, int) else 1
            except Exception:
                traceback.print_exc()
                code = 1
            for w in caught:
                err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))
    finally:
        os.chdir(here)
    return CliResult(code, out.getvalue(), err.getvalue())


def normalized(
    adata, vocabulary=None, *, gene_key=None, target_sum=1e4, rows=None, chunk_size=8192
):
    """`adata`'s cells through the one input pipeline (`InputSpec`): aligned to `vocabulary`
    (default: its own genes), normalized to `target_sum` and log1p, as a CSR."""
    import numpy as np

    from sclabel.data.genes import Vocabulary
    from sclabel.data.inputs import InputSpec

    vocabulary = vocabulary or Vocabulary(tuple(map(str, adata.var_names)))
    spec = InputSpec(vocabulary, target_sum=target_sum, min_gene_coverage=1e-9)
    bound = spec.bind(adata, gene_key=gene_key)
    rows = np.arange(adata.n_obs) if rows is None else np.asarray(rows)
    return bound.gather(rows, chunk_size=chunk_size)
