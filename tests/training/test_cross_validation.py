"""Upsampling of rare classes, k-fold splits by donor, `cross_validate` and `train --cv`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import sclabel
from conftest import FAST, run
from sclabel.config import DataConfig
from sclabel.data.sampling import upsample_indices
from sclabel.data.splits import kfold_by_group
from sclabel.errors import InputError
from sclabel.store.build import build_store
from sclabel.training import auto
from sclabel.training.cv import cross_validate
from sclabel.training.data import load_training_data
from sclabel.training.fit import upsample_training


def imbalanced(synthetic, keep_rare: int = 12):
    """The synthetic data with type_0 cut down to `keep_rare` cells."""
    rare = np.flatnonzero(synthetic.obs["cell_type"] == "type_0")
    drop = set(rare[keep_rare:])
    return synthetic[[i for i in range(synthetic.n_obs) if i not in drop]].copy()


# --- upsampling ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.5, 1.0])
def test_upsampling_brings_every_class_to_the_target(target):
    y = np.repeat([0, 1, 2, 3], [100, 7, 40, 60])
    positions = upsample_indices(y, target, seed=0)
    counts = np.bincount(y[positions])
    goal = int(np.ceil(target * 100))
    assert (counts == np.maximum(np.bincount(y), goal)).all()
    np.testing.assert_array_equal(positions[: y.size], np.arange(y.size))  # all, in order
    assert positions.max() < y.size  # only rows of the given (training) part
    copies = np.bincount(positions[y[positions] == 1], minlength=y.size)[y == 1]
    assert copies.max() - copies.min() <= 1  # whole copies, then distinct cells


def test_upsampling_is_seeded_and_off_at_zero():
    y = np.repeat([0, 1], [50, 3])
    a, b = upsample_indices(y, 1.0, seed=4), upsample_indices(y, 1.0, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, upsample_indices(y, 1.0, seed=5))
    np.testing.assert_array_equal(upsample_indices(y, 0.0), np.arange(y.size))
    with pytest.raises(InputError, match="upsample"):
        upsample_indices(y, 1.5)
    with pytest.raises(InputError, match="upsample"):
        sclabel.train(
            sclabel.datasets.synthetic(50, 20, 2, 2), label_key="cell_type", upsample=2, model="mlp"
        )


def test_upsampling_repeats_training_rows_only(synthetic):
    data = load_training_data(
        imbalanced(synthetic), DataConfig("cell_type", split_by="donor"), progress=False
    )
    up = upsample_training(data, 1.0, seed=0)
    (X, y), (X_up, y_up) = data.subsets["train"], up.subsets["train"]
    positions = upsample_indices(y, 1.0, seed=0)
    assert abs(X_up - X[positions]).max() == 0 and (y_up == y[positions]).all()
    assert np.bincount(y_up).min() == np.bincount(y).max()
    assert up.subsets["val"] is data.subsets["val"] and up.subsets["test"] is data.subsets["test"]
    assert (up.donors["train"] == data.donors["train"][positions]).all()


def test_training_with_upsampling_end_to_end(synthetic):
    adata = imbalanced(synthetic)
    model = sclabel.train(adata, label_key="cell_type", model="linear", upsample=True, **FAST)
    assert model.train_config.loss == "ce" and model.train_config.upsample == 1.0
    plain = sclabel.train(adata, label_key="cell_type", model="linear", **FAST)
    assert model.metrics["n_cells"] == plain.metrics["n_cells"]  # reported before repetition
    assert model.metrics["test"]["macro_f1"] > 0.5


def test_upsampling_from_a_store(synthetic, tmp_path):
    store = build_store([imbalanced(synthetic)], tmp_path / "s", label_key="cell_type",
                        split_by="donor", progress=False)  # fmt: skip
    model = sclabel.train(store, label_key="cell_type", split_key="split", model="linear",
                          upsample=1.0, **FAST)  # fmt: skip
    assert model.metrics["test"]["macro_f1"] > 0.5


# --- k-fold splits ---------------------------------------------------------------------------


def cells(n_donors: int = 7, per_donor: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    donors = np.repeat([f"d{i}" for i in range(n_donors)], rng.integers(10, per_donor, n_donors))
    labels = rng.choice(["a", "b", "c"], size=donors.size)
    index = [f"cell{i}" for i in range(donors.size)]
    return pd.Series(labels, index=index), pd.Series(donors, index=index)


@pytest.mark.parametrize("k", [2, 3, 7])
def test_each_group_is_tested_in_exactly_one_fold(k):
    labels, groups = cells()
    folds = kfold_by_group(labels, groups, k, seed=1)
    assert len(folds) == k
    tested = np.zeros(labels.size, dtype=int)
    for split in folds:
        assert split.index.equals(labels.index)
        parts = split.astype(str)
        assert (parts.groupby(groups.to_numpy()).nunique() == 1).all()  # one part per group
        assert set(labels[parts == "train"]) == set(labels)  # every class in training
        assert (parts == "val").any()
        tested += (parts == "test").to_numpy()
    assert (tested == 1).all()  # every cell (so every group) tested once


def test_grouped_folds_are_balanced_and_seeded():
    labels, groups = cells(n_donors=12)
    folds = kfold_by_group(labels, groups, 4, seed=2)
    sizes = [int((f == "test").sum()) for f in folds]
    assert max(sizes) - min(sizes) <= groups.value_counts().max()
    again = kfold_by_group(labels, groups, 4, seed=2)
    assert all(a.equals(b) for a, b in zip(folds, again, strict=True))


def test_stratified_folds_without_groups():
    labels, _ = cells()
    folds = kfold_by_group(labels, None, 5, seed=0)
    tested = sum((f == "test").to_numpy().astype(int) for f in folds)
    assert (tested == 1).all()
    for split in folds:
        assert set(labels[split == "test"]) == set(labels)  # stratified: every class tested
        assert set(labels[split == "val"]) == set(labels)


@pytest.mark.parametrize(("k", "message"), [(1, "at least 2 folds"), (8, "at least 8 groups")])
def test_bad_fold_counts_are_refused(k, message):
    labels, groups = cells()
    with pytest.raises(InputError, match=message):
        kfold_by_group(labels, groups, k)


# --- cross_validate and the CLI --------------------------------------------------------------


def test_cross_validate_by_donor(synthetic):
    columns = list(synthetic.obs.columns)
    cv = cross_validate(synthetic, label_key="cell_type", split_by="donor", k=3, model="linear",
                        **FAST)  # fmt: skip
    assert len(cv.folds) == 3
    assert all(f["macro_f1"] > 0.4 for f in cv.folds)  # 4 types: chance is 0.25
    tested = [g for f in cv.folds for g in f["test_groups"]]
    assert sorted(tested) == sorted(synthetic.obs["donor"].astype(str).unique())
    assert sum(f["n_cells"]["test"] for f in cv.folds) == synthetic.n_obs
    scores = [f["macro_f1"] for f in cv.folds]
    assert cv.summary["macro_f1"]["mean"] == pytest.approx(np.mean(scores))
    assert cv.summary["macro_f1"]["sd"] == pytest.approx(np.std(scores, ddof=1))
    assert list(synthetic.obs.columns) == columns  # the user's AnnData is left alone
    with pytest.raises(InputError, match="resume"):
        cross_validate(synthetic, label_key="cell_type", k=3, resume=True)


def test_cross_validate_defaults_to_auto_and_names_each_folds_choice(synthetic):
    cv = cross_validate(synthetic, label_key="cell_type", k=2, **FAST)
    assert cv.model == "auto"
    families = {"linear", "celltypist", "mlp"}
    for fold in cv.folds:
        assert fold["model"] in families  # the family auto kept, never "auto"
        candidates = fold["candidates_val_macro_f1"]
        assert set(candidates) == families
        assert candidates[fold["model"]] >= max(candidates.values()) - auto.TOLERANCE
        assert isinstance(fold["refit"], bool)
    rows = [line for line in cv.to_markdown().splitlines() if line.startswith("| 0 ")]
    assert cv.folds[0]["model"] in rows[0]
    forced = cross_validate(synthetic, label_key="cell_type", k=2, model="linear", **FAST)
    assert {f["model"] for f in forced.folds} == {"linear"}
    assert all("refit" not in f and "candidates_val_macro_f1" not in f for f in forced.folds)


def test_cross_validate_a_backed_file_with_options(synthetic, tmp_path):
    synthetic.write_h5ad(tmp_path / "cells.h5ad")
    backed = sclabel.read(tmp_path / "cells.h5ad", backed=True)
    cv = cross_validate(backed, label_key="cell_type", k=2, model="mlp", loss="focal",
                        upsample=0.5, **{**FAST, "max_epochs": 2})  # fmt: skip
    assert len(cv.folds) == 2 and cv.config["train"]["loss"] == "focal"


def cli(*args, cwd):
    command = ["--quiet", "train", "cells.h5ad", "--label-key", "cell_type", "--split-by",
               "donor", "--model", "linear", "--max-epochs", "4", *args]  # fmt: skip
    return run(*command, cwd=cwd)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cv")
    sclabel.datasets.synthetic(600, 200, 4, 6, seed=1).write_h5ad(path / "cells.h5ad")
    return path


def test_cli_cv_writes_json_and_markdown(workdir):
    result = cli("--cv", "3", "--loss", "focal", "--upsample", "--out", "cv", cwd=workdir)
    assert result.returncode == 0, result.stderr
    report = json.loads((workdir / "cv" / "cv.json").read_text())
    assert len(report["folds"]) == 3 and report["config"]["train"]["loss"] == "focal"
    assert report["config"]["train"]["upsample"] == 1.0
    assert "macro_f1" in report["summary"]
    assert "mean ± sd" in (workdir / "cv" / "cv.md").read_text()
    assert not (workdir / "cv" / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cv", "1"], "at least 2 folds"),
        (["--cv", "7"], "7 folds need at least 7 groups"),
        (["--cv", "3", "--resume"], "drop --resume"),
    ],
)
def test_cli_bad_cv_exits_2_with_one_line_and_no_output(workdir, args, message):
    result = cli(*args, "--out", "bad", cwd=workdir)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "bad").exists() and not (workdir / ".bad.training").exists()
