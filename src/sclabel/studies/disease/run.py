"""`sclabel experiment disease`: the disease-state study's tables, regenerated on any dataset.

Why: the COVID-19 scGPT study (GSE158055) compared severity-only, state-only and multi-head
classifiers, training-set sizes and "wide vs deep" cell-type subsets, but scored cells
split at random, so patients leaked into its test sets. This runner redoes every comparison
with patient-level splits (a cell-level split only on explicit request, shown next to the
patient-level one), answers per patient as well as per cell, and adds the k-means and
per-cell-type analyses that say where the signal is. Sections: see `SECTIONS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from sclabel.data.features import read_obsm
from sclabel.data.obs import one_label_per_group, require_classes, require_columns
from sclabel.data.patient_splits import patient_kfold, patient_split
from sclabel.errors import InputError
from sclabel.io.atomic import atomic_dir
from sclabel.io.read import matrix
from sclabel.models import MODELS
from sclabel.studies.disease import sections as sections_
from sclabel.studies.disease.evaluate import Setup
from sclabel.studies.disease.report import DiseaseResult, few_patients_notes

log = logging.getLogger("sclabel")
SECTIONS = ("architecture", "leakage", "sizes", "wide_deep", "kmeans", "per_cell_type")
MARKER = "results.json"  # an earlier experiment folder may be replaced, nothing else


def run_disease_experiment(
    adata: ad.AnnData,
    *,
    labels: Sequence[str],
    patient_key: str | None,
    cell_type_key: str,
    sample_key: str | None = None,
    obsm_key: str | None = None,
    pca: int | None = 50,
    model: str = "ffn",
    layer: str | None = None,
    folds: int | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    caps: Sequence[int] = (1000, 3000, 10000),
    totals: Sequence[int] | None = None,
    deep_types: int = 3,
    min_per_type: int = 0,
    cell_split: bool = False,
    show_leak: bool = False,
    sections: Sequence[str] | None = None,
    top_n: int = 5,
    kmeans_cells: int = 3000,
    seed: int = 0,
    out_dir: str | Path | None = None,
    quick: bool = False,
    **train_options,
) -> DiseaseResult:
    """Train and score the study's classifiers; write report.md, results.json and plots.

    Parameters
    ----------
    labels
        Sample-level label columns (e.g. severity, state): one head each alone, and one
        multi-head model over all of them.
    patient_key, sample_key
        Splits keep every patient in one part. Patient-level answers pool the cells of each
        `sample_key` unit (a patient's sample at one time point; default the patient).
        Without a patient column the run is refused unless `cell_split=True`.
    cell_type_key
        Cell types for balancing, wide vs deep subsets, weighting and per-type scores.
    obsm_key, pca, model, layer
        Input: an embedding in obsm (then `pca` is ignored), else expression projected on
        `pca` components fitted on each run's training cells (None: the genes); `model` is
        the family (ffn: the study's head; a family without a shared encoder, e.g. linear,
        gets no multi-head row, with a note).
    folds, fractions
        k patient folds (every patient tested once), or one split by `fractions`.
    caps, totals, deep_types, min_per_type
        Training-set size caps per cell type; totals for wide vs deep (default: one total
        that `deep_types` types can fill); types with fewer usable cells are dropped.
    cell_split, show_leak
        `cell_split`: the main split is random cells (warned; for data without patients).
        `show_leak`: add the leaky cell-level split next to the patient-level one.
    sections
        A subset of `SECTIONS` (default all; "leakage" needs `show_leak`).
    out_dir
        Folder to write (atomically: nothing is left behind on an error); None writes nothing.
    quick
        Fewer epochs and a smaller k-means, for a smoke run.
    train_options
        Passed to `sclabel.train` (max_epochs, batch_size, lr, patience, model_params, ...).
    """
    chosen = _check(adata, labels, patient_key, cell_type_key, sample_key, obsm_key, sections)
    _check_numbers(
        pca=[] if pca is None or obsm_key else [pca],
        caps=list(caps),
        totals=list(totals or []),
        deep_types=[deep_types],
        top_n=[top_n],
        kmeans_cells=[kmeans_cells],
    )
    chosen = [s for s in chosen if s != "leakage" or show_leak]
    if patient_key is None and not cell_split:
        msg = (
            "no patient column: splits keep patients apart, so pass patient_key "
            "(--patient-key); without one, pass cell_split=True (--cell-split) to split random "
            "cells, knowing that cells of one patient may then sit in train and test"
        )
        raise InputError(msg)
    if show_leak and (patient_key is None or cell_split):
        msg = "show_leak compares a cell-level split with a patient-level one: needs patients"
        raise InputError(msg)
    if model not in MODELS:
        raise InputError(f"unknown model family {model!r}; choose from {sorted(MODELS)}")
    if folds is not None and cell_split:
        raise InputError("folds keep patients apart; a cell-level split is one random split")
    if quick:
        train_options.setdefault("max_epochs", 10)
        kmeans_cells = min(kmeans_cells, 1000)
    train_options = {"progress": False, "seed": seed, **train_options}
    setup = _setup(adata, labels, patient_key, cell_type_key, sample_key, obsm_key, pca, layer)
    setup.train_kwargs |= {"model": model, "obsm_key": obsm_key, **train_options}
    if obsm_key is None:
        setup.train_kwargs["pca"] = pca
    notes = []
    splits = _splits(setup, folds, fractions, cell_split, seed, notes)
    settings = _settings(setup, adata, model, obsm_key, pca, folds, cell_split, seed, splits)
    settings |= {"caps": list(caps), "train_options": train_options}
    options = {
        "caps": list(caps),
        "totals": totals,
        "deep_types": deep_types,
        "min_per_type": min_per_type,
        "top_n": top_n,
        "kmeans_cells": kmeans_cells,
        "k_max": 6 if quick else 10,
        "seed": seed,
        "fractions": fractions,
    }
    if out_dir is None:
        return _run(setup, splits, chosen, options, settings, notes, None)
    with atomic_dir(out_dir, marker=MARKER, what="disease experiment") as folder:
        result = _run(setup, splits, chosen, options, settings, notes, folder)
        result.write(folder)
    log.info("disease experiment written to %s", out_dir)
    return result


def _run(setup, splits, chosen, options, settings, notes, folder) -> DiseaseResult:
    state = sections_.State(setup, splits, options, folder)
    built = {}
    todo = [name for name in SECTIONS if name in chosen]
    start = time.perf_counter()
    for i, name in enumerate(todo, start=1):
        log.info("disease experiment: section %d/%d, %s (%d fold(s); %d models trained so far, "
                 "%.0f s)", i, len(todo), name, len(splits), setup.runs,
                 time.perf_counter() - start)  # fmt: skip
        built[name] = getattr(sections_, name)(state)
    notes += state.notes + few_patients_notes(state.records)
    return DiseaseResult(settings, built, state.records, notes, splits)


def _check(adata, labels, patient_key, cell_type_key, sample_key, obsm_key, sections) -> list:
    """Refuse what would fail later, before any training (and before out_dir exists)."""
    labels = list(labels)
    if not labels or len(set(labels)) != len(labels):
        raise InputError(f"give one or more distinct label columns, got {labels}")
    keys = [k for k in (patient_key, sample_key) if k is not None]
    require_columns(adata.obs, [*labels, cell_type_key, *keys])
    for label in labels:
        require_classes(adata.obs[label], label)
    require_classes(adata.obs[cell_type_key], cell_type_key, minimum=1)
    if obsm_key is not None:
        read_obsm(adata, obsm_key)
    unknown = sorted(set(sections or ()) - set(SECTIONS))
    if unknown:
        raise InputError(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    unit = sample_key or patient_key
    for label in labels if unit else ():
        one_label_per_group(adata.obs[label], adata.obs[unit])
    if sample_key and patient_key:
        per_sample = adata.obs.groupby(sample_key, observed=True)[patient_key].nunique()
        if (per_sample > 1).any():
            msg = f"some {sample_key!r} values span several {patient_key!r} values"
            raise InputError(msg + "; a sample belongs to one patient")
    return list(sections or SECTIONS)


def _check_numbers(**numbers: list) -> None:
    for name, values in numbers.items():
        if any(not isinstance(v, int | np.integer) or v < 1 for v in values):
            raise InputError(f"{name} must be positive whole numbers, got {values}")


def _setup(adata, labels, patient_key, cell_type_key, sample_key, obsm_key, pca, layer) -> Setup:
    """A private AnnData with only what training reads: the caller's object is not touched."""
    keys = [*labels, cell_type_key, patient_key, sample_key]
    columns = [k for k in dict.fromkeys(keys) if k is not None]
    X, var = matrix(adata, layer)
    own = ad.AnnData(X=X, obs=adata.obs[columns].copy(), var=pd.DataFrame(index=var.index))
    for column in var.columns:
        own.var[column] = var[column].to_numpy()
    if obsm_key is not None:
        own.obsm[obsm_key] = read_obsm(adata, obsm_key)
    unit = sample_key or patient_key
    return Setup(own, list(labels), cell_type_key, patient_key, unit)


def _splits(setup: Setup, folds, fractions, cell_split, seed, notes) -> list[pd.Series]:
    """Train/val/test per cell: by patient (stratified by all labels at once), or by cell."""
    if cell_split:
        notes.append(
            "Cell-level split: cells of one patient can sit in train and test, so scores "
            "include recognising patients."
            + ("" if setup.unit_key else " Patient-level answers are unavailable (no patients).")
        )
        return [sections_.cell_split(setup, fractions, seed)]
    frame = sections_.strata_frame(setup)
    if folds is not None:
        return patient_kfold(
            frame, "patient", "stratum", k=folds, seed=seed, val_fraction=fractions[1]
        )
    return [patient_split(frame, "patient", "stratum", fractions=fractions, seed=seed)]


def _real_split(setup, split: pd.Series) -> str:
    """What the first split holds: patients (or units) and cells per part, as made."""
    key = setup.patient_key or setup.unit_key
    if key is None:
        return ", ".join(f"{p} {int((split == p).sum())} cells" for p in ("train", "val", "test"))
    units = setup.adata.obs.loc[split.index, key].astype(str)
    return ", ".join(
        f"{p} {units[split == p].nunique()} {key}s / {int((split == p).sum())} cells"
        for p in ("train", "val", "test")
    )


def _settings(setup, adata, model, obsm_key, pca, folds, cell_split, seed, splits) -> dict:
    obs = setup.adata.obs
    if obsm_key is not None:
        representation = f"obsm[{obsm_key!r}]"
    else:
        representation = f"{pca} PCs of expression (fit on training cells)" if pca else "genes"
    if cell_split:
        split = "cell-level random split (patients leak)"
    elif folds:
        split = f"{folds}-fold by {setup.patient_key} (fold 1: {_real_split(setup, splits[0])})"
    else:
        split = f"by {setup.patient_key}: {_real_split(setup, splits[0])}"
    return {
        "cells": int(adata.n_obs),
        "labels": setup.labels,
        "cell types": int(obs[setup.cell_type_key].nunique()),
        "patients": int(obs[setup.patient_key].nunique()) if setup.patient_key else None,
        "patient-level unit": setup.unit_key,
        "input": representation,
        "model": model,
        "split": split,
        "seed": seed,
    }


__all__ = ["SECTIONS", "DiseaseResult", "run_disease_experiment"]
