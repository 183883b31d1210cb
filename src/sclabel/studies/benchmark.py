"""`sclabel benchmark`: every requested model family on one split, side by side.

A variant is `family[+aug][*N]`: e.g. `tabnet`, `tabnet+aug` (donor augmentation),
`tabnet*5` (a 5-member deep ensemble). `xgboost` is the scTab paper's XGBoost on a PCA
fitted to the training cells (`sclabel.baselines`); the others are sclabel model families.
Every variant sees the same normalized matrices and the same train/val/test cells.

Columns: macro-F1 (flat and, with `ontology`, Cell Ontology-aware), accuracy, uncertainty
AUROC, ECE, training seconds, prediction cells/s on normalized test cells (repeated to at
least 20,000 rows so the rate is not timer noise) and the peak resident memory above the
process's level before that variant started.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.config import DataConfig, split_options
from sclabel.data.augment import AugmentConfig, DonorAugmentation
from sclabel.data.loader import iterate_batches
from sclabel.errors import InputError
from sclabel.evaluation.metrics import compute_metrics
from sclabel.evaluation.report import ontology_metrics
from sclabel.io.atomic import atomic_dir
from sclabel.models import MODELS, check_family, resolve_params
from sclabel.models.base import predict_proba
from sclabel.training.data import TrainingData, load_training_data
from sclabel.training.fit import fit_members, make_augmentation

log = logging.getLogger("sclabel")
DEFAULT_VARIANTS = ("linear", "mlp", "tabnet", "celltypist", "xgboost")
BASELINES = ("xgboost",)  # not torch families: no checkpoint, no ensembles, no augmentation
_VARIANT = re.compile(r"^(?P<family>[a-z_]+)(?P<aug>\+aug)?(?:\*(?P<n>\d+))?$")
PREDICT_ROWS = 20_000


@dataclasses.dataclass(frozen=True)
class Variant:
    family: str
    augment: bool = False
    ensemble: int = 1

    @property
    def name(self) -> str:
        return (
            self.family
            + ("+aug" if self.augment else "")
            + (f"*{self.ensemble}" if self.ensemble > 1 else "")
        )

    @classmethod
    def parse(cls, text: str) -> Variant:
        match = _VARIANT.match(text.strip())
        if not match or match["family"] not in {*MODELS, *BASELINES}:
            known = sorted({*MODELS, *BASELINES})
            msg = f"unknown variant {text!r}: use FAMILY[+aug][*N] with FAMILY one of {known}"
            raise InputError(msg)
        variant = cls(match["family"], bool(match["aug"]), int(match["n"] or 1))
        if variant.ensemble < 1:
            raise InputError(f"{text!r}: the ensemble size must be at least 1")
        if variant.family in BASELINES and (variant.augment or variant.ensemble > 1):
            raise InputError(f"{text!r}: {variant.family} takes neither +aug nor *N")
        if variant.augment:
            check_family(variant.family, augment=True)  # fail before any variant trains
        return variant


class PeakMemory:
    """Peak resident memory (MB) above the level at entry, sampled every 20 ms (Linux)."""

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())

    @property
    def increase_mb(self) -> float | None:
        return None if np.isnan(self.start) else self.peak - self.start


def _rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):  # not Linux: no cheap sampling
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_variant(
    data: TrainingData,
    variant: Variant,
    train_options: dict[str, Any],
    *,
    params: dict[str, Any] | None = None,
    augmentation: DonorAugmentation | None = None,
    ontology_ids: np.ndarray | None = None,
    ontology: bool = False,
) -> dict[str, Any]:
    """Train one variant on `data`, score its test cells, and time it; one table row."""
    X_test, y_test = data.subsets["test"]
    if y_test.size == 0:
        raise InputError("the split has no test cells to score; give the test part cells")
    with PeakMemory() as memory:
        start = time.perf_counter()
        if variant.family in BASELINES:
            from sclabel.data.sampling import class_weights
            from sclabel.studies.baselines import XGBoostPCA

            config, _, _ = split_options(train_options)
            model = XGBoostPCA(seed=config.seed, **(params or {}))
            train, val = data.subsets["train"], data.subsets["val"]
            model.fit(*train, *val, class_weights(train[1], len(data.classes)))
            epochs, predict = int(model.best_iteration_ + 1), model.predict_proba
        else:
            defaults = MODELS[variant.family].train_defaults
            config, hardware, progress = split_options(train_options, defaults)
            resolved = resolve_params(variant.family, params or {})
            module, fits = fit_members(
                data,
                variant.family,
                resolved,
                config,
                hardware=hardware,
                progress=progress,
                ensemble=variant.ensemble,
                augmentation=augmentation if variant.augment else None,
            )
            epochs = int(np.mean([f.epochs_run for f in fits]))

            def predict(X: sp.csr_matrix) -> np.ndarray:
                batches = iterate_batches(X, batch_size=4096, sparse=module.sparse_input)
                return predict_proba(module, batches).numpy()

        train_seconds = time.perf_counter() - start
        proba = predict(X_test)
        repeated = sp.vstack([X_test] * -(-PREDICT_ROWS // X_test.shape[0]), format="csr")
        start = time.perf_counter()
        predict(repeated)
        predict_rate = repeated.shape[0] / (time.perf_counter() - start)
    names = np.asarray(data.classes, dtype=object)
    y_true, y_pred = names[y_test].astype(str), names[proba.argmax(1)].astype(str)
    metrics = compute_metrics(y_true, y_pred, proba.max(1), data.classes)
    row = {
        "variant": variant.name,
        "family": variant.family,
        "augment": variant.augment,
        "ensemble": variant.ensemble,
        "macro_f1": metrics["macro_f1"],
        "macro_f1_ontology": None,
        "accuracy": metrics["accuracy"],
        "uncertainty_auroc": metrics["uncertainty_auroc"],
        "ece": metrics["ece"],
        "train_seconds": train_seconds,
        "epochs": epochs,
        "predict_cells_per_s": predict_rate,
        "peak_memory_mb": memory.increase_mb,
        "n_train": int(data.subsets["train"][1].size),
        "n_test": int(y_test.size),
    }
    if ontology:
        onto, _ = ontology_metrics(y_true, y_pred, data.classes, ontology_ids)
        row["macro_f1_ontology"] = onto["macro_f1"]
    log.info("%s: test macro-F1 %.3f, trained in %.1f s", variant.name, row["macro_f1"],
             train_seconds)  # fmt: skip
    return row


def harness_data(
    adata: ad.AnnData,
    *,
    label_key: str,
    split_by: str | None = None,
    split_key: str | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    donor_key: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TrainingData:
    """The normalized train/val/test cells every variant (or learning-curve point) shares."""
    config = DataConfig(
        label_key=label_key, split_by=split_by, split_key=split_key, layer=layer, gene_key=gene_key
    )
    return load_training_data(adata, config, seed=seed, donor_key=donor_key, progress=progress)


def ontology_ids_of_test_cells(adata: ad.AnnData, data: TrainingData, key: str) -> np.ndarray:
    """The Cell Ontology ids (obs column `key`) of the test cells of `data`, in order."""
    if key not in adata.obs.columns:
        raise InputError(f"obs column {key!r} not found")
    test_cells = data.split.index[data.split.to_numpy() == "test"]
    return adata.obs.loc[test_cells, key].astype(object).to_numpy()


def run_benchmark(
    data: TrainingData,
    variants: list[str] | tuple[str, ...] = DEFAULT_VARIANTS,
    *,
    train_options: dict[str, Any] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    augment: AugmentConfig | None = None,
    ontology: bool = False,
    ontology_ids: np.ndarray | None = None,
    on_row: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """One row per variant, all on the same `data` (from `load_training_data`).

    `on_row(table so far)` is called after each variant, e.g. to save a long run as it goes.
    """
    parsed = [Variant.parse(v) for v in variants]
    if any(v.family == "xgboost" for v in parsed):
        from sclabel.studies.baselines import import_xgboost

        import_xgboost()  # a missing package fails before anything is trained
    train_options = train_options or {}
    augmentation, info = None, None
    if any(v.augment for v in parsed):
        seed = int(train_options.get("seed", 0))
        augmentation, info = make_augmentation(data, augment or AugmentConfig(), seed)
    rows = []
    for i, variant in enumerate(parsed, start=1):
        n_train = data.subsets["train"][1].size
        log.info("variant %d/%d: %s on %s training cells", i, len(parsed), variant.name,
                 f"{n_train:,}")  # fmt: skip
        rows.append(
            run_variant(
                data,
                variant,
                train_options,
                params=(params or {}).get(variant.family),
                augmentation=augmentation,
                ontology=ontology,
                ontology_ids=ontology_ids,
            )
        )
        table = pd.DataFrame(rows)
        if info is not None:
            table.attrs["augmentation"] = info  # vectors kept, cluster sizes, R^2 before/after
        if on_row is not None:
            on_row(table)
    return table


def write_table(table: pd.DataFrame, out_dir: str | Path, name: str, plot, title: str) -> Path:
    """`name`.csv, .json, .md and .png in `out_dir`, written atomically."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, marker=f"{name}.csv", what=name) as tmp:
        table.to_csv(tmp / f"{name}.csv", index=False)
        record = {"rows": table.to_dict(orient="records"), **table.attrs}
        (tmp / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        shown = table.drop(columns=[c for c in ("family", "augment") if c in table])
        (tmp / f"{name}.md").write_text(f"# {title}\n\n" + markdown_table(shown) + "\n")
        plot(table, tmp / f"{name}.png")
    return out_dir


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table; floats to 4 significant digits, missing values as '-'."""

    def cell(value) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |"]
    lines.append("|" + "---|" * len(frame.columns))
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


def plot_benchmark(table: pd.DataFrame, path: Path) -> None:
    from sclabel.evaluation.plots import plt

    names = table["variant"].tolist()
    y = np.arange(len(names))
    fig, (ax_f1, ax_time) = plt.subplots(1, 2, figsize=(10, 0.45 * len(names) + 1.8), sharey=True)
    has_onto = table["macro_f1_ontology"].notna().any()
    height = 0.4 if has_onto else 0.8
    ax_f1.barh(y, table["macro_f1"], height=height, label="macro-F1")
    if has_onto:
        onto = table["macro_f1_ontology"].astype(float)
        ax_f1.barh(y + height, onto, height=height, label="ontology-aware")
    ax_f1.set_yticks(y, names)
    ax_f1.set_xlim(0, 1)
    ax_f1.set_xlabel("test macro-F1")
    ax_f1.legend(loc="lower right", fontsize=8)
    ax_time.barh(y, table["train_seconds"], color="tab:gray")
    ax_time.set_xscale("log")
    ax_time.set_xlabel("training seconds (log)")
    for i, rate in enumerate(table["predict_cells_per_s"]):
        ax_time.text(table["train_seconds"].iloc[i], i, f"  {rate:,.0f} cells/s", va="center")
    ax_f1.invert_yaxis()
    fig.suptitle("sclabel benchmark: same split, every variant")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
