"""What training reads: labels, the train/val/test split and each part's model input.

`load_training_data` is the reference side of the input pipeline: it fits the `InputSpec`
(genes, normalization, obsm or pca input) on the labelled cells and hands back the model
input of every part, in memory or, from a store, as `StoreRows` streamed from disk. The
benchmark and scaling harnesses reuse it so every variant sees the same cells.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.config import DataConfig
from sclabel.data.genes import Vocabulary
from sclabel.data.inputs import InputSpec
from sclabel.data.obs import read_labels, require_column
from sclabel.data.splits import PARTS, make_split
from sclabel.errors import InputError, listing
from sclabel.io.read import check_all_rows, matrix
from sclabel.store.format import Store
from sclabel.store.loader import StoreRows

log = logging.getLogger("sclabel")
Subset = tuple[sp.csr_matrix, np.ndarray]


@dataclass
class TrainingData:
    """Each part's model input with class codes and donors, and the fitted `InputSpec`."""

    classes: list[str]
    inputs: InputSpec
    subsets: dict[str, Subset]
    split: pd.Series  # train/val/test per labeled cell (indexed by cell name)
    groups: pd.Series | None  # the split_by column, per labeled cell
    donors: dict[str, np.ndarray] | None  # per part, for donor augmentation
    # further label columns -> their classes (multi-task); y is then cells x tasks
    extra_classes: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def vocabulary(self) -> Vocabulary:
        return self.inputs.vocabulary

    @property
    def n_genes(self) -> int:
        return len(self.vocabulary.ids)

    @property
    def n_inputs(self) -> int:
        """Width of a model's input: genes, embedding dimensions or principal components."""
        return self.inputs.n_inputs

    def class_codes(self, y: np.ndarray) -> np.ndarray:
        """The primary label column's codes of `y` (1-D, or column 0 of cells x tasks)."""
        return y if y.ndim == 1 else y[:, 0]


def given_split(obs: pd.DataFrame, split_key: str) -> pd.Series:
    require_column(obs, split_key, "split")
    values = obs[split_key].astype(object)
    unknown = sorted(set(values.dropna().astype(str)) - set(PARTS))
    if unknown:
        msg = (
            f"split column {split_key!r} has values {listing(unknown, 5)}; expected train, "
            "val or test"
        )
        raise InputError(msg)
    if not (values == "train").any():
        raise InputError(f"split column {split_key!r} marks no cell as 'train'")
    return pd.Series(pd.Categorical(values, categories=PARTS), index=obs.index, name="split")


def load_training_data(
    source,
    data_config: DataConfig,
    *,
    seed: int = 0,
    donor_key: str | None = None,
    progress: bool = True,
    loader: dict[str, Any] | None = None,
    genes: tuple[pd.DataFrame, str] | None = None,
) -> TrainingData:
    """Labels, split (from `split_key`, by `split_by` groups, or stratified) and each part's
    model input, one part at a time so peak memory is about the normalized data.

    From a `Store`, the parts stay on disk (`StoreRows`, streamed with `loader` options such
    as block_size and workers) and only the obs columns used are read. With several label
    columns, only cells labelled in all of them are used, and the split follows the first.
    """
    donor_key = donor_key or data_config.split_by
    label_keys = data_config.label_keys
    if not isinstance(source, Store) and data_config.obsm_key is None:
        X = matrix(source, data_config.layer)[0]
        if X is not None and X.shape[1]:
            check_all_rows(X)  # every cell, once, before any split or log line
    if isinstance(source, Store):
        used = [*label_keys, data_config.split_key, data_config.split_by, donor_key]
        obs = pd.DataFrame({c: source.column(c) for c in dict.fromkeys(used) if c is not None})
    else:
        obs = source.obs
    every_label = {key: read_labels(obs, key) for key in label_keys}
    labels = every_label[data_config.label_key]
    keep = np.logical_and.reduce([v.notna().to_numpy() for v in every_label.values()])
    if data_config.split_key is not None:
        split = given_split(obs, data_config.split_key)
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
        require_column(obs, data_config.split_by, "split")
        groups = obs[data_config.split_by][keep]
    if data_config.split_key is None:
        split = make_split(
            labels[keep], groups=groups, fractions=data_config.split_fractions, seed=seed
        )
    else:
        split = split[keep]
    donor_values = None
    if donor_key is not None:
        require_column(obs, donor_key, "donor")
        donor_values = obs[donor_key][keep].astype(str).to_numpy()
    rows = np.flatnonzero(keep)
    codes = [
        pd.Categorical(every_label[key][keep], categories=names).codes.astype(np.int64)
        for key, names in task_classes.items()
    ]
    y = codes[0] if len(codes) == 1 else np.stack(codes, axis=1)
    part = split.to_numpy()
    parts = {name: rows[part == name] for name in PARTS}
    if isinstance(source, Store):
        inputs, matrices = _store_parts(source, data_config, parts, loader)
    else:
        inputs, matrices = InputSpec.fit(
            source,
            parts,
            layer=data_config.layer,
            gene_key=data_config.gene_key,
            obsm_key=data_config.obsm_key,
            pca=data_config.pca,
            target_sum=data_config.target_sum,
            min_gene_coverage=data_config.min_gene_coverage,
            seed=seed,
            progress=progress,
            values=data_config.values,
            genes=genes,
        )
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
        inputs=inputs,
        subsets=subsets,
        split=split,
        groups=groups,
        donors=None if donor_values is None else {p: donor_values[part == p] for p in PARTS},
        extra_classes={k: v for k, v in task_classes.items() if k != data_config.label_key},
    )


def _store_parts(store: Store, config: DataConfig, parts: dict, loader: dict | None):
    """A store's genes as the model's, each part streamed from disk (`StoreRows`)."""
    if config.obsm_key or config.pca:
        raise InputError("a store holds genes only: train on obsm or pca input from an .h5ad")
    kinds = {s["values"] for s in store.meta["sources"]}
    inputs = InputSpec(
        store.vocabulary,
        target_sum=store.meta["target_sum"],
        min_gene_coverage=config.min_gene_coverage,
        gene_key=store.meta.get("gene_key"),
        training_input=kinds.pop() if len(kinds) == 1 else "mixed",
    )
    idle: list = []  # the parts run one after another and share their loader buffers
    matrices = {
        name: StoreRows(store, rows, idle=idle, **(loader or {})) for name, rows in parts.items()
    }
    return inputs, matrices
