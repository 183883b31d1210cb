"""XGBoost on PCA scores: the gradient-boosted-tree baseline of the scTab paper.

scTab (Fischer et al. 2024; github.com/theislab/scTab, scripts/py_scripts/train_xgboost.py and
docs/models.md) fits 256 principal components of log1p(counts scaled to 1e4) on the training
cells, then an `XGBClassifier` (multi:softprob) with class-weighted cells, early stopping after
10 rounds without improvement on the validation set, eta 0.05, max_depth 10, subsample 0.75 and
at most 800 trees. Those are the defaults here. xgboost is optional (`sclabel[baselines]`).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from sclabel.errors import InputError

log = logging.getLogger("sclabel")

ROUNDS_WITHOUT_VALIDATION = 100  # nothing to stop on: a modest fixed number of trees
CHUNK_VALUES = 2**22  # dense float64 values per row chunk of the PCA fit (32 MiB)
GRAM_MAX_GENES = 4096  # PCA from a genes x genes covariance (<= 128 MiB) up to here
PREDICT_ROWS = 16_384  # cells per predict chunk: scores and probabilities stay small


def import_xgboost():
    try:
        import xgboost
    except ImportError as err:
        raise InputError(
            "the XGBoost baseline needs xgboost: pip install 'sclabel[baselines]' "
            "(or pip install xgboost)"
        ) from err
    return xgboost


def _row_chunks(X, rows: int):
    for start in range(0, X.shape[0], rows):
        yield start, X[start : start + rows]


def fit_pca(X: sp.csr_matrix, n_components: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top principal axes (n_components x genes) of sparse X, exact, never densifying X.

    Up to GRAM_MAX_GENES genes: eigh of the covariance accumulated over dense row chunks. At
    20,000 cells x 2,000 genes (43% non-zero), 256 components, on 2 cores it took 1.6 s and
    148 MiB beyond X, where sklearn's sparse PCA took 31 s / 75 MiB (arpack) and 30 s /
    176 MiB (covariance_eigh, whose sparse X.T @ X is slow), same components. More genes:
    sklearn's arpack (implicit centring, memory-light): 4 s / 95 MiB at 2,100 x 20,670 (5%),
    116 s / 475 MiB at 70,000 x 12,804 (7%), where a randomized PCA took 196 s / 742 MiB and
    a 12,804-gene covariance would be 1.3 GB with minutes of eigh.
    """
    n, n_genes = X.shape
    mean = np.asarray(X.mean(axis=0, dtype=np.float64)).ravel()
    if n_genes <= GRAM_MAX_GENES:
        cov = _gram(X)  # scaled covariance: the 1 / (n - 1) does not change eigenvectors
        cov -= n * np.outer(mean, mean)
        top = (n_genes - n_components, n_genes - 1)
        _, vectors = scipy.linalg.eigh(cov, lower=False, overwrite_a=True, subset_by_index=top)
        axes = vectors[:, ::-1].T  # largest variance first
    else:
        from sklearn.decomposition import PCA

        pca = PCA(n_components, svd_solver="arpack", random_state=seed).fit(X)
        axes = pca.components_.astype(np.float64)
    # axis signs are arbitrary: fix them so each axis's largest loading is positive
    signs = np.sign(axes[np.arange(n_components), np.abs(axes).argmax(axis=1)])
    return mean, axes * signs[:, None]


def _gram(X) -> np.ndarray:
    """Upper triangle of X.T @ X in float64, from dense row chunks (BLAS syrk)."""
    gram = np.zeros((X.shape[1], X.shape[1]), order="F")
    for _, chunk in _row_chunks(X, max(1, CHUNK_VALUES // X.shape[1])):
        # the C-ordered chunk's transpose is Fortran-ordered: BLAS needs no copy of it
        dense = chunk.astype(np.float64).toarray()
        gram = scipy.linalg.blas.dsyrk(1.0, dense.T, c=gram, beta=1.0, overwrite_c=1)
    return gram


@dataclasses.dataclass
class XGBoostPCA:
    """PCA (fitted on the training cells) + gradient-boosted trees; not a torch module."""

    n_components: int = 256
    max_depth: int = 10
    learning_rate: float = 0.05
    subsample: float = 0.75
    n_estimators: int = 800
    early_stopping_rounds: int = 10
    seed: int = 0
    n_jobs: int | None = None

    def fit(self, X_train, y_train, X_val, y_val, class_weight) -> XGBoostPCA:
        """X: CSR log1p expression (cells x genes); y: codes 0..k-1; class_weight: length k."""
        xgboost = import_xgboost()
        start = time.perf_counter()
        class_weight = np.asarray(class_weight, dtype=np.float64)
        self.n_classes_ = class_weight.size
        # xgboost needs labels 0..m-1 all present: train on the present classes only
        self.classes_ = np.unique(y_train)
        if self.classes_.size < 2:
            raise InputError("the XGBoost baseline needs at least two classes in training")
        n, n_genes = X_train.shape
        self.n_components_ = min(self.n_components, n - 1, n_genes - 1)
        if self.n_components_ < self.n_components:
            log.info("PCA: %d components (%d cells, %d genes)", self.n_components_, n, n_genes)
        self.mean_, self.components_ = fit_pca(X_train, self.n_components_, self.seed)
        # validation cells of a class absent from training have no label xgboost knows
        known = np.isin(y_val, self.classes_)
        if not known.all():
            log.info("%d validation cells of untrained classes left out", (~known).sum())
            X_val, y_val = X_val[np.flatnonzero(known)], y_val[known]
        early = y_val.size > 0
        if not early:
            log.info("no validation cells: %d trees, no early stopping", ROUNDS_WITHOUT_VALIDATION)
        self.booster_ = xgboost.XGBClassifier(
            objective="multi:softprob",
            tree_method="hist",
            eval_metric="mlogloss",
            n_estimators=self.n_estimators if early else ROUNDS_WITHOUT_VALIDATION,
            early_stopping_rounds=self.early_stopping_rounds if early else None,
            num_class=self.classes_.size,  # the wrapper leaves it out for 2 classes
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            subsample=self.subsample,
            random_state=self.seed,
            n_jobs=self.n_jobs,
        )
        evaluation = {}
        if early:
            evaluation = {
                "eval_set": [(self._scores(X_val), np.searchsorted(self.classes_, y_val))],
                "sample_weight_eval_set": [class_weight[y_val]],
            }
        self.booster_.fit(
            self._scores(X_train),
            np.searchsorted(self.classes_, y_train),
            sample_weight=class_weight[y_train],
            verbose=False,
            **evaluation,
        )
        last = self.booster_.best_iteration if early else ROUNDS_WITHOUT_VALIDATION - 1
        self.best_iteration_ = int(last)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Cells x k probabilities (float32); classes absent from training get 0."""
        out = np.zeros((X.shape[0], self.n_classes_), dtype=np.float32)
        for start, chunk in _row_chunks(X, PREDICT_ROWS):
            # with early stopping, xgboost predicts with the trees up to best_iteration
            proba = self.booster_.predict_proba(self._scores(chunk))
            out[start : start + chunk.shape[0], self.classes_] = proba
        return out

    def _scores(self, X) -> np.ndarray:
        # (X - mean) @ components.T without densifying or centring X
        scores = sp.csr_matrix(X) @ self.components_.T - self.mean_ @ self.components_.T
        return scores.astype(np.float32)
