"""Fitting members: one model or a deep ensemble, with donor augmentation and upsampling.

Each member is built from the registry, bound to its genes when the family is pretrained,
and fitted by the family's own solver or by the one gradient loop (`loop.fit`); members of
an ensemble differ only in their seed, and train in turn or one per device.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sclabel.config import Hardware, TrainConfig
from sclabel.data.augment import (
    AugmentConfig,
    DonorAugmentation,
    augmentation_r2,
    fit_augmentation,
)
from sclabel.data.sampling import class_weights, upsample_indices
from sclabel.errors import InputError
from sclabel.models import Classifier, build, check_family
from sclabel.models.ensemble import combine
from sclabel.models.multitask import with_tasks
from sclabel.store.loader import StoreRows
from sclabel.training import threads
from sclabel.training.data import TrainingData
from sclabel.training.loop import FitResult, fit
from sclabel.training.parallel import fit_members_parallel

log = logging.getLogger("sclabel")


def make_augmentation(
    data: TrainingData, config: AugmentConfig, seed: int
) -> tuple[DonorAugmentation, dict]:
    """Fit donor-difference vectors on the training part; R^2 before/after for the report."""
    if data.donors is None:
        raise InputError("donor augmentation needs donors: pass --split-by or --donor-key")
    X, y = data.subsets["train"]
    cell_type = np.asarray(data.classes, dtype=object)[data.class_codes(y)]
    augmentation = fit_augmentation(X, cell_type, data.donors["train"], config, seed=seed)
    r2 = augmentation_r2(X, cell_type, data.donors["train"], augmentation, seed=seed)
    log.info(
        "variance explained by donor: %.3f before, %.3f after augmentation (cell type %.3f/%.3f)",
        r2["before"]["r2_donor"],
        r2["after"]["r2_donor"],
        r2["before"]["r2_cell_type"],
        r2["after"]["r2_cell_type"],
    )
    return augmentation, {**augmentation.info, "variance_explained": r2}


def fit_members(
    data: TrainingData,
    family: str,
    params: dict[str, Any],
    config: TrainConfig,
    *,
    hardware: Hardware | None = None,
    progress: bool = True,
    ensemble: int = 1,
    augmentation: DonorAugmentation | None = None,
    checkpoint_dir: Path | None = None,
) -> tuple[Classifier, list[FitResult]]:
    """Train one model, or `ensemble` members on the same split with seeds seed, seed+1, ...

    With `checkpoint_dir`, each member's state is saved there after every epoch, and states
    already there (a killed run of the same data and options) are continued."""
    hardware = hardware or Hardware()
    check_family(family, augment=augmentation is not None)
    data = upsample_training(data, config.upsample, config.seed)  # no-op unless asked
    train, val = data.subsets["train"], data.subsets["val"]
    task_classes = [data.classes, *data.extra_classes.values()]
    train_y = train[1].reshape(len(train[1]), -1)
    weights = [class_weights(train_y[:, t], len(c)) for t, c in enumerate(task_classes)]
    if len(weights) == 1:
        weights = weights[0]

    def build_member(member: int) -> Classifier:
        torch.manual_seed(config.seed + member)
        module = build(family, data.n_inputs, len(data.classes), params)
        if module.capabilities.pretrained:  # pretrained weights + gene tokens
            module.bind(data.vocabulary)
        return with_tasks(module, {k: len(v) for k, v in data.extra_classes.items()})

    def train_member(member: int, member_hardware: Hardware) -> tuple[Classifier, FitResult]:
        module = build_member(member)
        n_threads = threads.choose(module, member_hardware.threads)
        with threads.using(n_threads):
            module, result = fit_member(member, module, member_hardware)
        result.threads = n_threads
        return module, result

    def fit_member(member: int, module: Classifier, member_hardware: Hardware):
        member_config = dataclasses.replace(config, seed=config.seed + member)
        augmented = augmentation is not None
        distributed = str(member_hardware.devices) != "1" or member_hardware.num_nodes > 1
        if module.fits_directly(
            train[0], augmented=augmented, config=member_config, distributed=distributed
        ):
            # a convex family's own solver (celltypist; linear on data of moderate size)
            return module, module.fit_direct(train, val, class_weight=weights, config=member_config)
        run = {
            "family": family,
            "params": params,
            "config": member_config.to_dict(),
            "hardware": member_hardware.to_dict(),
            "classes": data.classes,
            "n_cells": {p: int(s[1].size) for p, s in data.subsets.items()},
            "augmented": augmentation is not None,
        }
        result = fit(
            module,
            train,
            val,
            class_weight=weights,
            config=member_config,
            hardware=member_hardware,
            progress=progress,
            augment=None if augmentation is None else augmentation.apply,
            state_dir=None if checkpoint_dir is None else checkpoint_dir / f"member-{member}",
            run=run,
            desc=f"member {member + 1}/{ensemble}" if ensemble > 1 else "training",
        )
        return module, result

    if hardware.parallel_members and ensemble > 1:
        members, results = fit_members_parallel(
            ensemble, hardware, train_member, build_member, shared=checkpoint_dir
        )
    else:
        trained = [train_member(member, hardware) for member in range(ensemble)]
        members, results = [m for m, _ in trained], [r for _, r in trained]
    return combine(members), results


def fit_record(result: FitResult, seed: int) -> dict[str, Any]:
    """One member's training summary, as metrics.json keeps it."""
    return {
        "seed": seed,
        "best_epoch": result.best_epoch,
        "best_val_macro_f1": result.best_val_macro_f1,
        "epochs_run": result.epochs_run,
        "train_seconds": result.seconds,
        "batch_size": result.batch_size,
        "threads": result.threads,
        "history": result.history,
    }


def upsample_training(data: TrainingData, target: float, seed: int = 0) -> TrainingData:
    """`data` with the training part's rare classes repeated (`upsample_indices`).

    Validation and test cells are never repeated, so early stopping and test scores see the
    real class frequencies. In memory the repeated rows are copied (memory grows with the
    added cells); from a store only row numbers are repeated.
    """
    if not target:
        return data
    X, y = data.subsets["train"]
    positions = upsample_indices(data.class_codes(y), target, seed)
    log.info(
        "upsampling: %d -> %d training cells (every class at least %.0f%% of the largest); "
        "class weights come from the upsampled cells, and the default loss is plain ce",
        y.size,
        positions.size,
        100 * target,
    )
    donors = data.donors
    if donors is not None:
        donors = {**donors, "train": donors["train"][positions]}
    taken = X.take(positions) if isinstance(X, StoreRows) else X[positions]
    subsets = {**data.subsets, "train": (taken, y[positions])}
    return dataclasses.replace(data, subsets=subsets, donors=donors)
