"""Two DDP processes on CPU (gloo) through Lightning Fabric, launched by the CLI."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import sclabel


@pytest.mark.slow
def test_two_process_ddp_training_matches_single_process(tmp_path):
    adata = sclabel.datasets.synthetic(1200, 200, 4, 6, seed=2)
    adata.write_h5ad(tmp_path / "train.h5ad")
    # the single-process reference in this process, on the same mini-batch loop DDP runs
    single = sclabel.train(adata, label_key="cell_type", split_by="donor", model="linear",
                           model_params={"solver": "sgd"}, max_epochs=10,
                           progress=False)  # fmt: skip
    out = tmp_path / "model-2"
    result = subprocess.run(
        [sys.executable, "-m", "sclabel.cli", "--quiet", "train", tmp_path / "train.h5ad",
         "--label-key", "cell_type", "--split-by", "donor", "--model", "linear",
         "--max-epochs", "10", "--accelerator", "cpu", "--devices", "2", "--out", out],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "GLOBAL_RANK: 1" in result.stderr  # a second process really ran
    metrics = json.loads((out / "metrics.json").read_text())
    # each rank sees half the cells per epoch: the same model quality, not the same weights
    assert metrics["fit"]["best_val_macro_f1"] == pytest.approx(
        single.metrics["fit"]["best_val_macro_f1"], abs=0.05
    )
    assert single.metrics["fit"]["best_val_macro_f1"] > 0.8


@pytest.mark.slow
def test_parallel_ensemble_members_equal_sequential_training(tmp_path):
    sclabel.datasets.synthetic(800, 150, 4, 6, seed=2).write_h5ad(tmp_path / "train.h5ad")
    weights = {}
    for name, extra in (("sequential", []), ("parallel", ["--devices", "2", "--parallel-members"])):
        out = tmp_path / name
        result = subprocess.run(
            [sys.executable, "-m", "sclabel.cli", "--quiet", "train", tmp_path / "train.h5ad",
             "--label-key", "cell_type", "--split-by", "donor", "--model", "mlp",
             "--ensemble", "2", "--max-epochs", "4", "--out", out, *extra],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        weights[name] = load_file(str(out / "model.safetensors"))
        if name == "parallel":
            assert "GLOBAL_RANK: 1" in result.stderr  # member 1 trained in a second process
    assert weights["parallel"].keys() == weights["sequential"].keys()
    assert any(k.startswith("members.1.") for k in weights["parallel"])
    for key, value in weights["sequential"].items():
        torch.testing.assert_close(weights["parallel"][key], value)


@pytest.mark.slow
def test_two_process_ddp_training_from_a_store(tmp_path):
    from sclabel.store.build import build_store

    adata = sclabel.datasets.synthetic(1200, 200, 4, 6, seed=2)
    build_store([adata], tmp_path / "store", label_key="cell_type", split_by="donor",
                progress=False)  # fmt: skip
    from sclabel.store.format import Store

    single = sclabel.train(Store.open(tmp_path / "store"), label_key="cell_type", split_key="split",
                           model="linear", max_epochs=10, progress=False)  # fmt: skip
    out = tmp_path / "model-2"
    result = subprocess.run(
        [sys.executable, "-m", "sclabel.cli", "--quiet", "train", tmp_path / "store",
         "--label-key", "cell_type", "--split-key", "split", "--model", "linear",
         "--max-epochs", "10", "--devices", "2", "--strategy", "ddp", "--out", out],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "GLOBAL_RANK: 1" in result.stderr
    score = json.loads((out / "metrics.json").read_text())["fit"]["best_val_macro_f1"]
    assert score == pytest.approx(single.metrics["fit"]["best_val_macro_f1"], abs=0.05)
    assert single.metrics["fit"]["best_val_macro_f1"] > 0.8
