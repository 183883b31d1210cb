"""The training schedule counts optimizer steps (warm-up, decay per N steps, a minimum
number of steps before early stopping), and torch's CPU threads suit the model's size."""

import logging

import numpy as np
import pytest
import torch

import sclabel
from conftest import run
from sclabel.config import TrainConfig
from sclabel.training.loop import step_schedule


def _factors(config: TrainConfig, steps_per_epoch: int, n_steps: int) -> np.ndarray:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler, _ = step_schedule(optimizer, config, steps_per_epoch)
    out = []
    for _ in range(n_steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(out)


def test_small_data_keeps_learning_over_many_epochs():
    """271 cells: 6 steps an epoch. Per-epoch decay left 0.9^100 = 3e-5 of the rate after 100
    epochs; per 100 steps it is 0.9^6 = 0.53."""
    lr = _factors(TrainConfig(max_epochs=100), steps_per_epoch=6, n_steps=600)
    assert lr[-1] == pytest.approx(0.9**5, rel=1e-6)  # steps 500-599: five decays done
    assert lr[-1] > 0.5


def test_large_data_decays_once_per_epoch_after_warm_up():
    lr = _factors(TrainConfig(max_epochs=3), steps_per_epoch=400, n_steps=1200)
    assert lr[0] == pytest.approx(1 / 50) and lr[49] == pytest.approx(1.0)  # 50-step warm-up
    assert lr[399] == pytest.approx(1.0) and lr[400] == pytest.approx(0.9)
    assert lr[800] == pytest.approx(0.81)
    custom = _factors(TrainConfig(warmup_steps=0, decay_steps=10), steps_per_epoch=400, n_steps=21)
    assert (
        custom[0] == 1.0 and custom[10] == pytest.approx(0.9) and custom[20] == pytest.approx(0.81)
    )


def _noise_labels():
    adata = sclabel.datasets.synthetic(300, 50, 3, 3, seed=2)
    rng = np.random.default_rng(0)
    adata.obs["cell_type"] = rng.permutation(adata.obs["cell_type"].to_numpy())
    return adata


def test_early_stopping_waits_for_the_minimum_number_of_steps(caplog):
    """Labels that cannot be learned: validation never improves after the first epochs.
    Before, patience 1 stopped training two epochs in; now not before min_steps steps."""
    options = {"model": "mlp", "batch_size": 32, "max_epochs": 12, "patience": 1,
               "progress": False}  # fmt: skip
    waited = sclabel.train(_noise_labels(), label_key="cell_type", **options)
    fit = waited.metrics["fit"]
    assert fit["epochs_run"] * 7 < 300 and fit["epochs_run"] == 12  # 7 steps an epoch
    stopped = sclabel.train(_noise_labels(), label_key="cell_type", min_steps=0, **options)
    assert stopped.metrics["fit"]["epochs_run"] < 12


def test_a_model_kept_from_the_first_epochs_is_reported(caplog):
    from sclabel.training.loop import warn_if_early_best

    with caplog.at_level(logging.WARNING, logger="sclabel"):
        warn_if_early_best(best_epoch=4, epochs_run=10, has_val=True, steps=7)
        assert not caplog.text
        warn_if_early_best(best_epoch=0, epochs_run=10, has_val=True, steps=7)
    assert "the kept model is from epoch 1 of 10 (7 optimizer steps in)" in caplog.text


@pytest.mark.slow  # full suite only: keeps the fast tier under 2 min
def test_threads_follow_the_request_the_environment_and_the_model_size(monkeypatch):
    before = torch.get_num_threads()
    adata = sclabel.datasets.synthetic(200, 40, 2, 2, seed=0)
    options = {"label_key": "cell_type", "model": "mlp", "max_epochs": 1, "progress": False}
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert sclabel.train(adata, **options).metrics["fit"]["threads"] == 1  # a small model
    assert sclabel.train(adata, threads=2, **options).metrics["fit"]["threads"] == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert sclabel.train(adata, **options).metrics["fit"]["threads"] == 3
    big = {"model_params": {"width": 5000, "depth": 2}}
    monkeypatch.delenv("OMP_NUM_THREADS")
    import os

    threads = sclabel.train(adata, **options, **big).metrics["fit"]["threads"]
    assert threads == os.cpu_count()  # 40 x 5000 + 5000^2 weights: over 20M parameters
    assert torch.get_num_threads() == before  # restored after training


def test_threads_below_one_are_refused(tmp_path):
    sclabel.datasets.synthetic(100, 20, 2, 2, seed=0).write_h5ad(tmp_path / "c.h5ad")
    result = run("train", "--model", "mlp", tmp_path / "c.h5ad", "--label-key", "cell_type",
                 "--threads", "0", "--out", tmp_path / "m")  # fmt: skip
    assert result.returncode == 2 and "threads must be at least 1" in result.stderr
    assert not (tmp_path / "m").exists()


def test_every_empty_cell_is_counted_before_the_split(caplog):
    """Two empty cells in different chunks were reported as "1 cell(s) ... first at row 96",
    after the split had been logged."""
    import scipy.sparse as sp

    adata = sclabel.datasets.synthetic(300, 40, 2, 2, seed=0)
    X = adata.X.toarray() if sp.issparse(adata.X) else adata.X.copy()
    X[[17, 250]] = 0
    adata.X = sp.csr_matrix(X)
    with (
        caplog.at_level(logging.INFO, logger="sclabel"),
        pytest.raises(sclabel.InputError, match=r"^2 cell\(s\) have zero counts \(rows 17, 250\)"),
    ):
        sclabel.train(adata, label_key="cell_type", model="mlp", max_epochs=1, progress=False)
    assert "split" not in caplog.text.lower() and "input:" not in caplog.text


def test_a_split_over_three_replicates_warns_and_says_what_it_chose(caplog):
    adata = sclabel.datasets.synthetic(300, 40, 2, 3, seed=0)  # 3 donors
    with caplog.at_level(logging.INFO, logger="sclabel"):
        sclabel.train(adata, label_key="cell_type", split_by="donor", model="mlp",
                      max_epochs=1, progress=False)  # fmt: skip
    warning = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any("grouped split: train: 1 group(s)" in m and "fewer than 3 groups" in m
               for m in warning), warning  # fmt: skip
    assert "cells; val: 1 group(s)" in caplog.text


def test_a_split_over_many_donors_only_reports(caplog):
    adata = sclabel.datasets.synthetic(600, 40, 2, 20, seed=0)
    with caplog.at_level(logging.INFO, logger="sclabel"):
        sclabel.train(adata, label_key="cell_type", split_by="donor", model="mlp",
                      max_epochs=1, progress=False)  # fmt: skip
    assert "grouped split: train: 14 group(s)" in caplog.text
    assert not [r for r in caplog.records if "grouped split" in r.message and r.levelno >= 30]
