"""CellTypist's classifier: standard-scaled log1p input, clipped at 10, then logistic regression.

Used for models imported from CellTypist (`sclabel import-celltypist`) and as the trainable
`celltypist` baseline, fitted like CellTypist does (scikit-learn's LogisticRegression, C=1,
one-vs-rest by default, on densified scaled data) rather than by the gradient loop. Genes the
query lacks are left out of the sum, as CellTypist does, via the batch's `present` mask;
without a mask every model gene is used.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from sclabel.data.loader import PRESENT_KEY, X_KEY
from sclabel.errors import InputError
from sclabel.models.base import Capabilities, Classifier, ModelOutput

log = logging.getLogger("sclabel")


@dataclass(frozen=True)
class CellTypistParams:
    multi_class: str = "ovr"  # one-vs-rest sigmoids normalized to sum to 1, or "multinomial"
    clip: float = 10.0  # CellTypist clips scaled values above this
    C: float = 1.0  # inverse L2 strength, CellTypist's default
    max_iter: int = 1000
    class_weighted: bool = False  # CellTypist's default; True = balanced classes

    def __post_init__(self) -> None:
        if self.multi_class not in {"multinomial", "ovr"}:
            raise InputError("celltypist multi_class must be 'multinomial' or 'ovr'")


class CellTypistClassifier(Classifier):
    Params = CellTypistParams
    # scikit-learn's solver on in-memory cells; one output, no hidden layer to share
    capabilities = Capabilities(gradient=False, embeds=False)

    def __init__(self, n_genes: int, n_classes: int, params: CellTypistParams) -> None:
        super().__init__(n_genes, n_classes, params)
        self.linear = nn.Linear(n_genes, n_classes)
        self.register_buffer("mean", torch.zeros(n_genes))
        self.register_buffer("scale", torch.ones(n_genes))

    def forward(self, batch):
        z = ((batch[X_KEY] - self.mean) / self.scale).clamp(max=self.params.clip)
        if PRESENT_KEY in batch:
            z = z * batch[PRESENT_KEY].to(z.dtype)
        decision = self.linear(z)
        if self.params.multi_class == "ovr":  # softmax(log sigmoid) = sigmoids normalized
            return ModelOutput(logits=nn.functional.logsigmoid(decision))
        return ModelOutput(logits=decision)

    def fit_direct(self, train, val, *, class_weight, config):
        """Fit scaler and logistic regression with scikit-learn, as `celltypist.train` does."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier
        from sklearn.utils.sparsefuncs import mean_variance_axis

        from sclabel.training.loop import direct_fit_result

        start = time.perf_counter()
        X, y = train
        if sp.issparse(X):
            mean, var = mean_variance_axis(X, axis=0)
        else:  # an embedding or PCA input arrives dense
            mean, var = X.mean(axis=0, dtype=np.float64), X.var(axis=0, dtype=np.float64)
        scale = np.sqrt(var)
        scale[scale == 0] = 1.0
        with torch.no_grad():
            self.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
            self.scale.copy_(torch.from_numpy(scale.astype(np.float32)))
        Z = self._scaled(X)
        present = np.unique(y)
        ovr = self.params.multi_class == "ovr"
        weight = None
        if self.params.class_weighted:  # per binary problem for OvR; the shared weights else
            weight = "balanced" if ovr else {int(c): float(class_weight[c]) for c in present}
        solver = LogisticRegression(
            C=self.params.C, max_iter=self.params.max_iter, class_weight=weight
        )
        classifier = OneVsRestClassifier(solver) if ovr else solver
        log.info("fitting %s logistic regression on %d cells", self.params.multi_class, len(y))
        classifier.fit(Z, y)
        estimators = classifier.estimators_ if ovr else [classifier]
        coef = np.vstack([e.coef_ for e in estimators]).astype(np.float32)
        intercept = np.concatenate([e.intercept_ for e in estimators]).astype(np.float32)
        if present.size == 2:  # scikit-learn keeps one row for two classes
            coef = np.vstack([-coef if ovr else 0 * coef, coef])
            intercept = np.concatenate([-intercept if ovr else 0 * intercept, intercept])
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.fill_(-30.0)  # classes absent from training are never predicted
            self.linear.weight[present] = torch.from_numpy(coef)
            self.linear.bias[present] = torch.from_numpy(intercept)
        return direct_fit_result(self, val, start, len(y))

    def _scaled(self, X) -> np.ndarray:
        """Dense standardized values clipped at `clip`; CellTypist densifies the same way."""
        mean, scale = self.mean.numpy(), self.scale.numpy()
        dense = X.toarray() if sp.issparse(X) else np.asarray(X)
        return np.minimum((dense - mean) / scale, self.params.clip).astype(np.float32)
