"""A training run killed with SIGKILL and resumed ends exactly as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import sclabel
from conftest import run

ARGS = ["--label-key", "cell_type", "--split-by", "donor", "--model", "mlp", "--seed", "3",
        "--max-epochs", "10", "--patience", "100", "--batch-size", "64"]  # fmt: skip


def train(tmp_path, out, *extra):
    command = [sys.executable, "-m", "sclabel.cli", "--quiet", "train", tmp_path / "cells.h5ad"]
    return subprocess.Popen(
        [*map(str, command), *ARGS, "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )


def finish(process) -> tuple[int, str]:
    _, err = process.communicate(timeout=600)  # also closes the pipes
    return process.returncode, err


def wait_for_epoch(state, epoch: int, process, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= epoch:
            return
        if process.poll() is not None:
            pytest.fail(f"training ended before epoch {epoch}: {finish(process)[1]}")
        time.sleep(0.02)
    pytest.fail("no training state appeared")


@pytest.mark.slow
def test_kill_9_then_resume_matches_the_uninterrupted_run(tmp_path):
    sclabel.datasets.synthetic(2400, 300, 5, 8, seed=5).write_h5ad(tmp_path / "cells.h5ad")
    code, err = finish(train(tmp_path, tmp_path / "full"))
    assert code == 0, err

    killed = train(tmp_path, tmp_path / "resumed")
    state = tmp_path / ".resumed.training" / "member-0" / "state.json"
    wait_for_epoch(state, 2, killed)
    killed.send_signal(signal.SIGKILL)
    finish(killed)
    assert not (tmp_path / "resumed").exists()
    stopped_at = json.loads(state.read_text())["epoch"]
    assert stopped_at < 9  # killed mid-run, not after the last epoch
    files = {p.name for p in state.parent.iterdir()}
    assert files == {"state.json", "tensors.safetensors"}  # no pickle

    # refusals come before any training: checked in this process (no interpreter start-up)
    base = ["--quiet", "train", tmp_path / "cells.h5ad", *ARGS, "--out", tmp_path / "resumed"]
    refused = run(*base, cwd=tmp_path)
    assert refused.returncode == 2 and "--resume" in refused.stderr  # never silently overwritten
    refused = run(*base, "--resume", "--lr", "0.01", cwd=tmp_path)
    assert refused.returncode == 2 and "differ" in refused.stderr

    code, err = finish(train(tmp_path, tmp_path / "resumed", "--resume"))
    assert code == 0, err
    assert not (tmp_path / ".resumed.training").exists()
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    history = [[r["loss"], r["val_macro_f1"], r["val_loss"]] for r in a["fit"]["history"]]
    resumed_history = [[r["loss"], r["val_macro_f1"], r["val_loss"]] for r in b["fit"]["history"]]
    np.testing.assert_allclose(resumed_history, history, rtol=1e-6)
    assert b["fit"]["best_epoch"] == a["fit"]["best_epoch"]
    assert b["test"]["macro_f1"] == pytest.approx(a["test"]["macro_f1"], abs=1e-9)


def test_state_is_removed_when_done_and_a_leftover_needs_resume(tmp_path):
    adata = sclabel.datasets.synthetic(600, 200, 4, 6, seed=1)
    state = tmp_path / "state"
    model = sclabel.train(adata, label_key="cell_type", split_by="donor", max_epochs=2,
                          progress=False, checkpoint_dir=state, ensemble=2,
                          model="mlp")  # fmt: skip
    assert not state.exists()  # removed once the model is complete
    assert model.ensemble_size == 2
    with pytest.raises(sclabel.InputError, match="resume"):
        (state / "member-0").mkdir(parents=True)
        sclabel.train(adata, label_key="cell_type", max_epochs=1, checkpoint_dir=state, model="mlp")
