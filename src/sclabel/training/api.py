"""`sclabel.train`: from an AnnData and a label column to a trained, tested Model.

Two steps that the benchmark and scaling harnesses reuse: `load_training_data` (labels,
split, genes, normalized train/val/test matrices) and `fit_members` (one model or a deep
ensemble, optionally with donor augmentation).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sclabel._atomic import atomic_dir
from sclabel.config import DataConfig, ModelConfig, TrainConfig
from sclabel.data import genes, io
from sclabel.data.augment import (
    AugmentConfig,
    DonorAugmentation,
    augmentation_r2,
    config_from,
    fit_augmentation,
)
from sclabel.data.features import Projection, embedding_vocabulary, fit_pca, read_obsm
from sclabel.data.loader import EVAL_BATCH, iterate_batches
from sclabel.data.normalize import iter_prepared
from sclabel.data.sampling import class_weights, upsample_indices
from sclabel.data.splits import PARTS, kfold_by_group, make_split
from sclabel.data.store import Store
from sclabel.data.store_loader import StoreRows
from sclabel.errors import InputError
from sclabel.evaluation.metrics import compute_metrics
from sclabel.model import Model
from sclabel.models import MODELS, Classifier, build, check_augmentable, resolve_params
from sclabel.models.base import predict_probas
from sclabel.models.ensemble import combine
from sclabel.models.multitask import with_tasks
from sclabel.training.loop import FitResult, fit
from sclabel.training.parallel import fit_members_parallel

log = logging.getLogger("sclabel")
Subset = tuple[sp.csr_matrix, np.ndarray]


def read_labels(obs: pd.DataFrame, label_key: str) -> pd.Series:
    """The label column as strings, NaN where a cell is unlabeled."""
    _require_column(obs, label_key, "label")
    return io.as_strings(obs[label_key])


def _require_column(obs: pd.DataFrame, key: str, what: str) -> None:
    if key not in obs.columns:
        raise InputError(f"{what} column {key!r} not found in obs; available: {list(obs.columns)}")


@dataclass
class TrainingData:
    """Normalized, gene-aligned train/val/test matrices with class codes and donors."""

    classes: list[str]
    vocabulary: genes.Vocabulary
    gene_key: str | None
    input_kind: str
    subsets: dict[str, Subset]
    split: pd.Series  # train/val/test per labeled cell (indexed by cell name)
    groups: pd.Series | None  # the split_by column, per labeled cell
    donors: dict[str, np.ndarray] | None  # per part, for donor augmentation
    # further label columns -> their classes (multi-task); y is then cells x tasks
    extra_classes: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    projection: Projection | None = None  # pca=N: fitted on the training cells

    @property
    def n_genes(self) -> int:
        return len(self.vocabulary.ids)

    @property
    def n_inputs(self) -> int:
        """Width of a model's input: genes, embedding dimensions or principal components."""
        return self.n_genes if self.projection is None else self.projection.n_components

    def class_codes(self, y: np.ndarray) -> np.ndarray:
        """The primary label column's codes of `y` (1-D, or column 0 of cells x tasks)."""
        return y if y.ndim == 1 else y[:, 0]


def _given_split(obs: pd.DataFrame, split_key: str) -> pd.Series:
    _require_column(obs, split_key, "split")
    values = obs[split_key].astype(object)
    unknown = sorted(set(values.dropna().astype(str)) - set(PARTS))
    if unknown:
        msg = f"split column {split_key!r} has values {unknown[:5]}; expected train, val or test"
        raise InputError(msg)
    if not (values == "train").any():
        raise InputError(f"split column {split_key!r} marks no cell as 'train'")
    return pd.Series(pd.Categorical(values, categories=PARTS), index=obs.index, name="split")


def load_training_data(
    source: ad.AnnData | Store,
    data_config: DataConfig,
    *,
    seed: int = 0,
    donor_key: str | None = None,
    progress: bool = True,
    loader: dict[str, Any] | None = None,
) -> TrainingData:
    """Labels, split (from `split_key`, by `split_by` groups, or stratified) and normalized
    matrices, one part at a time so peak memory is about the normalized data.

    From a `Store`, the parts stay on disk (`StoreRows`, streamed with `loader` options such
    as block_size and workers) and only the obs columns used are read. With several label
    columns, only cells labelled in all of them are used, and the split follows the first.
    """
    donor_key = donor_key or data_config.split_by
    label_keys = data_config.label_keys
    if isinstance(source, Store):
        used = [*label_keys, data_config.split_key, data_config.split_by, donor_key]
        obs = pd.DataFrame({c: source.column(c) for c in dict.fromkeys(used) if c is not None})
    else:
        obs = source.obs
    every_label = {key: read_labels(obs, key) for key in label_keys}
    labels = every_label[data_config.label_key]
    keep = np.logical_and.reduce([v.notna().to_numpy() for v in every_label.values()])
    if data_config.split_key is not None:
        split = _given_split(obs, data_config.split_key)
        keep &= split.notna().to_numpy()
    if not keep.all():
        log.info("%d unlabeled or unassigned cells are left out of training", int((~keep).sum()))
    task_classes = {key: sorted(pd.unique(v[keep])) for key, v in every_label.items()}
    for key, names in task_classes.items():
        if len(names) < 2:
            msg = f"label column {key!r} has {len(names)} class(es); need at least 2"
            raise InputError(msg)
    classes = task_classes[data_config.label_key]
    groups = None
    if data_config.split_by is not None:
        _require_column(obs, data_config.split_by, "split")
        groups = obs[data_config.split_by][keep]
    if data_config.split_key is None:
        split = make_split(
            labels[keep], groups=groups, fractions=data_config.split_fractions, seed=seed
        )
    else:
        split = split[keep]
    donor_values = None
    if donor_key is not None:
        _require_column(obs, donor_key, "donor")
        donor_values = obs[donor_key][keep].astype(str).to_numpy()
    rows = np.flatnonzero(keep)
    codes = [
        pd.Categorical(every_label[key][keep], categories=names).codes.astype(np.int64)
        for key, names in task_classes.items()
    ]
    y = codes[0] if len(codes) == 1 else np.stack(codes, axis=1)
    part = split.to_numpy()
    projection = None
    if isinstance(source, Store) and (data_config.obsm_key or data_config.pca):
        raise InputError("a store holds genes only: train on obsm or pca input from an .h5ad")
    if data_config.obsm_key is not None:
        values = read_obsm(source, data_config.obsm_key)
        vocabulary = embedding_vocabulary(data_config.obsm_key, values.shape[1])
        used_key, input_kind = None, "embedding"
        subsets = {name: (values[rows[part == name]], y[part == name]) for name in PARTS}
    elif isinstance(source, Store):
        vocabulary, used_key = source.vocabulary, source.meta.get("gene_key")
        kinds = {s["values"] for s in source.meta["sources"]}
        input_kind = kinds.pop() if len(kinds) == 1 else "mixed"
        idle: list = []  # the parts run one after another and share their loader buffers
        subsets = {
            name: (
                StoreRows(source, rows[part == name], idle=idle, **(loader or {})),
                y[part == name],
            )
            for name in PARTS
        }
    else:
        vocabulary, used_key, input_kind, matrices = _prepare_in_memory(
            source, data_config, rows, part, progress
        )
        if data_config.pca is not None:
            projection = fit_pca(matrices["train"], data_config.pca, seed=seed)
            matrices = {name: projection.apply(m) for name, m in matrices.items()}
        subsets = {name: (matrices[name], y[part == name]) for name in PARTS}
    train_y = subsets["train"][1].reshape(len(subsets["train"][1]), -1)
    for t, (key, names) in enumerate(task_classes.items()):
        missing = [c for i, c in enumerate(names) if not (train_y[:, t] == i).any()]
        if missing:
            log.warning(
                "%s: classes absent from the training split (cannot be learned): %s", key, missing
            )
    return TrainingData(
        classes=classes,
        vocabulary=vocabulary,
        gene_key=used_key,
        input_kind=input_kind,
        subsets=subsets,
        split=split,
        groups=groups,
        donors=None if donor_values is None else {p: donor_values[part == p] for p in PARTS},
        extra_classes={k: v for k, v in task_classes.items() if k != data_config.label_key},
        projection=projection,
    )


def _prepare_in_memory(adata, data_config, rows, part, progress):
    """Align and normalize the kept cells of each part into an in-memory CSR."""
    X, var = io.matrix(adata, data_config.layer)
    if X is None or X.shape[1] == 0:
        msg = f"this AnnData has no genes; train on an embedding (obsm: {list(adata.obsm)})"
        raise InputError(msg)
    values = io.detect_values(X)
    log.info("input: %s", values.detail)
    vocabulary, used_key = genes.Vocabulary.from_var(var, data_config.gene_key)
    alignment = genes.align(var, vocabulary, gene_key=used_key, min_coverage=1.0)

    def prepare(name: str) -> sp.csr_matrix:
        chunks = iter_prepared(
            X,
            kind=values.kind,
            alignment=alignment,
            target_sum=data_config.target_sum,
            rows=rows[part == name],
            progress=progress,
            desc=f"preparing {name}",
        )
        empty = sp.csr_matrix((0, len(vocabulary.ids)), dtype=np.float32)
        return sp.vstack([empty, *chunks], format="csr")

    return vocabulary, used_key, values.kind, {name: prepare(name) for name in PARTS}


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
    ensemble: int = 1,
    augmentation: DonorAugmentation | None = None,
    checkpoint_dir: Path | None = None,
) -> tuple[Classifier, list[FitResult]]:
    """Train one model, or `ensemble` members on the same split with seeds seed, seed+1, ...

    With `checkpoint_dir`, each member's state is saved there after every epoch, and states
    already there (a killed run of the same data and options) are continued."""
    if augmentation is not None:
        check_augmentable(family)
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
        bind = getattr(module, "bind", None)  # pretrained families: weights + gene tokens
        if bind is not None:
            bind(data.vocabulary)
        return with_tasks(module, {k: len(v) for k, v in data.extra_classes.items()})

    def train_member(member: int, member_config: TrainConfig) -> tuple[Classifier, FitResult]:
        member_config = dataclasses.replace(member_config, seed=config.seed + member)
        module = build_member(member)
        fit_direct = getattr(module, "fit_direct", None)  # convex families use their solver
        if fit_direct is not None:
            return module, fit_direct(train, val, class_weight=weights, config=member_config)
        run = {
            "family": family,
            "params": params,
            "config": member_config.to_dict(),
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
            augment=None if augmentation is None else augmentation.apply,
            state_dir=None if checkpoint_dir is None else checkpoint_dir / f"member-{member}",
            run=run,
        )
        return module, result

    if config.parallel_members and ensemble > 1:
        members, results = fit_members_parallel(
            ensemble, config, train_member, build_member, shared=checkpoint_dir
        )
    else:
        trained = [train_member(member, config) for member in range(ensemble)]
        members, results = [m for m, _ in trained], [r for _, r in trained]
    return combine(members), results


def _fit_record(result: FitResult, seed: int) -> dict[str, Any]:
    return {
        "seed": seed,
        "best_epoch": result.best_epoch,
        "best_val_macro_f1": result.best_val_macro_f1,
        "epochs_run": result.epochs_run,
        "train_seconds": result.seconds,
        "batch_size": result.batch_size,
        "history": result.history,
    }


def train(
    adata: ad.AnnData | Store,
    *,
    label_key: str | Sequence[str],
    split_by: str | None = None,
    split_key: str | None = None,
    model: str = "mlp",
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
    **train_options: Any,
) -> Model:
    """Train a classifier of family `model` on `adata.obs[label_key]`.

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
    TrainConfig fields (max_epochs, batch_size, lr, seed, accelerator, devices, ...).
    `ensemble=N` trains N members with seeds seed..seed+N-1 and averages their probabilities.
    `augment=True` (or a dict of AugmentConfig fields) adds scTab's donor-difference
    augmentation, with donors from `donor_key` (default: `split_by`).

    `adata` may be a `Store` (see `sclabel store`) for data bigger than memory: cells are
    streamed from disk with `loader` options (block_size, buffer_batches, workers, prefetch).

    `checkpoint_dir` keeps the training state after every epoch (removed when training
    ends); `resume=True` continues a killed run from it and ends as the uninterrupted run
    would have.

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
    from_store = isinstance(adata, Store)
    if from_store:
        if layer is not None or gene_key is not None:
            raise InputError("a store has one matrix and one gene vocabulary: drop layer/gene_key")
        if hasattr(MODELS.get(model), "fit_direct"):
            raise InputError(f"the {model!r} family is fitted in memory; train it from an .h5ad")
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
        **({"target_sum": adata.meta["target_sum"]} if from_store else {}),
    )
    model_config = ModelConfig(family=model, params=resolve_params(model, model_params or {}))
    # the family's preferred settings (e.g. TabNet's from the scTab paper), then the user's
    train_config = TrainConfig.from_dict({**MODELS[model].train_defaults, **train_options})
    _check_loss_applies(model, train_config)
    augment_config = config_from(augment)
    if augment_config is not None:
        check_augmentable(model)  # before any data is read
    _check_inputs(model, data_config, train_config, augment_config is not None)
    data = load_training_data(
        adata,
        data_config,
        seed=train_config.seed,
        donor_key=donor_key,
        progress=train_config.progress,
        loader=loader,
    )
    metrics: dict[str, Any] = {"n_cells": {p: int(s[1].size) for p, s in data.subsets.items()}}
    augmentation = None
    if augment_config is not None:
        augmentation, metrics["augmentation"] = make_augmentation(
            data, augment_config, train_config.seed
        )
    module, results = fit_members(
        data,
        model,
        model_config.params,
        train_config,
        ensemble=ensemble,
        augmentation=augmentation,
        checkpoint_dir=checkpoint_dir,
    )
    if checkpoint_dir is not None and results[-1].is_main_process:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the model is complete
    fits = [_fit_record(r, train_config.seed + i) for i, r in enumerate(results)]
    metrics["fit"] = fits[0]
    if ensemble > 1:
        metrics["members"] = fits
    metrics.update(_test_metrics(module, data, data_config.label_keys))
    split_frame = pd.DataFrame({"split": data.split.astype(str)})
    if data.groups is not None:
        split_frame["group"] = data.groups.astype(str).to_numpy()
    if from_store and split_key is not None:
        split_frame = None  # the split lives in the store; one copy of it is enough
        metrics["split"] = {"store": str(adata.path), "split_key": split_key}
    elif from_store:  # rows -> cell names, for split.csv
        split_frame.index = adata.obs_names()[split_frame.index.to_numpy()]
    return Model(
        module,
        vocabulary=data.vocabulary,
        classes=data.classes,
        data_config=dataclasses.replace(data_config, gene_key=data.gene_key),
        model_config=model_config,
        train_config=train_config,
        training_input=data.input_kind,
        metrics=metrics,
        split=split_frame,
        is_main_process=results[-1].is_main_process,
        augmentation=augmentation,
        extra_classes=data.extra_classes,
        projection=data.projection,
    )


def _test_metrics(module: Classifier, data: TrainingData, label_keys) -> dict[str, Any]:
    """Scores on the test cells: `test` for the primary label column, and with several
    columns also `tasks`: every column's scores by its name."""
    X_test, y_test = data.subsets["test"]
    if not len(y_test):
        return {}
    probas = predict_probas(module, iterate_batches(X_test, batch_size=EVAL_BATCH))
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
    return result


def _check_inputs(family: str, data: DataConfig, config: TrainConfig, augment: bool) -> None:
    """Refuse combinations of input, labels and family that cannot train, before any work."""
    cls = MODELS[family]
    if data.obsm_key is not None or data.pca is not None:
        what = f"obsm {data.obsm_key!r}" if data.obsm_key else f"pca={data.pca}"
        if hasattr(cls, "bind"):
            msg = f"{family} reads genes as tokens; it cannot train on {what}. Drop that input"
            raise InputError(msg)
        if augment:
            msg = f"donor augmentation shifts gene expression; it does not apply to {what}"
            raise InputError(msg)
    n_tasks = len(data.label_keys)
    if n_tasks > 1 and hasattr(cls, "fit_direct"):
        raise InputError(f"{family} has one output; several label columns need ffn or mlp")
    weights = config.task_weights
    if weights is not None and len(weights) != n_tasks:
        msg = f"{len(weights)} task_weights given for {n_tasks} label column(s) {data.label_keys}"
        raise InputError(msg)


def _check_loss_applies(family: str, config: TrainConfig) -> None:
    """Families fitted by their own solver (celltypist) cannot take another training loss."""
    if hasattr(MODELS.get(family), "fit_direct") and config.loss not in ("ce", "weighted_ce"):
        msg = (
            f"the {family!r} family is fitted by its own solver (logistic regression), so "
            f"loss {config.loss!r} does not apply; drop --loss (its class weighting is the "
            "class_weighted parameter)"
        )
        raise InputError(msg)


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
    subsets = {**data.subsets, "train": (_take_rows(X, positions), y[positions])}
    return dataclasses.replace(data, subsets=subsets, donors=donors)


def _take_rows(X: sp.csr_matrix | StoreRows, positions: np.ndarray):
    if isinstance(X, StoreRows):  # duplicated rows are read once per window
        options = ("block_size", "buffer_batches", "workers", "prefetch", "densify_threads")
        kept = {k: getattr(X, k) for k in options}
        return StoreRows(X.store, X.rows[positions], idle=X._idle, **kept)
    return X[positions]


CV_SCORES = ("macro_f1", "accuracy")


@dataclass
class CrossValidation:
    """Test scores of each fold of `cross_validate`, with their mean and standard deviation.

    Each fold record holds macro_f1 and accuracy on that fold's test cells, the best epoch,
    and the cells (and groups) per part. The spread across folds says how much a score
    depends on which donors happen to be held out, which one split cannot tell.
    """

    k: int
    model: str
    split_by: str | None
    folds: list[dict[str, Any]]
    config: dict[str, Any]  # family hyperparameters and TrainConfig of every fold's run
    is_main_process: bool = True

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        """Mean and sample standard deviation (ddof=1) of each score over the folds."""
        summary = {}
        for name in CV_SCORES:
            values = np.array([f[name] for f in self.folds], dtype=np.float64)
            sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
            summary[name] = {"mean": float(values.mean()), "sd": sd}
        return summary

    def to_dict(self) -> dict[str, Any]:
        fields = {"k": self.k, "model": self.model, "split_by": self.split_by}
        return {**fields, "summary": self.summary, "folds": self.folds, "config": self.config}

    def to_markdown(self) -> str:
        by = f"grouped by {self.split_by!r}" if self.split_by else "stratified by label"
        has_groups = self.split_by is not None
        lines = [
            f"# {self.k}-fold cross-validation: {self.model}, {by}",
            "",
            "| fold | macro-F1 | accuracy | best epoch | train / val / test cells"
            + (" | test groups |" if has_groups else " |"),
            "|---:|---:|---:|---:|---:" + ("|---:|" if has_groups else "|"),
        ]
        for f in self.folds:
            cells = " / ".join(str(f["n_cells"][p]) for p in PARTS)
            row = f"| {f['fold']} | {f['macro_f1']:.4f} | {f['accuracy']:.4f} | "
            row += f"{f['best_epoch']} | {cells} |"
            lines.append(row + (f" {f['n_groups']['test']} |" if has_groups else ""))
        lines.append("")
        for name, values in self.summary.items():
            lines.append(f"- {name}: {values['mean']:.4f} ± {values['sd']:.4f} (mean ± sd)")
        return "\n".join(lines) + "\n"

    @staticmethod
    def check_out(path: str | Path) -> None:
        """Refuse an --out that `save` would refuse, before any training is spent."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise InputError(f"{path} is a file; choose a folder name for the cross-validation")
        if path.is_dir() and any(path.iterdir()) and not (path / "cv.json").exists():
            msg = f"{path} exists and is not a sclabel cross-validation; choose a new folder"
            raise InputError(msg)

    def save(self, path: str | Path) -> Path:
        """Write cv.json and cv.md into the folder `path` (replacing an earlier one)."""
        with atomic_dir(path, marker="cv.json", what="cross-validation") as tmp:
            (tmp / "cv.json").write_text(json.dumps(self.to_dict(), indent=2))
            (tmp / "cv.md").write_text(self.to_markdown())
        return Path(path)


def cross_validate(
    adata: ad.AnnData,
    *,
    label_key: str | Sequence[str],
    split_by: str | None = None,
    k: int = 5,
    model: str = "mlp",
    model_params: dict[str, Any] | None = None,
    val_fraction: float = 0.15,
    **options: Any,
) -> CrossValidation:
    """k-fold cross-validation: `train` once per fold, scored on that fold's test cells.

    With `split_by` (donors), each group is tested in exactly one fold, so the scores
    measure transfer to unseen donors; without it, folds are stratified by label. Within a
    fold, validation groups (about `val_fraction` of the cells) for early stopping come from
    the other folds (`kfold_by_group`). `options` are `train`'s (layer, gene_key, ensemble,
    augment, donor_key and TrainConfig fields such as loss or upsample), so every family
    and option works as in `train`. The user's AnnData is not changed: each fold trains on
    a new AnnData sharing its matrices, with the fold's split as an extra obs column.
    """
    _check_cv_options(adata, options)
    obs = adata.obs
    label_keys = [label_key] if isinstance(label_key, str) else list(label_key)
    labels = read_labels(obs, label_keys[0])  # folds are stratified by the first column
    keep = labels.notna().to_numpy()
    groups = None
    if split_by is not None:
        _require_column(obs, split_by, "split")
        groups = obs[split_by][keep].astype(str)
    seed = int(options.get("seed", 0))
    folds = kfold_by_group(labels[keep], groups, k, seed, val_fraction=val_fraction)
    used = [*label_keys, split_by, options.get("donor_key")]
    columns = [c for c in dict.fromkeys(used) if c is not None]
    split_key = _free_name("_sclabel_cv_split", obs.columns)
    records, config, main = [], {}, True
    for fold, split in enumerate(folds):
        log.info("cross-validation: fold %d of %d", fold + 1, k)
        fold_obs = obs.loc[:, columns].copy()
        part = np.full(obs.shape[0], None, dtype=object)
        part[keep] = split.astype(str).to_numpy()
        fold_obs[split_key] = part
        fitted = train(
            _with_obs(adata, fold_obs),
            label_key=label_key,
            split_by=split_by,
            split_key=split_key,
            model=model,
            model_params=model_params,
            **options,
        )
        records.append(_fold_record(fold, fitted, split, groups))
        config = {"params": fitted.model_config.params, "train": fitted.train_config.to_dict()}
        config["val_fraction"] = val_fraction
        main = main and fitted.is_main_process
    return CrossValidation(k, model, split_by, records, config, is_main_process=main)


def _check_cv_options(adata, options: dict[str, Any]) -> None:
    if isinstance(adata, Store):
        msg = "cross-validation reads an AnnData (.h5ad); a store's split is fixed when built"
        raise InputError(msg)
    given = [name for name in ("split_key", "checkpoint_dir", "resume") if options.get(name)]
    if given:
        msg = (
            f"cross-validation makes its own splits and keeps no model: drop {given} "
            "(--split-key/--resume)"
        )
        raise InputError(msg)
    for name in ("split_key", "checkpoint_dir", "resume"):
        options.pop(name, None)


def _free_name(name: str, taken) -> str:
    while name in taken:
        name += "_"
    return name


def _with_obs(adata: ad.AnnData, obs: pd.DataFrame) -> ad.AnnData:
    """A new AnnData with `obs` that shares X, layers, raw (and a backed file's X) with
    `adata`: nothing is copied, and `adata` itself is left as it was."""
    raw = None if adata.raw is None else {"X": adata.raw.X, "var": adata.raw.var}
    return ad.AnnData(
        X=adata.X,
        obs=obs,
        var=adata.var,
        layers=dict(adata.layers),
        obsm=dict(adata.obsm),
        raw=raw,
    )


def _fold_record(fold: int, fitted: Model, split: pd.Series, groups) -> dict[str, Any]:
    test, fit_ = fitted.metrics["test"], fitted.metrics["fit"]
    record = {
        "fold": fold,
        "macro_f1": test["macro_f1"],
        "accuracy": test["accuracy"],
        "best_epoch": fit_["best_epoch"],
        "best_val_macro_f1": fit_["best_val_macro_f1"],
        "epochs_run": fit_["epochs_run"],
        "train_seconds": fit_["train_seconds"],
        "n_cells": fitted.metrics["n_cells"],
    }
    if groups is not None:
        parts, names = split.astype(str).to_numpy(), groups.to_numpy()
        record["n_groups"] = {p: int(np.unique(names[parts == p]).size) for p in PARTS}
        record["test_groups"] = sorted(np.unique(names[parts == "test"]).tolist())
    return record
