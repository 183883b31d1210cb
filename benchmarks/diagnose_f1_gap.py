"""Why does sclabel score below CellTypist on some small splits? A few controlled variants.

    .venv/bin/python benchmarks/diagnose_f1_gap.py     # after compare_celltypist.py (~2 min)

Uses the train/test files compare_celltypist.py wrote to benchmarks/work/splits/ and scores
macro-F1 the same way. Variants (all seed 0, everything else sclabel's defaults):

- `benchmarked`: as in compare_celltypist.py (15% of the training cells held out for early
  stopping on validation macro-F1);
- `patience=max_epochs`: the same split, but early stopping never triggers (the epoch with the
  best validation macro-F1 is still the one kept);
- `all cells, no val`: split_fractions=(1, 0, 0): trains on every training cell for max_epochs
  and keeps the last epoch, as CellTypist does;
- `benchmarked, seeds 0-4`: the benchmarked setting with five sclabel seeds (sclabel's
  split and initialization change; the benchmark's train/test cells do not): the spread shows
  how much of a gap is seed noise;
- `sklearn LR`: scikit-learn's multinomial LogisticRegression (lbfgs, C=1, max_iter=1000) on the
  same log1p(10k-normalized) values, unscaled: the linear model family trained to convergence.

Writes benchmarks/results/f1_gap_diagnosis.json and prints a Markdown table.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

import sclabel

HERE = Path(__file__).resolve().parent
SPLITS = HERE / "work" / "splits"
RESULTS = HERE / "results"
NAMES = ("pbmc68k_reduced", "mouse_bladder", "kang", "cellbench_cross_protocol")
VARIANTS = {
    "benchmarked": {"split_fractions": (0.85, 0.15, 0.0)},
    "patience=max_epochs": {"split_fractions": (0.85, 0.15, 0.0), "patience": 1000},
    "all cells, no val": {"split_fractions": (1.0, 0.0, 0.0)},
}


def _macro_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    present = sorted(set(truth))
    return float(f1_score(truth, pred, labels=present, average="macro", zero_division=0))


def _log1p(adata) -> np.ndarray:
    adata = adata.copy()
    if np.allclose(adata.X.data, np.round(adata.X.data)):  # counts (pbmc68k is log1p already)
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    return adata.X


def main() -> None:
    warnings.filterwarnings("ignore")
    comparison = RESULTS / "celltypist_comparison.json"
    reference = {}
    if comparison.exists():
        for split in json.loads(comparison.read_text())["splits"]:
            reference[split["name"]] = split["summary"].get("celltypist", {}).get("macro_f1")
    rows = []
    for name in NAMES:
        folder = SPLITS / name
        if not (folder / "train.h5ad").exists():
            print(f"skip {name}: run compare_celltypist.py first")
            continue
        train, test = ad.read_h5ad(folder / "train.h5ad"), ad.read_h5ad(folder / "test.h5ad")
        truth = test.obs["label"].astype(str).to_numpy()
        for family in ("linear", "mlp"):
            for variant, options in VARIANTS.items():
                start = time.perf_counter()
                model = sclabel.train(
                    train, label_key="label", model=family, seed=0, progress=False, **options
                )
                pred = model.predict(test, progress=False).labels.astype(str)
                fit = model.metrics["fit"]
                rows.append(
                    {
                        "split": name,
                        "method": f"sclabel {family}",
                        "variant": variant,
                        "macro_f1": _macro_f1(truth, pred),
                        "accuracy": float((pred == truth).mean()),
                        "kept_epoch": fit["best_epoch"],
                        "epochs_run": fit["epochs_run"],
                        "seconds": time.perf_counter() - start,
                    }
                )
            f1s, accs = [], []
            for seed in range(5):
                model = sclabel.train(
                    train,
                    label_key="label",
                    model=family,
                    seed=seed,
                    progress=False,
                    **VARIANTS["benchmarked"],
                )
                pred = model.predict(test, progress=False).labels.astype(str)
                f1s.append(_macro_f1(truth, pred))
                accs.append(float((pred == truth).mean()))
            rows.append(
                {
                    "split": name,
                    "method": f"sclabel {family}",
                    "variant": "benchmarked, seeds 0-4",
                    "macro_f1": float(np.mean(f1s)),
                    "accuracy": float(np.mean(accs)),
                    "macro_f1_per_seed": f1s,
                    "macro_f1_range": f"{min(f1s):.3f}-{max(f1s):.3f}",
                }
            )
        start = time.perf_counter()
        labels = train.obs["label"].astype(str).to_numpy()
        clf = LogisticRegression(C=1.0, max_iter=1000).fit(_log1p(train), labels)
        pred = clf.predict(_log1p(test))
        rows.append(
            {
                "split": name,
                "method": "sklearn LR",
                "variant": "multinomial, unscaled log1p",
                "macro_f1": _macro_f1(truth, pred),
                "accuracy": float((pred == truth).mean()),
                "seconds": time.perf_counter() - start,
            }
        )
        for row in rows[-9:]:
            print(
                f"{row['split']:26s} {row['method']:15s} {row['variant']:28s} "
                f"F1 {row['macro_f1']:.3f} acc {row['accuracy']:.3f}",
                flush=True,
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "f1_gap_diagnosis.json").write_text(
        json.dumps({"celltypist_macro_f1": reference, "rows": rows}, indent=2) + "\n"
    )
    print("\n| split | method | variant | macro-F1 | accuracy | kept epoch / run | CellTypist |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        epochs = f"{row['kept_epoch']} / {row['epochs_run']}" if "kept_epoch" in row else ""
        if "macro_f1_range" in row:
            epochs = f"F1 range {row['macro_f1_range']} (mean shown)"
        ref = reference.get(row["split"])
        print(
            f"| {row['split']} | {row['method']} | {row['variant']} | {row['macro_f1']:.3f} | "
            f"{row['accuracy']:.3f} | {epochs} | {'' if ref is None else f'{ref:.3f}'} |"
        )


if __name__ == "__main__":
    main()
