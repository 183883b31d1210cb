"""`model="auto"`: fit the families that suit the data and keep the one that validates best.

On the small training sets most users start from, which family wins is not known in advance:
a full-batch softmax regression, CellTypist's scaled one-vs-rest logistic regression and a
two-layer MLP each win some of the shared splits (benchmarks/RESULTS.md, "--model auto").
`auto` fits each candidate on the same training cells, scores it on the same validation
cells (macro-F1), and keeps the simplest (the order of CANDIDATES) within TOLERANCE of the
best. A chosen full-batch solver (linear by L-BFGS, celltypist) is then fitted again on the
training and validation cells together, as a tool fitted on all labelled cells (CellTypist)
is; its temperature and thresholds stay those fitted on the validation cells while they were
held out. A chosen network is kept as it was early-stopped (see `refit_data`). Every
candidate's validation and test scores are recorded in `metrics["auto"]`, so a user sees
what was chosen, from what, and why.

Only families that can honour the run take part: a store, donor augmentation, another loss
or several label columns leave CellTypist's in-memory solver out; above the full-batch size
limit the candidates are linear and mlp, both on the mini-batch loop.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import f1_score

from sclabel.data.loader import EVAL_BATCH, iterate_batches
from sclabel.errors import InputError
from sclabel.models import check_family
from sclabel.models.base import Classifier, predict_probas
from sclabel.models.linear import LBFGS_MAX_VALUES
from sclabel.training.data import TrainingData

log = logging.getLogger("sclabel")

AUTO = "auto"
CANDIDATES = ("linear", "celltypist", "mlp")  # simplest first: it wins a tie
# a more complex family must beat the simplest one within reach by more than this: on a few
# hundred validation cells macro-F1 moves by ~0.01 with one or two cells, and picking by
# such noise chose mlp where linear generalized better (Kang, CellBench; RESULTS.md)
TOLERANCE = 0.01


def candidates(*, rules: dict[str, Any], model_params: dict | None) -> list[str]:
    """The families `auto` may fit for a run that asks for `rules` (check_family keywords)."""
    if model_params:
        raise InputError(
            "model parameters belong to one family; with --model auto drop --param, or "
            "choose the family (--model linear, celltypist or mlp) to set its parameters"
        )
    allowed = []
    for family in CANDIDATES:
        try:
            check_family(family, **rules)
        except InputError:
            continue
        allowed.append(family)
    if not allowed:  # pragma: no cover - mlp honours every rule auto can be asked
        raise InputError("no model family can train with these options; choose one with --model")
    return allowed


CELLTYPIST_MAX_DENSE = 100_000_000  # cells x genes CellTypist's solver densifies (0.8 GB f64)


def _stored(X) -> int | None:
    return X.nnz if sp.issparse(X) else getattr(X, "size", None)


def by_size(allowed: list[str], data: TrainingData) -> list[str]:
    """Drop the in-memory solver above the full-batch limit (the one that sends `linear` to
    the mini-batch loop) or when its dense copy (cells x genes) would be too large."""
    X = data.subsets["train"][0]
    size = _stored(X)
    dense = X.shape[0] * X.shape[1] if hasattr(X, "shape") and len(X.shape) == 2 else None
    if size is None or size > LBFGS_MAX_VALUES or dense is None or dense > CELLTYPIST_MAX_DENSE:
        return [f for f in allowed if f != "celltypist"]
    return allowed


def by_run(allowed: list[str], *, ensemble: int, distributed: bool) -> list[str]:
    """An ensemble needs members that differ by seed, and several devices a family the
    distributed loop trains: both leave the deterministic full-batch solvers (linear by
    L-BFGS, celltypist) out, so `--ensemble 5` under the default is an ensemble of mlps."""
    if ensemble > 1:
        return [f for f in allowed if f == "mlp"]
    if distributed:
        return [f for f in allowed if f != "celltypist"]
    return allowed


def score(module: Classifier, data: TrainingData, part: str) -> float | None:
    """Macro-F1 of `module` on a part's cells (primary label column); None without cells."""
    X, y = data.subsets[part]
    if not len(y):
        return None
    proba = predict_probas(module, iterate_batches(X, batch_size=EVAL_BATCH))[0].numpy()
    truth = data.class_codes(y)
    predicted = proba.argmax(axis=1)
    present = np.unique(truth)
    return float(f1_score(truth, predicted, labels=present, average="macro", zero_division=0))


def choose(scores: dict[str, float | None], tolerance: float = TOLERANCE) -> tuple[str, str]:
    """(family, reason): the simplest candidate (order of `scores`) whose validation
    macro-F1 is within `tolerance` of the best."""
    known = {f: s for f, s in scores.items() if s is not None}
    if not known:
        first = next(iter(scores))
        return first, f"no validation cells to compare on: {first}, the simplest candidate"
    best = max(known.values())
    family = next(f for f in scores if f in known and known[f] >= best - tolerance)
    if known[family] == best:
        return family, f"highest validation macro-F1 ({best:.3f})"
    return family, (
        f"validation macro-F1 {known[family]:.3f}, within {tolerance} of the best ({best:.3f}): "
        "the simpler family"
    )


def refit_data(
    data: TrainingData, augmented: bool, results: list
) -> tuple[TrainingData | None, str]:
    """The training cells with the validation cells added, for the chosen family's final
    fit, and why; None where that is not done: no validation cells, a store's streamed rows,
    donor augmentation (its donor vectors were fitted on the training part), or a family
    trained by the gradient loop. A split column's validation cells join training too (the
    saved split says so); its test cells never do. Only a full-batch solver's fit (linear by L-BFGS,
    celltypist) is done again: its optimum does not depend on when it stops. A network is
    kept as it was early-stopped on the validation cells: refitted for "the epochs that
    validated best" it lost up to 0.06 macro-F1 on the small shared splits (pbmc68k seed 1:
    0.729 held out -> 0.667 refitted; CellBench p1 seed 0: 0.985 -> 0.975; RESULTS.md,
    "--model auto"), since nothing tells it when to stop on cells it has not validated."""
    (X, y), (X_val, y_val) = data.subsets["train"], data.subsets["val"]
    in_memory = sp.issparse(X) or isinstance(X, np.ndarray)
    if not len(y_val):
        return None, "no validation cells to add"
    if augmented or not in_memory:
        return None, "kept as fitted (donor augmentation or a store: not refitted)"
    if any(r.schedule is not None for r in results):
        return None, "kept as early-stopped on the validation cells (a gradient-trained fit)"
    if (_stored(X) or 0) + (_stored(X_val) or 0) > LBFGS_MAX_VALUES:
        return None, "kept as fitted (with the validation cells it exceeds the full-batch size)"
    merged = sp.vstack([X, X_val], format="csr") if sp.issparse(X) else np.concatenate([X, X_val])
    split = data.split.astype(str).replace("val", "train")
    merged_data = dataclasses.replace(
        data,
        subsets={
            **data.subsets,
            "train": (merged, np.concatenate([y, y_val])),
            "val": (X_val[:0], y_val[:0]),
        },
        split=pd.Series(
            pd.Categorical(split, categories=data.split.cat.categories),
            index=data.split.index,
            name=data.split.name,
        ),  # fmt: skip
    )
    return merged_data, "refitted on the training and validation cells (a full-batch solver)"
