"""One sclabel benchmark run in a fresh process (run by compare_celltypist.py under .venv).

    _sclabel_worker.py imports --result R.json
    _sclabel_worker.py fit --family linear|mlp --train T.h5ad --test Q.h5ad --model-dir D
                           --result R.json --pred-out P.csv
    _sclabel_worker.py predict --model-dir D --query Q.h5ad --result R.json --pred-out P.csv

`fit` trains on every cell of T (sclabel carves its own 15% validation set out of them for
early stopping; no test part), saves the model and predicts Q in the same process. `predict`
loads the saved model and Q in a new process, so prediction memory is seen apart from
training. Labels are in obs["label"]; X holds raw counts or log1p values (sclabel detects it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as bc  # noqa: E402

# sclabel's own defaults for everything else (max_epochs, batch_size, lr, patience, ...); the
# values actually used are read back from the trained model into the result.
TRAIN_OPTIONS = {"seed": 0}


def _imports() -> dict:
    return bc.import_baseline(
        [["numpy", "scipy.sparse", "pandas"], ["anndata"], ["sclabel"], ["lightning.fabric"]]
    )


def _write_predictions(path: str, obs_names, labels) -> None:
    import pandas as pd

    pd.DataFrame({"cell": list(obs_names), "label": list(labels)}).to_csv(path, index=False)


def _predict_timed(model, query) -> tuple:
    """First call measured for memory (peak since reset), then repeats for timing."""
    rss_before = bc.rss_mib()
    maxrss_before = bc.maxrss_mib()
    reset_ok = bc.reset_peak()
    with bc.Timer() as first_timer:
        prediction = model.predict(query, progress=False)
    memory = {
        "rss_before_predict_mib": rss_before,
        "maxrss_before_predict_mib": maxrss_before,
        "peak_during_predict_mib": bc.hwm_mib() if reset_ok else None,
        "rss_after_predict_mib": bc.rss_mib(),
    }
    _, more = bc.timed_repeats(lambda: model.predict(query, progress=False), min_calls=2)
    times = [first_timer.seconds, *more]
    return prediction, times, memory


def _fit(args) -> dict:
    import anndata as ad
    import torch

    import sclabel

    result: dict = {"method": f"sclabel-{args.family}", "torch_threads": torch.get_num_threads()}
    result["rss_after_imports_mib"] = bc.rss_mib()
    with bc.TreePeak() as tree:
        with bc.Timer() as t:
            train = ad.read_h5ad(args.train)
        result["read_train_seconds"] = t.seconds
        result["n_train"] = int(train.n_obs)
        result["n_genes_input"] = int(train.n_vars)
        result["rss_after_read_train_mib"] = bc.rss_mib()
        with bc.Timer() as t:
            model = sclabel.train(
                train,
                label_key="label",
                split_by=args.split_by,
                model=args.family,
                split_fractions=(0.85, 0.15, 0.0),
                progress=False,
                **TRAIN_OPTIONS,
            )
        result["train_seconds"] = t.seconds
        result["train_options"] = {
            **model.train_config.to_dict(),
            "split_fractions": [0.85, 0.15, 0.0],
            "split_by": args.split_by,
            "model_params": model.model_config.params,
        }
        fit = model.metrics.get("fit", {})
        result["fit"] = {k: fit.get(k) for k in ("best_epoch", "epochs_run", "best_val_macro_f1")}
        result["fit"]["loop_seconds"] = fit.get("train_seconds")
        result["n_cells_split"] = model.metrics.get("n_cells")
        result["maxrss_after_train_mib"] = bc.maxrss_mib()
        result["rss_after_train_mib"] = bc.rss_mib()
        with bc.Timer() as t:
            model.save(args.model_dir)
        result["save_seconds"] = t.seconds
        del train
        query = ad.read_h5ad(args.test)
        prediction, times, memory = _predict_timed(model, query)
        result["inprocess_predict"] = {"seconds": times, **memory}
        process_peak = max(bc.maxrss_mib(), memory["maxrss_before_predict_mib"])
        result["n_test"] = int(query.n_obs)
    # the VmHWM reset before predicting also resets ru_maxrss (Linux), so keep the larger
    result["maxrss_mib"] = max(process_peak, bc.maxrss_mib())
    result["tree_peak_mib"] = tree.peak_mib
    result["max_child_processes"] = tree.max_children
    _write_predictions(args.pred_out, query.obs_names, prediction.labels)
    return result


def _predict(args) -> dict:
    import anndata as ad

    import sclabel

    result: dict = {"rss_after_imports_mib": bc.rss_mib()}
    with bc.Timer() as t:
        model = sclabel.Model.load(args.model_dir)
    result["load_model_seconds"] = t.seconds
    result["rss_after_load_model_mib"] = bc.rss_mib()
    with bc.Timer() as t:
        query = ad.read_h5ad(args.query)
    result["read_query_seconds"] = t.seconds
    result["n_query"] = int(query.n_obs)
    prediction, times, memory = _predict_timed(model, query)
    result.update(memory)
    result["predict_seconds"] = times
    result["maxrss_mib"] = max(memory["maxrss_before_predict_mib"], bc.maxrss_mib())
    _write_predictions(args.pred_out, query.obs_names, prediction.labels)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["imports", "fit", "predict"])
    parser.add_argument("--family", choices=["linear", "mlp"])
    parser.add_argument("--train")
    parser.add_argument("--test")
    parser.add_argument("--query")
    parser.add_argument("--model-dir")
    parser.add_argument("--split-by", help="obs column grouping sclabel's own train/val split")
    parser.add_argument("--result", required=True)
    parser.add_argument("--pred-out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    if args.mode == "imports":
        result = _imports()
    elif args.mode == "fit":
        result = _fit(args)
    else:
        result = _predict(args)
    bc.write_json(args.result, result)


if __name__ == "__main__":
    main()
