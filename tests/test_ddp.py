"""Two DDP processes on CPU (gloo) through Lightning Fabric, launched by the CLI."""

import json
import subprocess
import sys

import pytest

import sclabel


@pytest.mark.slow
def test_two_process_ddp_training_matches_single_process(tmp_path):
    sclabel.datasets.synthetic(1200, 200, 4, 6, seed=2).write_h5ad(tmp_path / "train.h5ad")
    scores = {}
    for devices in ("1", "2"):
        out = tmp_path / f"model-{devices}"
        result = subprocess.run(
            [sys.executable, "-m", "sclabel.cli", "--quiet", "train", tmp_path / "train.h5ad",
             "--label-key", "cell_type", "--split-by", "donor", "--model", "linear",
             "--max-epochs", "15", "--accelerator", "cpu", "--devices", devices, "--out", out],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        metrics = json.loads((out / "metrics.json").read_text())
        scores[devices] = metrics["fit"]["best_val_macro_f1"]
        if devices == "2":
            assert "GLOBAL_RANK: 1" in result.stderr  # a second process really ran
    # each rank sees half the cells per epoch: the same model quality, not the same weights
    assert scores["2"] == pytest.approx(scores["1"], abs=0.05)
    assert scores["1"] > 0.8
