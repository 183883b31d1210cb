"""Streaming prediction into files, its resume after an interruption, and the store CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import sclabel
import sclabel.inference.engine as stream
import sclabel.inference.members as members
from sclabel.cli import main
from sclabel.errors import InputError
from sclabel.store.build import build_store
from sclabel.store.format import Store

FAST = {"max_epochs": 4, "batch_size": 128, "progress": False}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    cells = sclabel.datasets.synthetic(900, 150, 3, 6, seed=4)
    cells.write_h5ad(folder / "cells.h5ad")
    model = sclabel.train(cells, label_key="cell_type", split_by="donor", model="mlp", **FAST)
    store = build_store([folder / "cells.h5ad"], folder / "store", progress=False)
    expected = model.predict(cells, progress=False)
    return folder, cells, model, store, expected


@pytest.mark.parametrize("kind", ["backed", "store"])
def test_streamed_parquet_equals_in_memory_prediction(setup, tmp_path, kind):
    folder, _, model, store, expected = setup
    source = ad.read_h5ad(folder / "cells.h5ad", backed="r") if kind == "backed" else store
    result = stream.predict_to_file(
        model, source, tmp_path / "p.parquet", chunk_size=200, progress=False
    )
    table = pd.read_parquet(result.path)
    assert list(table["cell"]) == list(expected.obs_names)
    probs = table[[f"p_{c}" for c in model.classes]].to_numpy()
    np.testing.assert_allclose(probs, expected.probabilities, atol=1e-5)
    assert (table["label"].to_numpy() == expected.labels).all()
    assert result.label_counts.sum() == 900
    assert not list(tmp_path.glob(".*parts"))  # parts removed after the join


def test_streamed_h5ad_and_csv_hold_the_same_answers(setup, tmp_path):
    _, _, model, store, expected = setup
    stream.predict_to_file(model, store, tmp_path / "p.h5ad", chunk_size=256, progress=False)
    out = ad.read_h5ad(tmp_path / "p.h5ad")
    assert out.n_vars == 0 and list(out.obs_names) == list(expected.obs_names)
    np.testing.assert_allclose(out.obsm["sclabel_probabilities"], expected.probabilities, atol=1e-5)
    assert list(out.uns["sclabel_classes"]) == model.classes
    stream.predict_to_file(
        model, store, tmp_path / "p.csv", chunk_size=256, unknown_threshold=0.99, progress=False
    )
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 900
    assert ((table["label"] == "unknown") == (table["confidence"] < 0.99)).all()


def test_resume_after_an_interruption_finishes_the_same_file(setup, tmp_path, monkeypatch):
    _, _, model, store, expected = setup
    out = tmp_path / "p.parquet"
    calls = []
    real = members.predict_proba

    def dies_on_third_chunk(module, batches, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill between two parts would leave it
        return real(module, batches, **kw)

    monkeypatch.setattr(members, "predict_proba", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        stream.predict_to_file(model, store, out, chunk_size=200, progress=False)
    assert not out.exists()
    parts = tmp_path / ".p.parquet.parts"
    assert len(list(parts.glob("part-*.parquet"))) == 2
    with pytest.raises(InputError, match="--resume"):
        stream.predict_to_file(model, store, out, chunk_size=200, progress=False)
    with pytest.raises(InputError, match="chunk_size differ"):
        stream.predict_to_file(model, store, out, chunk_size=300, resume=True, progress=False)
    calls.clear()
    monkeypatch.setattr(members, "predict_proba", lambda *a, **k: calls.append(1) or real(*a, **k))
    stream.predict_to_file(model, store, out, chunk_size=200, resume=True, progress=False)
    assert len(calls) == 3  # 5 chunks, 2 done before the interruption
    table = pd.read_parquet(out)
    np.testing.assert_allclose(
        table[[f"p_{c}" for c in model.classes]].to_numpy(), expected.probabilities, atol=1e-5
    )
    assert not parts.exists()


def test_bad_output_name_is_refused_before_any_work(setup, tmp_path):
    _, _, model, store, _ = setup
    with pytest.raises(InputError, match="must end in"):
        stream.predict_to_file(model, store, tmp_path / "p.xlsx")
    assert not list(tmp_path.iterdir())


def test_cli_store_train_predict_round_trip(setup, tmp_path, capsys):
    folder = setup[0]
    store = tmp_path / "atlas"
    args = ["--quiet", "store", str(folder / "cells.h5ad"), "--out", str(store)]
    assert main([*args, "--label-key", "cell_type", "--split-by", "donor"]) == 0
    assert "900 cells x 150 genes" in capsys.readouterr().out
    model = tmp_path / "model"
    train = ["--quiet", "train", str(store), "--label-key", "cell_type", "--split-key", "split"]
    assert main([*train, "--max-epochs", "3", "--batch-size", "128", "--out", str(model)]) == 0
    out = tmp_path / "labels.parquet"
    assert main(["--quiet", "predict", str(store), "--model", str(model), "--out", str(out)]) == 0
    assert len(pd.read_parquet(out)) == 900


def test_cli_bad_inputs_exit_2_without_output(setup, tmp_path, capsys):
    folder = setup[0]
    missing = ["store", str(tmp_path / "nope.h5ad"), "--out", str(tmp_path / "s")]
    assert main(["--quiet", *missing]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    bad_column = ["store", str(folder / "cells.h5ad"), "--columns", "tissue"]
    assert main(["--quiet", *bad_column, "--out", str(tmp_path / "s")]) == 2
    assert "tissue" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    setup[2].save(tmp_path / "model")
    store = str(setup[3].path)
    evaluate = ["evaluate", store, "--model", str(tmp_path / "model"), "--out", str(tmp_path / "r")]
    assert main(["--quiet", *evaluate]) == 2
    assert "a store works with train/predict" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_simulate_writes_a_store_and_an_h5ad_from_a_fitted_profile(setup, tmp_path, capsys):
    folder = setup[0]
    store, profile = tmp_path / "sim.store", tmp_path / "profile"
    args = ["--quiet", "simulate", str(folder / "cells.h5ad"), "--cells", "3000"]
    args += ["--cell-type-key", "cell_type", "--donors", "12", "--split-by", "donor"]
    assert main([*args, "--save-profile", str(profile), "--out", str(store)]) == 0
    built = Store.open(store)
    assert built.n_cells == 3000
    assert set(built.column("cell_type").astype(str)) == {"type_0", "type_1", "type_2"}
    split = built.column("split").astype(str)
    assert (split.groupby(built.column("donor").astype(str)).nunique() == 1).all()
    h5ad = tmp_path / "sim.h5ad"
    assert main(["--quiet", "simulate", str(profile), "--cells", "700", "--out", str(h5ad)]) == 0
    again = ad.read_h5ad(h5ad, backed="r")
    assert again.shape == (700, 150) and again.obs_names.is_unique
    assert main(["--quiet", "simulate", str(profile), "--cells", "0", "--out", str(h5ad)]) == 2
    assert "--cells" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".h5ad"])
def test_backed_and_in_memory_prediction_write_identical_files(setup, tmp_path, suffix):
    """One engine, one writer: --backed changes how cells are read, not what is written."""
    folder, cells, model, _, _ = setup
    model.save(tmp_path / "model")
    base = ["--quiet", "predict", str(folder / "cells.h5ad"), "--model", str(tmp_path / "model")]
    assert main([*base, "--out", str(tmp_path / f"memory{suffix}")]) == 0
    assert main([*base, "--backed", "--out", str(tmp_path / f"backed{suffix}")]) == 0
    memory, backed = tmp_path / f"memory{suffix}", tmp_path / f"backed{suffix}"
    if suffix != ".h5ad":
        assert memory.read_bytes() == backed.read_bytes()
        return
    a, b = ad.read_h5ad(memory), ad.read_h5ad(backed)
    assert (a.X != b.X).nnz == 0 and (a.X != cells.X).nnz == 0  # the input's matrix, kept
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.obsm["sclabel_probabilities"], b.obsm["sclabel_probabilities"])
    assert list(a.uns["sclabel_classes"]) == list(b.uns["sclabel_classes"]) == model.classes
    assert list(a.obs.columns[: cells.obs.shape[1]]) == list(cells.obs.columns)  # obs kept
    expected = model.predict(cells, progress=False)
    assert list(a.obs["sclabel_label"]) == list(expected.labels)
    np.testing.assert_allclose(a.obsm["sclabel_probabilities"], expected.probabilities, atol=1e-6)


def test_a_parts_folder_removed_mid_run_is_an_error_not_a_short_file(setup, tmp_path, monkeypatch):
    """A concurrent finisher or a cleanup took the parts: the run must not call a truncated
    file a success (it printed "900 cells predicted" over fewer rows)."""
    _, _, model, store, _ = setup
    out = tmp_path / "p.parquet"
    real, calls = members.predict_proba, []

    def removes_the_parts_on_third_chunk(module, batches, **kw):
        calls.append(1)
        if len(calls) == 3:
            shutil.rmtree(tmp_path / ".p.parquet.parts")
        return real(module, batches, **kw)

    monkeypatch.setattr(members, "predict_proba", removes_the_parts_on_third_chunk)
    with pytest.raises(InputError, match="removed or taken over"):
        stream.predict_to_file(model, store, out, chunk_size=200, progress=False)
    assert not out.exists() and not (tmp_path / ".p.parquet.parts").exists()


def test_a_second_writer_is_kept_out_and_a_killed_ones_parts_are_resumed(setup, tmp_path):
    _, _, model, store, expected = setup
    out = tmp_path / "p.csv"
    parts = tmp_path / ".p.csv.parts"
    parts.mkdir()
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "run": "another"}
    (parts / "lock").write_text(json.dumps(holder))  # a live process writes the same --out
    with pytest.raises(InputError, match=rf"another sclabel run \(pid {os.getpid()}.*p\.csv"):
        stream.predict_to_file(model, store, out, chunk_size=200, resume=True, progress=False)
    assert not out.exists() and (parts / "lock").exists()
    shutil.rmtree(parts)
    # a run killed (kill -9) mid-way leaves its lock with a pid that is gone
    with pytest.raises(KeyboardInterrupt), interrupted_after(2):
        stream.predict_to_file(model, store, out, chunk_size=200, progress=False)
    lock = json.loads((parts / "lock").read_text()) if (parts / "lock").exists() else None
    meta = json.loads((parts / "meta.json").read_text())
    (parts / "lock").write_text(json.dumps({**(lock or {}), "pid": dead_pid(), "run": meta["run"],
                                            "host": socket.gethostname()}))  # fmt: skip
    with pytest.raises(InputError, match="was killed.*--resume"):
        stream.predict_to_file(model, store, out, chunk_size=200, progress=False)
    stream.predict_to_file(model, store, out, chunk_size=200, resume=True, progress=False)
    assert len(pd.read_csv(out)) == 900 and not parts.exists()


def test_the_join_refuses_a_part_of_another_run(setup, tmp_path):
    _, _, model, store, _ = setup
    out = tmp_path / "p.parquet"
    for name in ("a", "b"):  # two interrupted runs into two outputs
        with pytest.raises(KeyboardInterrupt), interrupted_after(2):
            stream.predict_to_file(model, store, tmp_path / f"{name}.parquet", chunk_size=200,
                                   progress=False)  # fmt: skip
    foreign = tmp_path / ".b.parquet.parts" / "part-000001.parquet"
    shutil.copy(foreign, tmp_path / ".a.parquet.parts" / "part-000001.parquet")
    with pytest.raises(InputError, match="does not belong to this prediction"):
        stream.predict_to_file(model, store, tmp_path / "a.parquet", chunk_size=200, resume=True,
                               progress=False)  # fmt: skip
    assert not out.exists() and not (tmp_path / "a.parquet").exists()


def test_resume_refuses_an_input_regenerated_under_the_same_name(setup, tmp_path):
    """Same path, same number of cells, other cells: the old parts must not be mixed in."""
    folder, cells, model, _, _ = setup
    path = tmp_path / "query.h5ad"
    cells.write_h5ad(path)
    out = tmp_path / "p.parquet"
    with pytest.raises(KeyboardInterrupt), interrupted_after(2):
        stream.predict_to_file(model, ad.read_h5ad(path, backed="r"), out, chunk_size=200,
                               progress=False)  # fmt: skip
    again = sclabel.datasets.synthetic(900, 150, 3, 6, seed=4, cell_seed=11)
    again.write_h5ad(path)
    with pytest.raises(InputError, match="cannot resume: input differ"):
        stream.predict_to_file(model, ad.read_h5ad(path, backed="r"), out, chunk_size=200,
                               resume=True, progress=False)  # fmt: skip


def test_a_data_error_removes_the_runs_parts(setup, tmp_path):
    _, cells, model, _, _ = setup
    bad = cells.copy()
    X = bad.X.tolil()
    X[700, :] = 0  # a cell with no counts, in the fourth chunk
    bad.X = X.tocsr()
    out = tmp_path / "p.parquet"
    with pytest.raises(InputError, match=r"zero counts \(first at row 700\)"):
        stream.predict_to_file(model, bad, out, chunk_size=200, progress=False)
    assert list(tmp_path.iterdir()) == []  # no parts left to be called "interrupted"


def test_cli_predict_into_a_folder_names_it(setup, tmp_path, capsys):
    folder, _, model, _, _ = setup
    model.save(tmp_path / "model")
    (tmp_path / "labels.csv").mkdir()
    args = ["predict", str(folder / "cells.h5ad"), "--model", str(tmp_path / "model")]
    assert main(["--quiet", *args, "--out", str(tmp_path / "labels.csv")]) == 2
    err = capsys.readouterr().err
    assert "labels.csv is a folder" in err and ".tmp-" not in err


@contextlib.contextmanager
def interrupted_after(n_chunks: int):
    """Ctrl-C after `n_chunks` chunks of a streaming prediction."""
    real, calls = members.predict_proba, []

    def dies(module, batches, **kw):
        calls.append(1)
        if len(calls) > n_chunks:
            raise KeyboardInterrupt
        return real(module, batches, **kw)

    members.predict_proba = dies
    try:
        yield
    finally:
        members.predict_proba = real


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid
