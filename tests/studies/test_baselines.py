"""XGBoost-on-PCA baseline (scTab's): PCA on training cells only, weights, absent classes."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.metrics import f1_score, recall_score

import sclabel
from sclabel.data.sampling import class_weights
from sclabel.studies import baselines
from sclabel.studies.baselines import XGBoostPCA

FAST = {"n_components": 20, "max_depth": 3, "learning_rate": 0.3, "n_jobs": 2}


def _log1p(adata) -> tuple[sp.csr_matrix, np.ndarray]:
    """Counts scaled to 1e4 per cell, log1p (what sclabel feeds every model), and labels."""
    X = sp.csr_matrix(adata.X, dtype=np.float32)
    X = sp.csr_matrix(sp.diags(1e4 / np.asarray(X.sum(axis=1)).ravel()) @ X, dtype=np.float32)
    np.log1p(X.data, out=X.data)
    return X, adata.obs["cell_type"].cat.codes.to_numpy().astype(np.int64)


def _cells(n: int, cell_seed: int | None = None, **biology):
    """Cells of one fixed synthetic biology (4 types, 200 genes); cell_seed draws new cells."""
    return _log1p(sclabel.datasets.synthetic(n, 200, 4, 6, seed=1, cell_seed=cell_seed, **biology))


@pytest.fixture(scope="module")
def split():
    (X, y), (X_test, y_test) = _cells(800), _cells(400, cell_seed=7)
    return X[:600], y[:600], X[600:], y[600:], X_test, y_test


def test_learns_and_stops_early(split, monkeypatch):
    pytest.importorskip("xgboost")
    X, y, X_val, y_val, X_test, y_test = split
    model = XGBoostPCA(n_estimators=500, **FAST).fit(X, y, X_val, y_val, class_weights(y, 4))
    proba = model.predict_proba(X_test)
    monkeypatch.setattr(baselines, "PREDICT_ROWS", 7)  # chunked prediction gives the same
    np.testing.assert_array_equal(model.predict_proba(X_test), proba)
    assert proba.shape == (X_test.shape[0], 4) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert f1_score(y_test, proba.argmax(axis=1), average="macro") > 0.9
    assert model.n_components_ == 20 and model.fit_seconds_ > 0
    # an easy problem: validation loss stops improving long before 500 rounds
    assert model.best_iteration_ < 490
    assert model.booster_.get_booster().num_boosted_rounds() < 500


def test_pca_fitted_on_training_cells_only(split):
    pytest.importorskip("xgboost")
    X, y, X_val, y_val, *_ = split
    fits = [
        XGBoostPCA(n_estimators=3, **FAST).fit(X, y, X_val * scale, y_val, np.ones(4))
        for scale in (1.0, 3.0)
    ]
    np.testing.assert_array_equal(fits[0].mean_, fits[1].mean_)
    np.testing.assert_array_equal(fits[0].components_, fits[1].components_)
    np.testing.assert_allclose(fits[0].mean_, np.asarray(X.mean(axis=0)).ravel(), rtol=1e-5)


@pytest.mark.parametrize("gram_max_genes", [4096, 10], ids=["covariance", "arpack"])
def test_fit_pca_matches_sklearn(gram_max_genes, monkeypatch):
    monkeypatch.setattr(baselines, "GRAM_MAX_GENES", gram_max_genes)
    monkeypatch.setattr(baselines, "CHUNK_VALUES", 60 * 70)  # covariance from 5 row chunks
    rng = np.random.default_rng(0)
    # rank-5 signal with a clear spectral gap over noise, sparse like expression data
    signal = rng.normal(size=(300, 5)) * [20, 15, 10, 8, 6] @ rng.normal(size=(5, 60))
    X = sp.csr_matrix(np.where(rng.random((300, 60)) < 0.3, signal, 0), dtype=np.float32)
    mean, components = baselines.fit_pca(X, 5, seed=0)
    reference = PCA(5, svd_solver="full").fit(X.toarray().astype(np.float64))
    np.testing.assert_allclose(mean, reference.mean_, rtol=1e-5, atol=1e-6)
    cosines = np.abs(np.sum(components * reference.components_, axis=1))
    np.testing.assert_allclose(cosines, 1, atol=1e-4)


def test_class_weights_raise_rare_class_recall():
    pytest.importorskip("xgboost")
    # weaker markers than the default, and only 20 training cells of type 0
    X, y = _cells(1200, marker_fold=2.5)
    keep = np.flatnonzero((y != 0) | (np.cumsum(y == 0) <= 20))
    X, y = X[keep], y[keep]
    X_test, y_test = _cells(600, cell_seed=3, marker_fold=2.5)
    recalls = []
    for weights in (np.ones(4), class_weights(y, 4)):
        model = XGBoostPCA(**{**FAST, "max_depth": 2, "learning_rate": 0.1})
        model.fit(X, y, X[:0], y[:0], weights)  # no validation: both grow 100 rounds
        predicted = model.predict_proba(X_test).argmax(axis=1)
        recalls.append(recall_score(y_test, predicted, labels=[0], average="macro"))
    assert recalls[1] > recalls[0] + 0.15, recalls  # measured 0.08 -> 0.37


def test_absent_class_gets_zero_probability(split, caplog):
    pytest.importorskip("xgboost")
    X, y, X_val, y_val, X_test, _ = split
    trained = y != 2  # no type 2 in training; its validation cells are left out
    with caplog.at_level(logging.INFO, logger="sclabel"):
        model = XGBoostPCA(n_estimators=20, **FAST).fit(
            X[np.flatnonzero(trained)], y[trained], X_val, y_val, class_weights(y[trained], 4)
        )
    assert "validation cells of untrained classes" in caplog.text
    proba = model.predict_proba(X_test)
    assert proba.shape[1] == 4 and np.all(proba[:, 2] == 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)


def test_no_validation_cells_fixed_rounds(split, caplog):
    pytest.importorskip("xgboost")
    X, y, *_ = split
    with caplog.at_level(logging.INFO, logger="sclabel"):
        model = XGBoostPCA(**FAST).fit(X, y, X[:0], y[:0], np.ones(4))
    assert "no validation cells" in caplog.text
    assert model.best_iteration_ == 99


def test_n_components_clipped_on_tiny_data(caplog):
    pytest.importorskip("xgboost")
    X, y = _cells(40)
    X, y = X[:8, :5], np.array([0, 1] * 4)  # also two classes, which xgboost treats apart
    with caplog.at_level(logging.INFO, logger="sclabel"):
        model = XGBoostPCA(n_estimators=2, n_jobs=1).fit(X, y, X, y, np.ones(2))
    assert model.n_components_ == 4  # min(256, 8 cells - 1, 5 genes - 1)
    assert "PCA: 4 components" in caplog.text
    assert model.predict_proba(X).shape == (8, 2)


def test_one_training_class_is_an_input_error(split):
    pytest.importorskip("xgboost")
    X, _, X_val, y_val, *_ = split
    with pytest.raises(sclabel.InputError, match="at least two classes"):
        XGBoostPCA().fit(X, np.zeros(X.shape[0], dtype=np.int64), X_val, y_val, np.ones(4))


def test_missing_xgboost_says_what_to_install(split, monkeypatch):
    monkeypatch.setitem(sys.modules, "xgboost", None)  # makes `import xgboost` fail
    X, y, X_val, y_val, *_ = split
    with pytest.raises(sclabel.InputError, match=r"pip install 'sclabel\[baselines\]'"):
        XGBoostPCA().fit(X, y, X_val, y_val, np.ones(4))
