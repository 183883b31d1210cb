"""One CellTypist benchmark run in a fresh process (run by compare_celltypist.py under
.venv-celltypist: CellTypist 1.7.1 needs scikit-learn < 1.6; sclabel is not installed there).

    _celltypist_worker.py imports --result R.json
    _celltypist_worker.py fit --train T.h5ad --test Q.h5ad --model-out M.pkl --input counts
                              --result R.json --pred-out P.csv [--options JSON]
    _celltypist_worker.py predict --model-out M.pkl --query Q.h5ad --input counts
                                  --result R.json --pred-out P.csv

Input is normalized as CellTypist's documentation requires (scanpy normalize_total to 10,000
counts + log1p) unless `--input log1p` says X already holds log-normalized values. Training:
`celltypist.train(adata, labels="label", check_expression=False, n_jobs=2, **options)` (default
logistic regression unless options say otherwise). Prediction:
`celltypist.annotate(query, model=model, majority_voting=False)`; only that call is timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as bc  # noqa: E402

N_JOBS = 2


def _imports() -> dict:
    return bc.import_baseline(
        [["numpy", "scipy.sparse", "pandas"], ["anndata"], ["scanpy"], ["celltypist"]]
    )


def _normalize(adata, kind: str) -> float:
    """Normalize in place as CellTypist requires; returns the seconds it took."""
    import scanpy as sc

    with bc.Timer() as t:
        if kind == "counts":
            sc.pp.normalize_total(adata, target_sum=1e4)
            sc.pp.log1p(adata)
    return t.seconds


def _write_predictions(path: str, obs_names, labels) -> None:
    import pandas as pd

    pd.DataFrame({"cell": list(obs_names), "label": [str(x) for x in labels]}).to_csv(
        path, index=False
    )


def _annotate_timed(model, query) -> tuple:
    import celltypist

    def annotate():
        return celltypist.annotate(query, model=model, majority_voting=False)

    rss_before = bc.rss_mib()
    maxrss_before = bc.maxrss_mib()
    reset_ok = bc.reset_peak()
    with bc.Timer() as first_timer:
        result = annotate()
    memory = {
        "rss_before_predict_mib": rss_before,
        "maxrss_before_predict_mib": maxrss_before,
        "peak_during_predict_mib": bc.hwm_mib() if reset_ok else None,
        "rss_after_predict_mib": bc.rss_mib(),
    }
    labels = result.predicted_labels["predicted_labels"].astype(str).to_numpy()
    del result
    _, more = bc.timed_repeats(annotate, min_calls=2)
    return labels, [first_timer.seconds, *more], memory


def _fit(args) -> dict:
    import anndata as ad
    import celltypist
    import numpy as np

    options = json.loads(args.options or "{}")
    result: dict = {
        "method": "celltypist",
        "celltypist_train_options": {"check_expression": False, "n_jobs": N_JOBS, **options},
        "rss_after_imports_mib": bc.rss_mib(),
    }
    with bc.TreePeak() as tree:
        with bc.Timer() as t:
            train = ad.read_h5ad(args.train)
        result["read_train_seconds"] = t.seconds
        result["n_train"] = int(train.n_obs)
        result["n_genes_input"] = int(train.n_vars)
        result["rss_after_read_train_mib"] = bc.rss_mib()
        result["normalize_train_seconds"] = _normalize(train, args.input)
        np.random.seed(0)  # mini-batch SGD samples with the global numpy RNG
        with bc.Timer() as t:
            model = celltypist.train(
                train, labels="label", check_expression=False, n_jobs=N_JOBS, **options
            )
        result["celltypist_train_seconds"] = t.seconds
        result["train_seconds"] = t.seconds + result["normalize_train_seconds"]
        result["n_features"] = int(len(model.features))
        result["maxrss_after_train_mib"] = bc.maxrss_mib()
        result["rss_after_train_mib"] = bc.rss_mib()
        try:  # end joblib's worker processes so RUSAGE_CHILDREN sees their peaks
            from joblib.externals.loky import get_reusable_executor

            get_reusable_executor().shutdown(wait=True)
        except Exception as err:  # noqa: BLE001
            result["loky_shutdown_error"] = repr(err)
        result["children_maxrss_mib"] = bc.children_maxrss_mib()
        with bc.Timer() as t:
            model.write(args.model_out)
        result["save_seconds"] = t.seconds
        del train
        query = ad.read_h5ad(args.test)
        result["normalize_query_seconds"] = _normalize(query, args.input)
        labels, times, memory = _annotate_timed(model, query)
        result["inprocess_predict"] = {"seconds": times, **memory}
        process_peak = max(bc.maxrss_mib(), memory["maxrss_before_predict_mib"])
        result["n_test"] = int(query.n_obs)
    # the VmHWM reset before predicting also resets ru_maxrss (Linux), so keep the larger
    result["maxrss_mib"] = max(process_peak, bc.maxrss_mib())
    result["tree_peak_mib"] = tree.peak_mib
    result["max_child_processes"] = tree.max_children
    _write_predictions(args.pred_out, query.obs_names, labels)
    return result


def _predict(args) -> dict:
    import anndata as ad
    from celltypist.models import Model

    result: dict = {"rss_after_imports_mib": bc.rss_mib()}
    with bc.Timer() as t:
        model = Model.load(args.model_out)
    result["load_model_seconds"] = t.seconds
    result["rss_after_load_model_mib"] = bc.rss_mib()
    with bc.Timer() as t:
        query = ad.read_h5ad(args.query)
    result["read_query_seconds"] = t.seconds
    result["n_query"] = int(query.n_obs)
    result["normalize_query_seconds"] = _normalize(query, args.input)
    labels, times, memory = _annotate_timed(model, query)
    result.update(memory)
    result["predict_seconds"] = times
    result["maxrss_mib"] = max(memory["maxrss_before_predict_mib"], bc.maxrss_mib())
    _write_predictions(args.pred_out, query.obs_names, labels)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["imports", "fit", "predict"])
    parser.add_argument("--train")
    parser.add_argument("--test")
    parser.add_argument("--query")
    parser.add_argument("--model-out")
    parser.add_argument("--input", choices=["counts", "log1p"], default="counts")
    parser.add_argument("--options", help="JSON dict of extra celltypist.train arguments")
    parser.add_argument("--result", required=True)
    parser.add_argument("--pred-out")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.mode == "imports":
        result = _imports()
    elif args.mode == "fit":
        result = _fit(args)
    else:
        result = _predict(args)
    bc.write_json(args.result, result)


if __name__ == "__main__":
    main()
