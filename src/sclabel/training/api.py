"""`sclabel.train`: from an AnnData and a label column to a trained, tested Model."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sclabel.config import DataConfig, ModelConfig, TrainConfig
from sclabel.data import genes, io
from sclabel.data.loader import iterate_batches
from sclabel.data.normalize import iter_prepared
from sclabel.data.sampling import class_weights
from sclabel.data.splits import make_split
from sclabel.errors import InputError
from sclabel.evaluation.metrics import compute_metrics
from sclabel.model import Model
from sclabel.models import MODELS, build, resolve_params
from sclabel.models.base import predict_proba
from sclabel.models.ensemble import combine
from sclabel.training.loop import fit

log = logging.getLogger("sclabel")


def read_labels(obs: pd.DataFrame, label_key: str) -> pd.Series:
    """The label column as strings, NaN where a cell is unlabeled."""
    if label_key not in obs.columns:
        msg = f"label column {label_key!r} not found in obs; available: {list(obs.columns)}"
        raise InputError(msg)
    labels = obs[label_key]
    return labels.astype(object).where(labels.notna()).map(lambda v: v if pd.isna(v) else str(v))


def train(
    adata: ad.AnnData,
    *,
    label_key: str,
    split_by: str | None = None,
    model: str = "mlp",
    model_params: dict[str, Any] | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    ensemble: int = 1,
    **train_options: Any,
) -> Model:
    """Train a classifier of family `model` on `adata.obs[label_key]`.

    Cells are split by `split_by` groups (e.g. donors) or stratified by label; the model is
    early-stopped on validation macro-F1 and scored on the test part. `train_options` are
    TrainConfig fields (max_epochs, batch_size, lr, seed, accelerator, devices, ...).
    `ensemble=N` trains N members with seeds seed..seed+N-1 and averages their probabilities.
    """
    if ensemble < 1:
        raise InputError("ensemble must be at least 1")
    data_config = DataConfig(
        label_key=label_key,
        split_by=split_by,
        layer=layer,
        gene_key=gene_key,
        split_fractions=split_fractions,
    )
    model_config = ModelConfig(family=model, params=resolve_params(model, model_params or {}))
    # the family's preferred settings (e.g. TabNet's from the scTab paper), then the user's
    train_config = TrainConfig.from_dict({**MODELS[model].train_defaults, **train_options})

    labels = read_labels(adata.obs, label_key)
    labeled = labels.notna().to_numpy()
    if not labeled.all():
        log.info("%d unlabeled cells are left out of training", int((~labeled).sum()))
    classes = sorted(pd.unique(labels[labeled]))
    if len(classes) < 2:
        msg = f"label column {label_key!r} has {len(classes)} class(es); need at least 2 to train"
        raise InputError(msg)
    groups = None
    if split_by is not None:
        if split_by not in adata.obs.columns:
            msg = (
                f"split column {split_by!r} not found in obs; available: {list(adata.obs.columns)}"
            )
            raise InputError(msg)
        groups = adata.obs[split_by][labeled]
    split = make_split(
        labels[labeled], groups=groups, fractions=split_fractions, seed=train_config.seed
    )

    X, var = io.matrix(adata, layer)
    values = io.detect_values(X)
    log.info("input: %s", values.detail)
    vocabulary, used_key = genes.Vocabulary.from_var(var, gene_key)
    alignment = genes.align(var, vocabulary, gene_key=used_key, min_coverage=1.0)
    rows = np.flatnonzero(labeled)
    y = pd.Categorical(labels[labeled], categories=classes).codes.astype(np.int64)
    part = split.to_numpy()

    def prepare(name: str) -> tuple[sp.csr_matrix, np.ndarray]:
        # one part at a time, so peak memory is ~ the normalized data plus one part's chunks
        chunks = iter_prepared(
            X,
            kind=values.kind,
            alignment=alignment,
            target_sum=data_config.target_sum,
            rows=rows[part == name],
            progress=train_config.progress,
            desc=f"preparing {name}",
        )
        n_genes = len(vocabulary.ids)
        matrix = sp.vstack([sp.csr_matrix((0, n_genes), dtype=np.float32), *chunks], format="csr")
        return matrix, y[part == name]

    subsets = {name: prepare(name) for name in ("train", "val", "test")}
    missing = [c for i, c in enumerate(classes) if not (subsets["train"][1] == i).any()]
    if missing:
        log.warning("classes absent from the training split (cannot be learned): %s", missing)

    weights = class_weights(subsets["train"][1], len(classes))
    members, fits = [], []
    for member in range(ensemble):  # deep ensemble: same split, seeds seed, seed+1, ...
        member_config = dataclasses.replace(train_config, seed=train_config.seed + member)
        torch.manual_seed(member_config.seed)
        module = build(model, len(vocabulary.ids), len(classes), model_config.params)
        result = fit(
            module,
            subsets["train"],
            subsets["val"],
            class_weight=weights,
            config=member_config,
        )
        members.append(module)
        fits.append(
            {
                "seed": member_config.seed,
                "best_epoch": result.best_epoch,
                "best_val_macro_f1": result.best_val_macro_f1,
                "epochs_run": result.epochs_run,
                "train_seconds": result.seconds,
                "batch_size": result.batch_size,
                "history": result.history,
            }
        )
    module = combine(members)
    metrics: dict[str, Any] = {
        "fit": fits[0],
        "n_cells": {name: int(s[1].size) for name, s in subsets.items()},
    }
    if ensemble > 1:
        metrics["members"] = fits
    X_test, y_test = subsets["test"]
    if y_test.size:
        proba = predict_proba(module, iterate_batches(X_test, batch_size=4096)).numpy()
        names = np.asarray(classes, dtype=object)
        metrics["test"] = compute_metrics(
            names[y_test], names[proba.argmax(1)], proba.max(1), classes
        )
        log.info(
            "test: macro-F1 %.3f, accuracy %.3f on %d cells",
            metrics["test"]["macro_f1"],
            metrics["test"]["accuracy"],
            y_test.size,
        )
    split_frame = pd.DataFrame({"split": split.astype(str)})
    if groups is not None:
        split_frame["group"] = groups.astype(str).to_numpy()
    return Model(
        module,
        vocabulary=vocabulary,
        classes=classes,
        data_config=DataConfig(**{**data_config.to_dict(), "gene_key": used_key}),
        model_config=model_config,
        train_config=train_config,
        training_input=values.kind,
        metrics=metrics,
        split=split_frame,
        is_main_process=result.is_main_process,
    )
