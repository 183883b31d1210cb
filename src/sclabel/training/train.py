"""`sclabel.train`: from an AnnData (or a store) and a label column to a trained, tested Model."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sclabel.config import DataConfig, ModelConfig, split_options
from sclabel.data.augment import AugmentConfig, config_from
from sclabel.data.genes import gene_list
from sclabel.data.loader import EVAL_BATCH, iterate_batches
from sclabel.errors import InputError
from sclabel.evaluation.calibration import expected_calibration_error
from sclabel.evaluation.metrics import compute_metrics
from sclabel.inference.calibration import Calibration
from sclabel.inference.model import Model
from sclabel.io.atomic import check_dir
from sclabel.models import MODELS, Classifier, check_family, resolve_params
from sclabel.models.base import predict_probas
from sclabel.store.format import Store
from sclabel.training import auto
from sclabel.training.auto import AUTO
from sclabel.training.data import TrainingData, load_training_data
from sclabel.training.fit import fit_members, fit_record, make_augmentation

log = logging.getLogger("sclabel")


def train(
    adata,
    *,
    label_key: str | Sequence[str],
    split_by: str | None = None,
    split_key: str | None = None,
    model: str = "auto",
    model_params: dict[str, Any] | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    obsm_key: str | None = None,
    pca: int | None = None,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    ensemble: int = 1,
    augment: bool | dict | AugmentConfig | None = None,
    donor_key: str | None = None,
    loader: dict[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    out: str | Path | None = None,
    data_name: str | None = None,
    values: str | None = None,
    genes=None,
    **train_options: Any,
) -> Model:
    """Train a classifier of family `model` on `adata.obs[label_key]`.

    `model="auto"` fits linear, celltypist and mlp (those that suit the run; see
    `sclabel.training.auto`) and keeps the one with the best validation macro-F1; what was
    compared and chosen is in `metrics["auto"]`.

    Several label columns (`label_key=["severity", "state"]`) train one multi-task model: a
    shared encoder with one head per column, the loss summed with `task_weights` (a
    TrainConfig field; default 1 each). `Model.predict(..., task=column)` picks a head.

    Input is the expression of the genes, or `obsm_key`: a per-cell embedding computed
    elsewhere (scGPT, scVI, `sclabel embed`, PCA), or `pca=N`: the top N principal
    components of normalized expression, fitted on the training cells only and saved with
    the model (prediction projects new cells the same way).

    Cells are split by `split_key` (an obs column of train/val/test, e.g. from `sclabel
    prepare`), by `split_by` groups (e.g. donors), or stratified by label; the model is
    early-stopped on validation macro-F1 and scored on the test part. `train_options` are
    TrainConfig fields (max_epochs, batch_size, lr, seed, loss, ...), Hardware fields
    (accelerator, devices, strategy, num_nodes, precision, parallel_members) and progress.
    `ensemble=N` trains N members with seeds seed..seed+N-1 and averages their probabilities.
    `augment=True` (or a dict of AugmentConfig fields) adds scTab's donor-difference
    augmentation, with donors from `donor_key` (default: `split_by`).

    `adata` may be a `Store` (see `sclabel store`) for data bigger than memory: cells are
    streamed from disk with `loader` options (block_size, buffer_batches, workers, prefetch).

    `checkpoint_dir` keeps the training state after every epoch; `resume=True` continues a
    killed run from it and ends as the uninterrupted run would have. `out` saves the model
    there (checked before any data is read); the state is removed only once the model is
    safely written (or, without `out`, when the trained model is returned). `data_name`
    names the training data in the model card (default: the file, when it is known).

    `genes` trains on the genes a list, a file (one id per line) or another dataset (an
    AnnData or .h5ad: a query's) shares with `adata`, matched as a query's genes are; the
    model then covers that query fully.

    `values` says what X (or `layer`) holds instead of detecting it: "counts", "log1p",
    "log2" (log2(x+1), converted) or "normalized" (per-cell-scaled values such as CPM, TPM
    or FPKM, not logged: each cell is rescaled to the target sum and log1p'd, as CellTypist
    treats its input). Detection tells counts from log1p and log2 by whether expm1 or 2^x - 1
    of the rows sum to one total (io/read.py, `detect_values`).

    Loss and class balance (TrainConfig fields): `loss` is one of ce, weighted_ce (default),
    focal (with `focal_gamma`), dice or bce (see `sclabel.training.losses`); `upsample=f`
    repeats the training cells of every class smaller than f x the largest up to that size
    (1 or True: all as large as the largest). With upsampling the default loss is plain ce,
    and class weights, if a weighted loss is chosen explicitly, are computed on the
    upsampled cells, so the classes are not balanced twice.
    """
    if ensemble < 1:
        raise InputError("ensemble must be at least 1")
    label_keys = [label_key] if isinstance(label_key, str) else list(label_key)
    if not label_keys:
        raise InputError("give at least one label column")
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        if checkpoint_dir.exists() and not resume:
            msg = (
                f"an interrupted training left its state in {checkpoint_dir}; pass --resume "
                "(resume=True) to continue it, or delete that folder to start again"
            )
            raise InputError(msg)
    if out is not None:
        check_dir(out, marker="config.json", what="checkpoint")
    from_store = isinstance(adata, Store)
    if from_store and (layer is not None or gene_key is not None):
        raise InputError("a store has one matrix and one gene vocabulary: drop layer/gene_key")
    if genes is not None and (from_store or obsm_key is not None):
        raise InputError("genes= chooses genes of an expression matrix, not of a store/embedding")
    gene_table = None if genes is None else gene_list(genes)
    data_config = DataConfig(
        label_key=label_keys[0],
        extra_label_keys=tuple(label_keys[1:]),
        split_by=split_by,
        split_key=split_key,
        layer=layer,
        gene_key=gene_key,
        obsm_key=obsm_key,
        pca=pca,
        split_fractions=split_fractions,
        values=values,
        genes_from=None if gene_table is None else gene_table[1],
        **({"target_sum": adata.meta["target_sum"]} if from_store else {}),
    )
    augment_config = config_from(augment)
    if model == AUTO:  # the families that can honour this run, compared on validation cells
        user_config, _, _ = split_options(dict(train_options))
        rules = family_rules(data_config, user_config, augment_config is not None, from_store)
        families = auto.candidates(rules=rules, model_params=model_params)
        for family in families:
            check_inputs(family, data_config, user_config, augment_config is not None, from_store)
    else:
        families = [model]
        resolve_params(model, model_params or {})
    defaults = MODELS[families[0]].train_defaults
    first_config, asked_hardware, progress = split_options(dict(train_options), defaults)
    if model != AUTO:
        check_inputs(model, data_config, first_config, augment_config is not None, from_store)
    data = load_training_data(
        adata, data_config, seed=first_config.seed, donor_key=donor_key, progress=progress,
        loader=loader, genes=gene_table,
    )  # fmt: skip
    metrics: dict[str, Any] = {"n_cells": {p: int(s[1].size) for p, s in data.subsets.items()}}
    metrics["trained_with"] = provenance(adata, data_name)
    augmentation = None
    if augment_config is not None:
        augmentation, metrics["augmentation"] = make_augmentation(
            data, augment_config, first_config.seed
        )
    if model == AUTO:
        distributed = str(asked_hardware.devices) != "1" or asked_hardware.num_nodes > 1
        families = auto.by_run(
            auto.by_size(families, data), ensemble=ensemble, distributed=distributed
        )
    fitted = {}
    for family in families:
        params = resolve_params(family, {} if model == AUTO else (model_params or {}))
        train_config, hardware, progress = split_options(
            dict(train_options), MODELS[family].train_defaults
        )
        if model == AUTO and len(families) > 1:
            log.info("auto: fitting %s (%d of %d)", family, len(fitted) + 1, len(families))
        module, results = fit_members(
            data,
            family,
            params,
            train_config,
            hardware=hardware,
            progress=progress,
            ensemble=ensemble,
            augmentation=augmentation,
            checkpoint_dir=(
                checkpoint_dir / family if checkpoint_dir and model == AUTO else checkpoint_dir
            ),
        )
        fitted[family] = (module, results, train_config, hardware, params)
    chose_family = model == AUTO
    if chose_family:
        scores = {f: auto.score(fitted[f][0], data, "val") for f in families}
        model, reason = auto.choose(scores)
        metrics["auto"] = {
            "chosen": model,
            "reason": reason,
            "candidates": {
                f: {"val_macro_f1": v, "test_macro_f1": auto.score(fitted[f][0], data, "test")}
                for f, v in scores.items()
            },
        }
        log.info("auto: chose %s (%s) from %s", model, reason, ", ".join(families))
    module, results, train_config, hardware, params = fitted[model]
    calibration = calibrate(module, data)  # on validation cells this fit has not seen
    if chose_family:  # a full-batch solver again, on training + validation cells
        merged, why = auto.refit_data(data, augmentation is not None, results)
        metrics["auto"]["refit"] = {"done": merged is not None, "reason": why}
        if merged is not None:
            metrics["auto"]["refit"]["n_cells"] = int(merged.subsets["train"][1].size)
            log.info("auto: refitting %s on %d cells", model, merged.subsets["train"][1].size)
            module, results = fit_members(
                merged, model, params, train_config, hardware=hardware, progress=progress,
                ensemble=ensemble, checkpoint_dir=checkpoint_dir and checkpoint_dir / "refit",
            )  # fmt: skip
            data = merged
    model_config = ModelConfig(family=model, params=params)
    fits = [fit_record(r, train_config.seed + i) for i, r in enumerate(results)]
    metrics["fit"] = fits[0]
    if ensemble > 1:
        metrics["members"] = fits
    metrics.update(test_metrics(module, data, data_config.label_keys, calibration))
    split_frame = pd.DataFrame({"split": data.split.astype(str)})
    if data.groups is not None:
        split_frame["group"] = data.groups.astype(str).to_numpy()
    if from_store and split_key is not None:
        split_frame = None  # the split lives in the store; one copy of it is enough
        metrics["split"] = {"store": str(adata.path), "split_key": split_key}
    elif from_store:  # rows -> cell names, for split.csv
        split_frame.index = adata.obs_names()[split_frame.index.to_numpy()]
    model = Model(
        module,
        inputs=data.inputs,
        classes=data.classes,
        data_config=dataclasses.replace(data_config, gene_key=data.inputs.gene_key),
        model_config=model_config,
        train_config=train_config,
        hardware=hardware,
        metrics=metrics,
        split=split_frame,
        is_main_process=results[-1].is_main_process,
        augmentation=augmentation,
        extra_classes=data.extra_classes,
        calibration=calibration,
    )
    if out is not None and model.is_main_process:
        model.save(out)
    if checkpoint_dir is not None and model.is_main_process:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # only now: the model is complete
    return model


def provenance(adata, data_name: str | None) -> dict[str, str]:
    """sclabel version, date and (when known) the training data, for the model card."""
    from datetime import date
    from importlib.metadata import version

    if data_name is None:
        path = getattr(adata, "path", None) or getattr(adata, "filename", None)
        data_name = None if path is None else Path(path).name
    info = {"sclabel_version": version("sclabel"), "date": str(date.today())}
    return info if data_name is None else {**info, "data": data_name}


def calibrate(module: Classifier, data: TrainingData) -> Calibration:
    """Temperature, conformal scores and unknown threshold from the validation cells (the
    primary label column); no validation cells: nothing is fitted."""
    X_val, y_val = data.subsets["val"]
    if not len(y_val):
        return Calibration()
    proba = predict_probas(module, iterate_batches(X_val, batch_size=EVAL_BATCH))[0].numpy()
    calibration = Calibration.fit(proba, data.class_codes(y_val))
    log.info(
        "calibration on %d validation cells: temperature %.2f, ECE %.3f -> %.3f",
        y_val.size if y_val.ndim == 1 else y_val.shape[0],
        calibration.temperature,
        calibration.info.get("val_ece_before", float("nan")),
        calibration.info.get("val_ece_after", float("nan")),
    )
    return calibration


def test_metrics(
    module: Classifier, data: TrainingData, label_keys, calibration: Calibration | None = None
) -> dict[str, Any]:
    """Scores on the test cells: `test` for the primary label column (with calibrated
    confidences), and with several columns also `tasks`: every column's scores by its
    name; `calibration`: what temperature scaling, the sets and the threshold did there."""
    X_test, y_test = data.subsets["test"]
    if not len(y_test):
        return {}
    probas = predict_probas(module, iterate_batches(X_test, batch_size=EVAL_BATCH))
    raw = probas[0].numpy()
    calibration = calibration or Calibration()
    probas[0] = torch.from_numpy(calibration.apply(raw))
    y_test = y_test.reshape(len(y_test), -1)
    all_classes = [data.classes, *data.extra_classes.values()]
    scores = {}
    for t, (key, classes) in enumerate(zip(label_keys, all_classes, strict=True)):
        names, proba = np.asarray(classes, dtype=object), probas[t].numpy()
        scores[key] = compute_metrics(
            names[y_test[:, t]], names[proba.argmax(1)], proba.max(1), classes
        )
        log.info(
            "test (%s): macro-F1 %.3f, accuracy %.3f on %d cells",
            key,
            scores[key]["macro_f1"],
            scores[key]["accuracy"],
            len(y_test),
        )
    result: dict[str, Any] = {"test": scores[label_keys[0]]}
    if len(scores) > 1:
        result["tasks"] = scores
    if calibration.fitted:
        # the test scores' chance ECE is of these same tempered confidences: not drawn twice
        chance = result["test"]["ece_by_chance"]
        result["calibration"] = calibration_report(calibration, raw, y_test[:, 0], chance)
    return result


def calibration_report(
    calibration: Calibration, raw: np.ndarray, y: np.ndarray, chance: float
) -> dict:
    """On held-out cells: ECE before/after temperature scaling and `chance`, the ECE a
    perfectly calibrated model with the tempered confidences shows on as many cells by
    chance alone (`ece_by_chance`, as `compute_metrics` gives it), the coverage and mean
    size of 90% prediction sets, and what the automatic unknown threshold kept and how
    right it was."""
    tempered = calibration.apply(raw)
    correct = tempered.argmax(axis=1) == y
    threshold = calibration.set_threshold(0.9)
    inside = tempered >= threshold
    report = {
        **calibration.to_dict(),
        "test_ece_before": expected_calibration_error(raw.max(axis=1), correct),
        "test_ece_after": expected_calibration_error(tempered.max(axis=1), correct),
        "test_ece_by_chance": chance,
        "sets_90": {
            "coverage": float(inside[np.arange(y.size), y].mean()),
            "mean_size": float(inside.sum(axis=1).mean()),
            "uncertain_cells": float((inside.sum(axis=1) != 1).mean()),
        },
    }
    if calibration.unknown_threshold is not None:
        kept = tempered.max(axis=1) >= calibration.unknown_threshold
        report["auto_unknown"] = {
            "threshold": calibration.unknown_threshold,
            "kept_cells": float(kept.mean()),
            "precision": float(correct[kept].mean()) if kept.any() else None,
        }
    return report


def family_rules(data: DataConfig, config, augment: bool, from_store: bool) -> dict[str, Any]:
    """What this run asks of a model family (`check_family`'s keywords)."""
    return {
        "store": from_store,
        "augment": augment,
        "loss": config.loss if config.loss not in ("ce", "weighted_ce") else None,
        "label_columns": len(data.label_keys) > 1,
        "input": non_gene_input(data),
    }


def non_gene_input(data: DataConfig) -> str | None:
    return f"obsm {data.obsm_key!r}" if data.obsm_key else (data.pca and f"pca={data.pca}")


def check_inputs(
    family: str, data: DataConfig, config, augment: bool, from_store: bool = False
) -> None:
    """Refuse combinations of input, labels and family that cannot train, before any work:
    the family's rules (models/rules.py), then those of the data itself."""
    non_gene = non_gene_input(data)
    check_family(family, **family_rules(data, config, augment, from_store))
    if non_gene and augment:
        msg = f"donor augmentation shifts gene expression; it does not apply to {non_gene}"
        raise InputError(msg)
    weights = config.task_weights
    if weights is not None and len(weights) != len(data.label_keys):
        msg = (
            f"{len(weights)} task_weights given for {len(data.label_keys)} label column(s) "
            f"{data.label_keys}"
        )
        raise InputError(msg)
