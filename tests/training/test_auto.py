"""`model="auto"`: candidates fitted on one split, the best on validation kept and recorded."""

import json

import numpy as np
import pytest

import sclabel
from conftest import FAST, run
from sclabel.errors import InputError
from sclabel.training import auto


def test_auto_keeps_the_candidate_with_the_best_validation_score(synthetic, tmp_path):
    model = sclabel.train(
        synthetic, label_key="cell_type", split_by="donor", model="auto", out=tmp_path / "m", **FAST
    )
    record = model.metrics["auto"]
    assert list(record["candidates"]) == ["linear", "celltypist", "mlp"]
    val = {f: c["val_macro_f1"] for f, c in record["candidates"].items()}
    best = max(val.values())
    # the first family (simplest) within the tolerance of the best validation score
    assert record["chosen"] == next(f for f in val if val[f] >= best - auto.TOLERANCE)
    assert model.model_config.family == record["chosen"]
    # a full-batch solver is fitted again on training + validation cells; a network is not
    n = model.metrics["n_cells"]
    if record["chosen"] == "mlp":
        assert not record["refit"]["done"] and "n_cells" not in record["refit"]
        assert set(model.split["split"]) == {"train", "val", "test"}
    else:
        assert record["refit"]["done"] and record["refit"]["n_cells"] == n["train"] + n["val"]
        assert set(model.split["split"]) == {"train", "test"}  # the validation cells trained it
    assert model.calibration.fitted  # from the validation cells while they were held out
    assert model.metrics["test"]["macro_f1"] > 0.8
    saved = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert saved["auto"]["chosen"] == record["chosen"]
    loaded = sclabel.Model.load(tmp_path / "m")
    assert loaded.model_config.family == record["chosen"]
    labels = loaded.predict(synthetic, progress=False).labels
    assert (np.asarray(labels) == synthetic.obs["cell_type"].to_numpy()).mean() > 0.8


@pytest.mark.parametrize("forced", ["linear", "mlp"])
def test_only_a_full_batch_solver_is_refitted(synthetic, monkeypatch, forced):
    """linear (L-BFGS) is fitted again with the validation cells; an early-stopped network
    is returned as it validated: the very candidate, with its own test score."""
    monkeypatch.setattr(auto, "choose", lambda scores: (forced, "forced by the test"))
    model = sclabel.train(synthetic, label_key="cell_type", split_by="donor", model="auto",
                          **FAST)  # fmt: skip
    record, n = model.metrics["auto"], model.metrics["n_cells"]
    assert model.model_config.family == forced
    if forced == "linear":
        assert record["refit"] == {
            "done": True,
            "reason": "refitted on the training and validation cells (a full-batch solver)",
            "n_cells": n["train"] + n["val"],
        }
        assert (model.split["split"] == "val").sum() == 0
    else:
        assert record["refit"]["done"] is False
        assert "early-stopped on the validation cells" in record["refit"]["reason"]
        assert (model.split["split"] == "val").sum() == n["val"] > 0
        candidate = record["candidates"]["mlp"]["test_macro_f1"]
        assert model.metrics["test"]["macro_f1"] == pytest.approx(candidate, abs=1e-6)


def test_choose_prefers_the_simpler_family_unless_beaten_by_more_than_noise():
    assert auto.choose({"linear": 0.9, "celltypist": 0.95, "mlp": 0.95}) == (
        "celltypist",
        "highest validation macro-F1 (0.950)",
    )
    assert auto.choose({"linear": 1.0, "celltypist": 1.0, "mlp": 1.0})[0] == "linear"
    family, reason = auto.choose({"linear": 0.985, "celltypist": 0.97, "mlp": 0.99})
    assert family == "linear" and "within 0.01 of the best (0.990)" in reason
    assert auto.choose({"linear": 0.97, "celltypist": 0.97, "mlp": 0.99})[0] == "mlp"
    assert auto.choose({"linear": 0.97, "mlp": 0.99}, tolerance=0.05)[0] == "linear"
    family, reason = auto.choose({"linear": None, "mlp": None})
    assert family == "linear" and "no validation cells" in reason


def test_candidates_honour_what_the_run_asks():
    base = {"store": False, "augment": False, "loss": None, "label_columns": False, "input": None}
    assert auto.candidates(rules=base, model_params=None) == ["linear", "celltypist", "mlp"]
    # CellTypist's in-memory solver cannot augment, stream a store or take another loss
    for asked in ({"augment": True}, {"store": True}, {"loss": "focal"}):
        assert auto.candidates(rules={**base, **asked}, model_params=None) == ["linear", "mlp"]
    # several label columns need a shared hidden layer: only mlp has one
    assert auto.candidates(rules={**base, "label_columns": True}, model_params=None) == ["mlp"]
    with pytest.raises(InputError, match="with --model auto drop --param"):
        auto.candidates(rules=base, model_params={"depth": 3})


def test_large_training_sets_leave_the_in_memory_solver_out(synthetic, monkeypatch):
    from sclabel.config import DataConfig
    from sclabel.training.data import load_training_data

    data = load_training_data(
        synthetic, DataConfig(label_key="cell_type", split_by="donor"), seed=0, progress=False
    )
    families = ["linear", "celltypist", "mlp"]
    assert auto.by_size(families, data) == families
    monkeypatch.setattr(auto, "LBFGS_MAX_VALUES", data.subsets["train"][0].nnz - 1)
    assert auto.by_size(families, data) == ["linear", "mlp"]


def test_cli_auto_refuses_family_parameters(synthetic, tmp_path):
    synthetic.write_h5ad(tmp_path / "a.h5ad")
    result = run("--quiet", "train", tmp_path / "a.h5ad", "--label-key", "cell_type",
                 "--model", "auto", "--param", "depth=3", "--out", tmp_path / "m")  # fmt: skip
    assert result.returncode == 2
    assert "with --model auto drop --param" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_a_given_split_columns_test_cells_stay_out_of_the_refit(synthetic, monkeypatch):
    monkeypatch.setattr(auto, "choose", lambda scores: ("linear", "forced by the test"))
    cells = synthetic.copy()
    cells.obs["part"] = np.random.default_rng(0).choice(["train", "val", "test"], cells.n_obs,
                                                        p=[0.6, 0.2, 0.2])  # fmt: skip
    model = sclabel.train(cells, label_key="cell_type", split_key="part", **FAST)
    refit = model.metrics["auto"]["refit"]
    assert refit["done"] and refit["n_cells"] == int((cells.obs["part"] != "test").sum())
    saved = model.split["split"]
    assert (saved[cells.obs["part"] == "test"] == "test").all()
    assert (saved[cells.obs["part"] != "test"] == "train").all()


def test_auto_is_the_default_in_the_api_and_on_the_command_line(synthetic, tmp_path):
    model = sclabel.train(synthetic, label_key="cell_type", split_by="donor", **FAST)
    assert model.metrics["auto"]["chosen"] == model.model_config.family
    synthetic.write_h5ad(tmp_path / "a.h5ad")
    result = run("--quiet", "train", tmp_path / "a.h5ad", "--label-key", "cell_type",
                 "--max-epochs", "4", "--out", tmp_path / "m")  # fmt: skip
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert set(saved["auto"]["candidates"]) == {"linear", "celltypist", "mlp"}


def test_an_ensemble_or_several_devices_leave_the_deterministic_solvers_out():
    families = ["linear", "celltypist", "mlp"]
    assert auto.by_run(families, ensemble=1, distributed=False) == families
    assert auto.by_run(families, ensemble=5, distributed=False) == ["mlp"]  # members differ
    assert auto.by_run(families, ensemble=1, distributed=True) == ["linear", "mlp"]


def test_an_ensemble_under_the_default_is_an_ensemble_of_mlps(synthetic):
    model = sclabel.train(synthetic, label_key="cell_type", split_by="donor", ensemble=2, **FAST)
    assert model.metrics["auto"]["chosen"] == "mlp" and len(model.metrics["members"]) == 2
    assert list(model.metrics["auto"]["candidates"]) == ["mlp"]
