"""Embedding (.obsm) and PCA inputs, the ffn head, and multi-task (multi-head) models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import sclabel
from conftest import FAST, run
from sclabel import Model
from sclabel.cli import main
from sclabel.errors import InputError
from sclabel.inference.engine import predict_to_file
from sclabel.models import build
from sclabel.training.cv import cross_validate


def normalized(adata) -> sp.csr_matrix:
    X = sp.csr_matrix(adata.X, dtype=np.float64)
    X = sp.diags(1e4 / np.asarray(X.sum(axis=1)).ravel()) @ X
    X.data = np.log1p(X.data)
    return X.tocsr()


@pytest.fixture(scope="module")
def cohort():
    """Strong severity and state signal, weak patient effects: every head can learn it."""
    adata = sclabel.datasets.synthetic_cohort(
        n_patients=18, n_types=4, cells_per_patient=60, n_genes=150, n_signal_types=4,
        severity_fold=4.0, state_fold=4.0, patient_sd=0.05, seed=3,
    )  # fmt: skip
    return adata


def random_split(adata, seed=0) -> pd.Series:
    """A cell-level split, so patients with every label are seen in training."""
    rng = np.random.default_rng(seed)
    return pd.Series(rng.choice(["train", "val", "test"], adata.n_obs, p=[0.6, 0.2, 0.2]))


@pytest.fixture(scope="module")
def split_cohort(cohort):
    adata = cohort.copy()
    adata.obs["part"] = random_split(adata).to_numpy()
    return adata


def test_obsm_input_trains_saves_and_predicts_from_the_querys_obsm(split_cohort, tmp_path):
    adata = split_cohort.copy()
    codes = pd.Categorical(adata.obs["severity"]).codes
    rng = np.random.default_rng(0)
    # an embedding whose first dimensions carry the label: any head should find it
    adata.obsm["X_emb"] = rng.normal(size=(adata.n_obs, 8)).astype(np.float32)
    adata.obsm["X_emb"][:, :3] += 3 * np.eye(3, dtype=np.float32)[codes]
    model = sclabel.train(
        adata, label_key="severity", split_key="part", obsm_key="X_emb", model="mlp", **FAST
    )
    assert model.n_inputs == 8 and model.training_input == "embedding"
    assert model.metrics["test"]["macro_f1"] > 0.9
    model.save(tmp_path / "m")
    loaded = Model.load(tmp_path / "m")
    query = adata[:50].copy()
    query.X = sp.csr_matrix(query.shape, dtype=np.float32)  # genes are not read at all
    expected = model.predict(query, progress=False)
    assert expected.coverage is None  # no genes read: no "100% gene coverage" to report
    expected = expected.probabilities
    np.testing.assert_allclose(loaded.predict(query, progress=False).probabilities, expected)
    del query.obsm["X_emb"]
    with pytest.raises(InputError, match="obsm key 'X_emb' not found"):
        loaded.predict(query, progress=False)
    query.obsm["X_emb"] = np.zeros((50, 5), dtype=np.float32)
    with pytest.raises(InputError, match="has 5 dimensions but the model was trained on 8"):
        loaded.predict(query, progress=False)
    query.obsm["X_emb"] = np.full((50, 8), np.nan, dtype=np.float32)
    with pytest.raises(InputError, match="NaN or infinite values in 50 cells"):
        loaded.predict(query, progress=False)
    # one engine: the file sink takes an embedding model too, with the same answers
    streamed = predict_to_file(loaded, adata, tmp_path / "p.parquet", progress=False)
    table = pd.read_parquet(streamed.path)
    np.testing.assert_array_equal(table["label"].to_numpy(), loaded.predict(adata).labels)
    assert streamed.coverage is None
    adata.write_h5ad(tmp_path / "q.h5ad")
    result = run("--quiet", "predict", tmp_path / "q.h5ad", "--model", tmp_path / "m",
                 "--out", tmp_path / "q.csv")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{adata.n_obs:,} cells predicted\n" in result.stdout and "genes" not in result.stdout


def test_pca_is_fitted_on_training_cells_only(split_cohort):
    adata = split_cohort.copy()
    options = dict(label_key="severity", split_key="part", pca=6, model="linear", **FAST)
    model = sclabel.train(adata, **options)
    train = (adata.obs["part"] == "train").to_numpy()
    mean = np.asarray(normalized(adata)[train].mean(axis=0)).ravel()
    np.testing.assert_allclose(model.projection.mean, mean, rtol=1e-4, atol=1e-5)
    # changing the test cells' expression leaves the components untouched
    changed = adata.copy()
    test = (adata.obs["part"] == "test").to_numpy()
    X = changed.X.toarray() if sp.issparse(changed.X) else changed.X.copy()
    X[test] = X[test][:, ::-1]
    changed.X = sp.csr_matrix(X)
    again = sclabel.train(changed, **options)
    np.testing.assert_allclose(again.projection.components, model.projection.components)
    assert "principal components" in repr(model)


def test_pca_model_round_trips_and_predicts_reordered_genes(split_cohort, tmp_path):
    adata = split_cohort.copy()
    model = sclabel.train(
        adata, label_key="severity", split_key="part", pca=10, model="ffn", **FAST
    )
    assert model.metrics["test"]["macro_f1"] > 0.8
    model.save(tmp_path / "m")
    loaded = Model.load(tmp_path / "m")
    expected = model.predict(adata, progress=False).probabilities
    shuffled = adata[:, np.random.default_rng(1).permutation(adata.n_vars)].copy()
    np.testing.assert_allclose(
        loaded.predict(shuffled, progress=False).probabilities, expected, rtol=1e-4, atol=1e-5
    )
    streamed = predict_to_file(loaded, adata, tmp_path / "p.parquet", progress=False)
    table = pd.read_parquet(streamed.path)
    np.testing.assert_array_equal(table["label"].to_numpy(), model.predict(adata).labels)


def test_bad_input_choices_are_refused_before_training(split_cohort):
    adata = split_cohort.copy()
    adata.obsm["X_emb"] = np.zeros((adata.n_obs, 4), dtype=np.float32)
    base = dict(label_key="severity", split_key="part", **FAST)
    with pytest.raises(InputError, match="not both"):
        sclabel.train(adata, obsm_key="X_emb", pca=5, **base, model="mlp")
    with pytest.raises(InputError, match="choose at most"):
        sclabel.train(adata, pca=5000, **base, model="mlp")
    with pytest.raises(InputError, match="does not apply to obsm"):
        sclabel.train(
            adata, obsm_key="X_emb", augment=True, donor_key="patient", **base, model="mlp"
        )
    with pytest.raises(InputError, match="obsm key 'nope' not found"):
        sclabel.train(adata, obsm_key="nope", **base, model="mlp")
    with pytest.raises(InputError, match="one output"):
        sclabel.train(adata, **{**base, "label_key": ["severity", "state"]}, model="celltypist")
    with pytest.raises(InputError, match="no shared embedding"):
        sclabel.train(adata, **{**base, "label_key": ["severity", "state"]}, model="linear")
    with pytest.raises(InputError, match="3 task_weights given for 2"):
        sclabel.train(adata, **{**base, "label_key": ["severity", "state"]}, task_weights=[1] * 3)
    with pytest.raises(InputError, match="must differ"):
        sclabel.train(adata, **{**base, "label_key": ["severity", "severity"]})


def test_ffn_is_the_studys_architecture():
    module = build("ffn", 50, 3, {})
    linear = [m for m in module.body if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linear] == [1024, 512]
    leaky = [m for m in module.body if isinstance(m, torch.nn.LeakyReLU)]
    assert len(leaky) == 2 and all(m.negative_slope == 0.2 for m in leaky)
    assert not any(isinstance(m, torch.nn.LayerNorm | torch.nn.BatchNorm1d) for m in module.body)
    wider = build("ffn", 50, 3, {"hidden": [2048, 1024, 512], "norm": "batch"})
    assert [m.out_features for m in wider.body if isinstance(m, torch.nn.Linear)][0] == 2048
    assert sclabel.models.MODELS["ffn"].train_defaults["weight_decay"] == 0.0  # Adam


def test_multi_task_learns_every_label_column_and_round_trips(split_cohort, tmp_path):
    adata = split_cohort.copy()
    model = sclabel.train(
        adata, label_key=["severity", "state"], split_key="part", pca=10, model="ffn", **FAST
    )
    assert list(model.tasks) == ["severity", "state"]
    assert model.tasks["state"] == sorted(adata.obs["state"].unique())
    scores = model.metrics["tasks"]
    assert scores["severity"]["macro_f1"] > 0.8 and scores["state"]["macro_f1"] > 0.8
    assert len(model.metrics["fit"]["history"][0]["val_macro_f1_tasks"]) == 2
    model.save(tmp_path / "m")
    loaded = Model.load(tmp_path / "m")
    state = loaded.predict(adata, task="state", progress=False)
    assert state.classes == model.tasks["state"]
    np.testing.assert_allclose(
        state.probabilities, model.predict(adata, task="state", progress=False).probabilities
    )
    test = adata.obs["part"] == "test"
    truth = adata.obs.loc[test, "state"].to_numpy()
    accuracy = (state.labels[test.to_numpy()] == truth).mean()
    assert accuracy == pytest.approx(scores["state"]["accuracy"])
    report = loaded.evaluate(adata[test.to_numpy()], label_key="state", progress=False)
    assert report.metrics["macro_f1"] == pytest.approx(scores["state"]["macro_f1"])
    with pytest.raises(InputError, match="not 'age'"):
        loaded.predict(adata, task="age")


def test_a_task_with_zero_weight_is_not_trained(split_cohort):
    adata = split_cohort.copy()
    options = dict(label_key=["severity", "state"], split_key="part", pca=10, model="ffn")
    model = sclabel.train(adata, task_weights=[1, 0], **options, **FAST)
    torch.manual_seed(0)  # the seed of member 0: the same initial weights
    initial = build("ffn", 10, 3, {})
    state_head = model.module.heads[0]
    fresh = sclabel.models.multitask.MultiTask(initial, {"state": 3}).heads[0]
    torch.testing.assert_close(state_head.weight, fresh.weight)
    assert model.metrics["tasks"]["severity"]["macro_f1"] > 0.8


def test_multi_task_ensemble_averages_each_head(split_cohort):
    adata = split_cohort.copy()
    model = sclabel.train(
        adata, label_key=["severity", "state"], split_key="part", pca=8, model="mlp",
        ensemble=2, **FAST,
    )  # fmt: skip
    query = {"x": torch.from_numpy(model.projection.apply(normalized(adata)[:20]))}
    members = [m(query) for m in model.module.members]
    expected = torch.stack([torch.softmax(o.task_logits["state"], 1) for o in members]).mean(0)
    got = torch.softmax(model.module(query).task_logits["state"], 1)
    torch.testing.assert_close(got, expected)


@pytest.mark.slow
def test_cli_multi_task_train_predict_evaluate(split_cohort, tmp_path, capsys):
    path = tmp_path / "cohort.h5ad"
    split_cohort.write_h5ad(path)
    out = tmp_path / "model"
    args = ["train", str(path), "--label-key", "severity", "--also-label", "state"]
    args += ["--split-key", "part", "--model", "ffn", "--pca", "10", "--max-epochs", "6"]
    args += ["--task-weights", "1", "0.5", "--out", str(out), "--quiet"]
    main(args)
    assert Model.load(out).train_config.task_weights == (1.0, 0.5)
    table = tmp_path / "state.csv"
    main(["predict", str(path), "--model", str(out), "--task", "state", "--out", str(table)])
    frame = pd.read_csv(table, index_col="cell")
    assert set(frame["label"]) <= {"control", "progression", "convalescence"}
    report = tmp_path / "report"
    main(["evaluate", str(path), "--model", str(out), "--label-key", "state", "--out", str(report)])
    assert (report / "report.md").exists()
    assert "macro-F1" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    code = main(["predict", str(path), "--model", str(out), "--task", "age", "--out", str(bad)])
    assert code == 2 and not bad.exists()
    assert "predicts ['severity', 'state'], not 'age'" in capsys.readouterr().err


def test_cross_validation_carries_the_embedding(split_cohort):
    adata = split_cohort.copy()
    adata.obsm["X_emb"] = np.eye(3, dtype=np.float32)[pd.Categorical(adata.obs["state"]).codes]
    result = cross_validate(
        adata, label_key="state", split_by="patient", k=3, obsm_key="X_emb", model="mlp", **FAST
    )
    assert result.summary["macro_f1"]["mean"] > 0.95


def test_an_embedding_only_anndata_trains_and_predicts_but_not_on_genes(split_cohort, tmp_path):
    from sclabel.inference.embed import write_embeddings

    codes = pd.Categorical(split_cohort.obs["state"]).codes
    blocks = iter([np.eye(3, dtype=np.float32)[codes]])
    path = tmp_path / "emb.h5ad"
    write_embeddings(blocks, split_cohort.obs_names, path, key_added="X_e", obs=split_cohort.obs)
    data = sclabel.read(path)
    assert data.n_vars == 0 and list(data.obs.columns) == list(split_cohort.obs.columns)
    model = sclabel.train(
        data, label_key="state", split_key="part", obsm_key="X_e", **FAST, model="mlp"
    )
    assert (model.predict(data, progress=False).labels == data.obs["state"].to_numpy()).all()
    with pytest.raises(InputError, match=r"no genes; train on an embedding \(obsm: \['X_e'\]\)"):
        sclabel.train(data, label_key="state", split_key="part", **FAST, model="mlp")
