"""Patient-level answers from cell-level class probabilities.

Why: severity and state are properties of a patient (a sample), so the question a clinician
asks is answered per patient, and cell-level accuracy counts a patient with many cells many
times. Three ways to pool a patient's cells:

- ``mean``: average class probability over the patient's cells.
- ``vote``: share of cells whose most probable class is each class; ties go to the class
  with the higher mean probability.
- ``weighted``: average probability per cell type, then a weighted average over the
  patient's cell types, with weights from `fit_cell_type_weights` on VALIDATION patients
  (types that carry no disease signal should not get a say; fitting on test patients would
  leak).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from sclabel.data.obs import one_label_per_group, require_classes
from sclabel.errors import InputError, listing
from sclabel.evaluation.metrics import compute_metrics

log = logging.getLogger("sclabel")
METHODS = ("mean", "vote", "weighted")
RULES = ("log_likelihood", "accuracy")


def _as_frame(proba, classes: Sequence[str] | None) -> pd.DataFrame:
    if isinstance(proba, pd.DataFrame):
        values, columns = proba.to_numpy(dtype=float), [str(c) for c in proba.columns]
    else:
        values = np.asarray(proba, dtype=float)
        if values.ndim != 2:
            raise InputError(f"proba must be cells x classes, got shape {values.shape}")
        columns = [str(c) for c in classes] if classes is not None else None
        if columns is None:
            columns = [str(i) for i in range(values.shape[1])]
    if len(columns) != values.shape[1]:
        raise InputError(f"{len(columns)} class names for {values.shape[1]} probability columns")
    if not np.isfinite(values).all():
        raise InputError("proba has NaN or infinite values; check the model's output")
    return pd.DataFrame(values, columns=columns)


def _check_length(name: str, values, n: int) -> np.ndarray:
    values = np.asarray(values, dtype=object)
    if values.shape != (n,):
        raise InputError(f"{name} has {values.size} entries for {n} cells; pass one per cell")
    if pd.isna(values).any():
        raise InputError(f"{name} has missing values; fill or drop those cells")
    return values.astype(str)


def aggregate(
    proba: np.ndarray | pd.DataFrame,
    patients: Sequence | np.ndarray | pd.Series,
    *,
    method: str = "mean",
    classes: Sequence[str] | None = None,
    cell_types: Sequence | np.ndarray | pd.Series | None = None,
    weights: Mapping[str, float] | pd.Series | None = None,
) -> pd.DataFrame:
    """Patients x classes scores (rows sum to 1, patients sorted); argmax is the answer.

    Parameters
    ----------
    proba
        Cells x classes probabilities; a DataFrame's columns name the classes, otherwise
        `classes` does (default "0", "1", ...).
    patients
        The patient (or sample) of each cell.
    method
        "mean", "vote" or "weighted" (see the module docstring).
    cell_types, weights
        Needed for "weighted": each cell's type, and a weight per type. A patient whose
        types all have weight 0 (or none) falls back to the plain mean, with a log line.
    """
    if method not in METHODS:
        raise InputError(f"unknown aggregation method {method!r}; choose one of {METHODS}")
    frame = _as_frame(proba, classes)
    patients = _check_length("patients", patients, len(frame))
    mean = frame.groupby(patients, sort=True).mean()
    if method == "mean":
        return mean
    if method == "vote":
        winner = frame.columns.to_numpy()[frame.to_numpy().argmax(axis=1)]
        votes = pd.crosstab(patients, winner).reindex(columns=frame.columns, fill_value=0)
        n_cells = votes.sum(axis=1).to_numpy()[:, None]
        # a nudge below half a vote: breaks ties by mean probability, never overturns a vote
        scores = votes.to_numpy() / n_cells + mean.to_numpy() * 0.49 / n_cells
        return pd.DataFrame(scores / scores.sum(axis=1, keepdims=True), mean.index, mean.columns)
    if cell_types is None or weights is None:
        raise InputError("method='weighted' needs cell_types and weights (fit_cell_type_weights)")
    types = _check_length("cell_types", cell_types, len(frame))
    per_type = frame.groupby([patients, types], sort=True).mean()
    table = pd.Series({str(k): float(v) for k, v in dict(weights).items()}, dtype=float)
    if (table < 0).any() or not np.isfinite(table).all():
        raise InputError("cell-type weights must be finite and >= 0 (fit_cell_type_weights)")
    w = table.reindex(per_type.index.get_level_values(1)).fillna(0)
    weighted = per_type.mul(w.to_numpy(), axis=0).groupby(level=0).sum()
    total = pd.Series(w.to_numpy(), index=per_type.index).groupby(level=0).sum()
    unweighted = total.index[total <= 0].tolist()
    if unweighted:
        log.warning(
            "%d patient(s) have no weighted cell type, using their mean: %s",
            len(unweighted),
            unweighted[:5],
        )
    scores = weighted.div(total.where(total > 0), axis=0)
    return scores.fillna(mean).loc[mean.index]


def fit_cell_type_weights(
    proba: np.ndarray | pd.DataFrame,
    y: Sequence | np.ndarray | pd.Series,
    patients: Sequence | np.ndarray | pd.Series,
    cell_types: Sequence | np.ndarray | pd.Series,
    *,
    classes: Sequence[str] | None = None,
    rule: str = "log_likelihood",
) -> pd.Series:
    """A weight per cell type (summing to 1) from how well it alone answers per patient.

    Fit on VALIDATION patients. For each type t, each validation patient's cells of type t
    are averaged ("mean") into one prediction, and the type is scored class-balanced against
    chance, so a type that only echoes the label frequencies earns nothing:

    - ``log_likelihood`` (default, graded): mean over classes of the mean log probability of
      the true class (clipped at 1e-6) minus log(1 / n_classes): information gained, in
      nats, over a uniform guess.
    - ``accuracy``: balanced accuracy (mean recall over classes) minus 1 / n_classes.

    weight_t = max(score_t, 0) / sum_s max(score_s, 0). Types no validation patient has are
    absent from the result, which `aggregate` reads as weight 0. When no type beats chance,
    all weights are equal (logged), which makes "weighted" a mean over cell types.
    """
    if rule not in RULES:
        raise InputError(f"unknown weighting rule {rule!r}; choose one of {RULES}")
    frame = _as_frame(proba, classes)
    patients = _check_length("patients", patients, len(frame))
    types = _check_length("cell_types", cell_types, len(frame))
    y = _check_length("y", y, len(frame))
    require_classes(y, "y")
    truth = one_label_per_group(y, patients)
    unknown = sorted(set(truth) - set(frame.columns))
    if unknown:
        raise InputError(f"labels {unknown} are not among the probability columns {list(frame)}")
    n_classes = frame.shape[1]
    scores = {}
    for cell_type in sorted(set(types)):
        here = types == cell_type
        pooled = frame[here].groupby(patients[here]).mean()
        true = truth.loc[pooled.index].to_numpy()
        if rule == "accuracy":
            value = pooled.idxmax(axis=1).to_numpy() == true
        else:
            columns = pooled.columns.get_indexer(true)
            value = np.log(np.clip(pooled.to_numpy()[np.arange(true.size), columns], 1e-6, 1))
        per_class = pd.Series(value.astype(float)).groupby(true).mean().mean()
        scores[str(cell_type)] = per_class - (
            1 / n_classes if rule == "accuracy" else -np.log(n_classes)
        )
    raw = pd.Series(scores, name="weight").clip(lower=0)
    if raw.sum() <= 0:
        log.warning("no cell type beats chance on the validation patients; equal weights")
        return pd.Series(1 / raw.size, index=raw.index, name="weight")
    return raw / raw.sum()


def patient_metrics(
    scores: pd.DataFrame,
    truth: pd.Series | Mapping[str, str],
    *,
    classes: Sequence[str] | None = None,
) -> dict:
    """Accuracy, macro-F1 and friends per patient, beside the cell-level metrics.

    `scores` is `aggregate`'s output; `truth` maps patient -> label (e.g.
    `one_label_per_group(obs[label], obs[patient])`). Uses `compute_metrics`, so macro-F1
    averages over the classes present among the patients; `n_patients` counts them.
    """
    truth = pd.Series(truth).astype(str)
    truth.index = truth.index.astype(str)
    missing = sorted(set(scores.index.astype(str)) - set(truth.index))
    if missing:
        raise InputError(f"no true label for {len(missing)} patient(s), e.g. {listing(missing, 3)}")
    y_true = truth.loc[scores.index.astype(str)].to_numpy()
    y_pred = scores.idxmax(axis=1).astype(str).to_numpy()
    m = compute_metrics(
        y_true,
        y_pred,
        scores.max(axis=1).to_numpy(),
        list(classes) if classes is not None else list(scores.columns),
    )
    keep = ("accuracy", "macro_f1", "weighted_f1", "per_class", "confusion")
    return {"n_patients": m["n_cells"], **{k: m[k] for k in keep}}
