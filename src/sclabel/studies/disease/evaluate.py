"""One run of the disease experiment: train on some cells, score held-out cells and patients.

Why a module of its own: every section of the experiment (architecture, leakage, training-set
size, wide vs deep) is the same step with a different split or training subset, so the step
is written once and every section's numbers mean the same thing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd

from sclabel.data.obs import one_label_per_group
from sclabel.errors import InputError
from sclabel.evaluation.metrics import compute_metrics
from sclabel.evaluation.patients import (
    METHODS,
    aggregate,
    fit_cell_type_weights,
    patient_metrics,
)

log = logging.getLogger("sclabel")
SPLIT_COLUMN = "_sclabel_experiment_split"  # written on the runner's private copy of obs


@dataclass
class Setup:
    """What stays fixed between runs: the data, its columns and how to train."""

    adata: ad.AnnData  # the runner's own AnnData (its obs may be written)
    labels: list[str]
    cell_type_key: str
    patient_key: str | None  # splits keep patients whole
    unit_key: str | None  # patient-level answers are per unit (sample, else patient)
    train_kwargs: dict = field(default_factory=dict)  # model, obsm_key/pca, seed, options
    runs: int = 0  # models trained so far (the log's run counter)


@dataclass
class Outcome:
    """Scores of one label of one trained model, and its test cells for per-type analysis."""

    scores: dict  # flat: cell_* and patient_<method>_* metrics, counts
    test: pd.DataFrame  # index obs names; truth, predicted, cell_type


def fit_and_score(
    setup: Setup, split: pd.Series, label_keys: list[str], *, train_cells=None
) -> dict[str, Outcome]:
    """Train one model (one head per label in `label_keys`) and score each label.

    `split` holds "train"/"val"/"test" per cell of `setup.adata`; `train_cells` (a boolean
    mask), when given, keeps only those training cells (balanced subsets): validation and
    test cells are never subsampled, so every run is scored on the same patients.
    """
    import sclabel

    parts = split.astype(object).to_numpy().copy()
    if train_cells is not None:
        parts[(parts == "train") & ~np.asarray(train_cells)] = None
    adata = setup.adata
    adata.obs[SPLIT_COLUMN] = pd.Categorical(parts, categories=["train", "val", "test"])
    setup.runs += 1
    log.info(
        "run %d: training %s on %d cells (%d val, %d test)",
        setup.runs,
        "+".join(label_keys),
        int((parts == "train").sum()),
        int((parts == "val").sum()),
        int((parts == "test").sum()),
    )
    model = sclabel.train(
        adata,
        label_key=label_keys if len(label_keys) > 1 else label_keys[0],
        split_key=SPLIT_COLUMN,
        **setup.train_kwargs,
    )
    held_out = np.isin(parts, ["val", "test"])
    view = adata[held_out]
    shared = _patients_shared(setup, parts)
    outcomes = {}
    for label in label_keys:
        prediction = model.predict(view, task=label, progress=False)
        outcomes[label] = _score(setup, label, prediction, view.obs, parts[held_out])
        outcomes[label].scores |= {
            "n_train_cells": int((parts == "train").sum()),
            "patients_shared": shared,
        }
    return outcomes


def _patients_shared(setup: Setup, parts: np.ndarray) -> int | None:
    """Patients with cells in both training and test: 0 unless the split is cell-level."""
    if setup.patient_key is None:
        return None
    patients = setup.adata.obs[setup.patient_key].astype(str).to_numpy()
    both = set(patients[parts == "train"]) & set(patients[parts == "test"])
    return len(both)


def _score(setup: Setup, label: str, prediction, obs: pd.DataFrame, parts) -> Outcome:
    proba = pd.DataFrame(prediction.probabilities, columns=prediction.classes)
    truth = obs[label].astype(object).to_numpy()
    types = obs[setup.cell_type_key].astype(str).to_numpy()
    known = ~pd.isna(truth)
    test = (parts == "test") & known
    val = (parts == "val") & known
    cell = compute_metrics(
        truth[test].astype(str),
        prediction.labels[test],
        prediction.confidence[test],
        prediction.classes,
    )
    scores = {
        "n_test_cells": int(test.sum()),
        "cell_accuracy": cell["accuracy"],
        "cell_macro_f1": cell["macro_f1"],
    }
    if setup.unit_key is not None:
        units = obs[setup.unit_key].astype(str).to_numpy()
        scores |= _patient_scores(
            proba, truth, units, types, test=test, val=val, classes=prediction.classes
        )
    frame = pd.DataFrame(
        {
            "truth": truth[test].astype(str),
            "predicted": prediction.labels[test].astype(str),
            "cell_type": types[test],
        },
        index=obs.index[test],
    )
    return Outcome(scores, frame)


def _patient_scores(proba, truth, units, types, *, test, val, classes) -> dict:
    """Accuracy and macro-F1 over test units for each way of pooling their cells."""
    answer = one_label_per_group(truth[test], units[test])
    scores: dict = {"n_test_units": int(answer.size)}
    weights = None
    try:  # weights come from validation units only; a one-class validation part has none
        weights = fit_cell_type_weights(
            proba[val], truth[val], units[val], types[val], classes=classes
        )
    except InputError as err:
        log.warning("no per-cell-type weights (validation units: %s)", err)
    for method in METHODS:
        if method == "weighted" and weights is None:
            scores |= {f"patient_{method}_accuracy": None, f"patient_{method}_macro_f1": None}
            continue
        pooled = aggregate(
            proba[test],
            units[test],
            method=method,
            cell_types=types[test],
            weights=weights,
        )
        m = patient_metrics(pooled, answer, classes=classes)
        scores |= {
            f"patient_{method}_accuracy": m["accuracy"],
            f"patient_{method}_macro_f1": m["macro_f1"],
        }
    return scores
