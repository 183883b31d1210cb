"""The trainable `celltypist` family: CellTypist's recipe, checked against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

import sclabel
from sclabel.config import TrainConfig
from sclabel.models import build


def _data(n=400, k=3, genes=30, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centers = rng.normal(0, 1, (k, genes))
    X = np.log1p(np.clip(centers[y] + rng.normal(0, 1.5, (n, genes)), 0, None)).astype(np.float32)
    X[:, 0] = 0.0  # a constant gene: scale 0 must not divide by zero
    return sp.csr_matrix(X), y.astype(np.int64)


def _reference_probabilities(X, y, Xq, multi_class):
    """CellTypist's pipeline written independently: standardize, clip at 10, fit LR."""
    dense = X.toarray().astype(np.float64)
    mean, std = dense.mean(0), dense.std(0)
    std[std == 0] = 1
    solver = LogisticRegression(C=1.0, max_iter=1000)
    clf = OneVsRestClassifier(solver) if multi_class == "ovr" else solver
    clf.fit(np.minimum((dense - mean) / std, 10), y)
    return clf.predict_proba(np.minimum((Xq.toarray() - mean) / std, 10))


@pytest.mark.parametrize("multi_class", ["ovr", "multinomial"])
def test_matches_scikit_learn(multi_class):
    X, y = _data()
    module = build("celltypist", X.shape[1], 3, {"multi_class": multi_class})
    result = module.fit_direct(
        (X, y), (X[:50], y[:50]), class_weight=np.ones(3), config=TrainConfig()
    )
    with torch.no_grad():
        ours = torch.softmax(module({"x": torch.from_numpy(X.toarray())}).logits, 1).numpy()
    expected = _reference_probabilities(X, y, X, multi_class)
    np.testing.assert_allclose(ours, expected, atol=2e-3)
    assert result.best_val_macro_f1 is not None


def test_absent_class_is_never_predicted_and_two_classes_work():
    X, y = _data(k=3)
    keep = y != 2
    module = build("celltypist", X.shape[1], 3, {})
    module.fit_direct((X[keep], y[keep]), None, class_weight=np.ones(3), config=TrainConfig())
    with torch.no_grad():
        proba = torch.softmax(module({"x": torch.from_numpy(X.toarray())}).logits, 1).numpy()
    assert proba[:, 2].max() < 1e-6
    expected = _reference_probabilities(X[keep], y[keep], X, "ovr")
    np.testing.assert_allclose(proba[:, :2], expected, atol=2e-3)


def test_train_save_load_predict(synthetic, tmp_path):
    model = sclabel.train(synthetic, label_key="cell_type", split_by="donor", model="celltypist")
    assert model.metrics["test"]["macro_f1"] > 0.8
    assert model.model_config.params["multi_class"] == "ovr"
    model.save(tmp_path / "ct")
    loaded = sclabel.Model.load(tmp_path / "ct")
    a = model.predict(synthetic, progress=False).probabilities
    b = loaded.predict(synthetic, progress=False).probabilities
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_trains_on_a_dense_embedding_as_on_genes():
    """An obsm embedding (or a PCA input) arrives dense: the scaler is its column mean and
    standard deviation, and the fit separates the classes it separates (auto fits this
    family on such inputs too; it used to fail in scikit-learn's sparse-only helper)."""
    adata = sclabel.datasets.synthetic(300, 40, 3, 20, seed=0)
    codes = adata.obs["cell_type"].cat.codes.to_numpy()
    noise = np.random.default_rng(0).normal(size=(adata.n_obs, 6)).astype(np.float32)
    adata.obsm["X_e"] = noise + 3 * np.eye(6, dtype=np.float32)[codes]
    model = sclabel.train(adata, label_key="cell_type", obsm_key="X_e", model="celltypist",
                          progress=False)  # fmt: skip
    train = (model.split["split"] == "train").to_numpy()
    X = adata.obsm["X_e"][train]
    np.testing.assert_allclose(model.module.mean.numpy(), X.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.module.scale.numpy(), X.std(0), rtol=1e-4)
    assert model.metrics["test"]["macro_f1"] > 0.95
