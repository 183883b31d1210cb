"""k-fold cross-validation: `train` once per fold, each fold's test cells scored once."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from sclabel.data.obs import read_labels, require_column
from sclabel.data.splits import PARTS, kfold_by_group
from sclabel.errors import InputError
from sclabel.inference.model import Model
from sclabel.io.atomic import atomic_dir, check_dir
from sclabel.store.format import Store
from sclabel.training.auto import AUTO
from sclabel.training.train import train

log = logging.getLogger("sclabel")


CV_SCORES = ("macro_f1", "accuracy")


@dataclass
class CrossValidation:
    """Test scores of each fold of `cross_validate`, with their mean and standard deviation.

    Each fold record holds macro_f1 and accuracy on that fold's test cells, the family that
    was trained (under `model="auto"`, the one chosen in that fold, and whether it was
    refitted on training + validation cells), the best epoch, and the cells (and groups)
    per part. The spread across folds says how much a score
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
            "| fold | model | macro-F1 | accuracy | best epoch | train / val / test cells"
            + (" | test groups |" if has_groups else " |"),
            "|---:|---|---:|---:|---:|---:" + ("|---:|" if has_groups else "|"),
        ]
        for f in self.folds:
            cells = " / ".join(str(f["n_cells"][p]) for p in PARTS)
            chosen = f["model"] + (" (refitted)" if f.get("refit") else "")
            row = f"| {f['fold']} | {chosen} | {f['macro_f1']:.4f} | {f['accuracy']:.4f} | "
            row += f"{f['best_epoch']} | {cells} |"
            lines.append(row + (f" {f['n_groups']['test']} |" if has_groups else ""))
        lines.append("")
        for name, values in self.summary.items():
            lines.append(f"- {name}: {values['mean']:.4f} ± {values['sd']:.4f} (mean ± sd)")
        return "\n".join(lines) + "\n"

    @staticmethod
    def check_out(path: str | Path) -> None:
        """Refuse an --out that `save` would refuse, before any training is spent."""
        check_dir(path, marker="cv.json", what="cross-validation")

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
    model: str = AUTO,
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
        require_column(obs, split_by, "split")
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


def check_cv_request(k: int, out: str | Path, **given: Any) -> None:
    """Refuse a cross-validation request before any data is read: options that need one
    model (`given`: resume, report, export_split, split_key when set), too few folds, an
    output folder that holds something else."""
    asked = [name for name, value in given.items() if value]
    if asked:
        flags = ", ".join("--" + name.replace("_", "-") for name in asked)
        raise InputError(f"--cv makes its own splits and keeps no model; drop {flags}")
    if k < 2:
        raise InputError(f"--cv needs at least 2 folds, got {k}")
    CrossValidation.check_out(out)


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
        "model": fitted.model_config.family,
        "macro_f1": test["macro_f1"],
        "accuracy": test["accuracy"],
        "best_epoch": fit_["best_epoch"],
        "best_val_macro_f1": fit_["best_val_macro_f1"],
        "epochs_run": fit_["epochs_run"],
        "train_seconds": fit_["train_seconds"],
        "n_cells": fitted.metrics["n_cells"],
    }
    auto = fitted.metrics.get("auto")
    if auto is not None:  # what auto compared in this fold, and whether it refitted
        record["refit"] = bool(auto["refit"]["done"])
        record["candidates_val_macro_f1"] = {
            family: scores["val_macro_f1"] for family, scores in auto["candidates"].items()
        }
    if groups is not None:
        parts, names = split.astype(str).to_numpy(), groups.to_numpy()
        record["n_groups"] = {p: int(np.unique(names[parts == p]).size) for p in PARTS}
        record["test_groups"] = sorted(np.unique(names[parts == "test"]).tolist())
    return record
