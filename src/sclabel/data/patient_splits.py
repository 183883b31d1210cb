"""Patient-level splits stratified by a sample label, and the leaky cell-level split.

Why: labels such as COVID-19 severity belong to patients, and cells of one patient share a
patient effect. A random-cell split puts cells of every patient in both train and test, so
a classifier scores by recognising patients (the flaw of the GSE158055 scGPT analysis).
`sclabel.data.splits.make_split(groups=...)` keeps patients whole but assigns them at
random, so with 20-odd patients a part can miss a severity; here the patients themselves
are stratified by their label (by reusing `make_split` on one row per patient).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

from sclabel.data.obs import require_classes, require_columns
from sclabel.data.splits import PARTS, check_folds, make_split
from sclabel.errors import InputError

log = logging.getLogger("sclabel")


def _patient_strata(obs: pd.DataFrame, patient_key: str, label_key: str) -> pd.Series:
    """One stratum per patient: its label, or its labels joined by '+' (e.g. several samples
    of one patient: progression and convalescence), indexed by patient name."""
    require_columns(obs, [patient_key, label_key])
    require_classes(obs[label_key], label_key)
    patients = obs[patient_key].astype(object)
    if patients.isna().any():
        raise InputError(f"{patient_key!r} has missing values; fill or drop those cells")
    frame = pd.DataFrame({"p": patients.astype(str).to_numpy(), "y": obs[label_key].to_numpy()})
    strata = frame.dropna().groupby("p")["y"].agg(lambda y: "+".join(sorted(map(str, set(y)))))
    return strata.reindex(sorted(frame["p"].unique())).fillna("(unlabelled)")


def _to_cells(obs: pd.DataFrame, patient_key: str, part_of: pd.Series) -> pd.Series:
    parts = obs[patient_key].astype(str).map(part_of.astype(str)).to_numpy()
    return pd.Series(pd.Categorical(parts, categories=PARTS), index=obs.index, name="split")


def _log_parts(split: pd.Series, obs: pd.DataFrame, patient_key: str, label_key: str) -> None:
    per_part = obs.groupby(split.to_numpy(), observed=True)[patient_key].nunique()
    log.info("patient split (%s): %s patients", label_key, per_part.to_dict())
    labels = set(obs[label_key].dropna())
    for part, frame in obs.groupby(split.to_numpy(), observed=True):
        missing = labels - set(frame[label_key].dropna())
        if missing:
            log.warning("the %s part has no patient with %s %s", part, label_key, sorted(missing))


def patient_split(
    obs: pd.DataFrame,
    patient_key: str,
    label_key: str,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> pd.Series:
    """ "train"/"val"/"test" per cell (Series indexed like `obs`), every patient in one part.

    Patients are stratified by their label: each class's patients are shuffled and dealt
    train/val/test by `fractions`, with at least one val and one test patient for any
    class with three or more patients. Pass a sample id as `patient_key` only if samples of
    one patient never share a part on purpose; otherwise keep the patient id.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise InputError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    strata = _patient_strata(obs, patient_key, label_key)
    part_of = make_split(strata, fractions=tuple(fractions), seed=seed)
    split = _to_cells(obs, patient_key, part_of)
    _log_parts(split, obs, patient_key, label_key)
    return split


def patient_kfold(
    obs: pd.DataFrame,
    patient_key: str,
    label_key: str,
    k: int = 5,
    seed: int = 0,
    *,
    val_fraction: float = 0.15,
) -> list[pd.Series]:
    """k splits like `patient_split`'s: every patient is a test patient in exactly one fold.

    Unlike `splits.kfold_by_group` (donors dealt to even cell counts, for cell-type labels),
    patients here are stratified by their sample-level label, so with few patients per
    severity every fold still tests each severity.

    Each class's patients are shuffled and dealt to folds round-robin (continuing where the
    previous class stopped, so folds have equal patient counts). Within a fold, validation
    patients (about `val_fraction` of all patients, stratified the same way) come from the
    non-test patients; they are what `fit_cell_type_weights` should be fitted on.
    """
    check_folds(k, val_fraction)
    strata = _patient_strata(obs, patient_key, label_key)
    if k > strata.size:
        raise InputError(f"k={k} folds need at least {k} patients; there are {strata.size}")
    rng = np.random.default_rng([seed, 5])
    fold = pd.Series(0, index=strata.index)
    offset = 0
    for stratum in sorted(strata.unique()):
        members = rng.permutation(strata.index[strata == stratum].to_numpy())
        fold[members] = (offset + np.arange(members.size)) % k
        offset += members.size
    share = val_fraction * k / (k - 1)  # of the non-test patients
    splits = []
    for f in range(k):
        rest = strata[fold != f]
        part_of = pd.Series("test", index=strata.index, dtype=object)
        inner = make_split(rest, fractions=(1 - share, share, 0.0), seed=seed + f)
        part_of[rest.index] = inner.astype(str)
        split = _to_cells(obs, patient_key, part_of)
        _log_parts(split, obs, patient_key, label_key)
        splits.append(split)
    return splits


def cell_level_split(
    obs: pd.DataFrame,
    label_key: str,
    *,
    allow_patient_leak: bool = False,
    patient_key: str | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> pd.Series:
    """Random cells stratified by label: the GSE158055 protocol, kept only to show its leak.

    Cells of one patient land in train and test, so scores include recognising patients.
    Refused unless `allow_patient_leak=True`; then a UserWarning and a log line say so
    (with `patient_key`, how many patients sit in more than one part).
    """
    if not allow_patient_leak:
        raise InputError(
            "a cell-level split puts cells of one patient in train and test, so scores measure "
            "patient recognition; use patient_split, or pass allow_patient_leak=True to "
            "reproduce the leaky protocol on purpose"
        )
    require_columns(obs, [label_key] + ([patient_key] if patient_key else []))
    require_classes(obs[label_key], label_key)
    split = make_split(obs[label_key].astype(object), fractions=fractions, seed=seed)
    detail = ""
    if patient_key is not None:
        patients = obs[patient_key].astype(str).to_numpy()
        n_parts = pd.Series(split.to_numpy()).groupby(patients).nunique()
        shared = int((n_parts > 1).sum())
        detail = f" ({shared} of {n_parts.size} patients are in more than one part)"
    message = f"cell-level split: patients leak between train and test{detail}"
    log.warning(message)
    warnings.warn(message, UserWarning, stacklevel=2)
    return split
