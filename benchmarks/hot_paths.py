"""Hot paths before and after a restructure: prediction, the store loader, the tokenizer.

Moving code must not slow it. This runs the same measurements against two source trees (this
checkout and another commit's `src/`, e.g. a `git worktree` of the commit before the
restructure), each in a fresh process, alternating A, B, A, B, ... so a slow spell of the
shared machine lands on both; the best time of each is kept and the ratio B/A reported.
The measurement code imports sclabel by its 0.1 module paths, which the new layout still
answers (with a deprecation warning), so one script drives both trees.

  predict, in memory     Model.predict on an in-memory AnnData (chunks of 8,192 cells)
  predict, to a file     predict_to_file from a backed .h5ad into .parquet (the CLI's path)
  ... with sets          the same with coverage=0.9 (before: split sets as each chunk is
                         written; after: weighted sets added as the parts are joined)
  store loader           150 shuffled dense batches of 2,048 cells from a store
  tokenize --truncate    CellBench x15 (21,120 deep cells) -> a Geneformer-token store

Usage: python benchmarks/hot_paths.py --before OLD/src [--after NEW/src] [--rounds 3] [--work DIR]
Writes benchmarks/results/hot_paths.json and its table in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
RESULT = HERE / "results" / "hot_paths.json"
MD_START, MD_END = "<!-- hot-paths:start -->", "<!-- hot-paths:end -->"
STEPS = ("predict_memory", "predict_file", "predict_sets", "store_loader", "tokenize")
LABELS = {
    "predict_memory": "predict, in memory (mlp, 100,000 cells x 9,015 genes)",
    "predict_file": "predict --backed to .parquet (same cells, the CLI's path)",
    "predict_sets": "the same with --coverage 0.9 (each tree's default set rule)",
    "store_loader": "store loader, 150 batches x 2,048 cells x 20,670 genes",
    "tokenize": "tokenize --truncate, CellBench x15 (21,120 cells)",
}

# Runs in a fresh interpreter with the tree under test first on sys.path; prints JSON.
WORKER = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np, anndata as ad
work, step = sys.argv[1], sys.argv[2]
import sclabel
from pathlib import Path
work = Path(work)
t0 = time.perf_counter()
if step == "predict_memory":
    from sclabel.model import Model
    model = Model.load(work / "model")
    adata = ad.read_h5ad(work / "query.h5ad")
    t0 = time.perf_counter()
    model.predict(adata, progress=False)
    n = adata.n_obs
elif step in ("predict_file", "predict_sets"):
    from sclabel.model import Model
    from sclabel.predict_stream import predict_to_file
    model = Model.load(work / "model")
    adata = ad.read_h5ad(work / "query.h5ad", backed="r")
    out = work / f"out-{time.time_ns()}.parquet"
    sets = {"coverage": 0.9} if step == "predict_sets" else {}
    t0 = time.perf_counter()
    predict_to_file(model, adata, out, chunk_size=8192, progress=False, **sets)
    n = adata.n_obs
    out.unlink()
elif step == "store_loader":
    from sclabel.data.store import Store
    from sclabel.data.store_loader import StoreRows
    store = Store.open(work / "loader.store")
    rows = StoreRows(store, np.arange(store.n_cells), workers=1, densify_threads=2)
    y = np.zeros(store.n_cells, np.int64)
    t0 = time.perf_counter()
    n = 0
    for i, batch in enumerate(rows.batches(y, batch_size=2048, shuffle=True, seed=0, epoch=0)):
        n += batch["x"].shape[0]
        if i + 1 == 150:
            break
elif step == "tokenize":
    from sclabel.data.tokenize import GeneTokenizer, tokenize
    tok = GeneTokenizer.from_geneformer(sys.argv[3])
    out = work / f"corpus-{time.time_ns()}.store"
    t0 = time.perf_counter()
    store = tokenize([work / "cellbench_x15.h5ad"], out, tok, truncate=True, progress=False)
    n = store.n_cells
    import shutil; shutil.rmtree(out)
print(json.dumps({"seconds": time.perf_counter() - t0, "cells": int(n)}))
"""


def prepare(work: Path) -> None:
    """The inputs, made once with this checkout (their formats did not change)."""
    import anndata as ad
    import scipy.sparse as sp

    import sclabel
    from sclabel.io.h5ad_writer import write_h5ad_chunks
    from sclabel.store.build import build_store
    from sclabel.studies.simulate import fit_profile, generate, to_anndata

    work.mkdir(parents=True, exist_ok=True)
    # a model saved before calibration.safetensors existed cannot give sets: made again
    if not (work / "model" / "calibration.safetensors").exists():
        kang = ad.read_h5ad(SHARED / "kang_pbmc_stim.h5ad")
        profile = fit_profile(kang, cell_type_key="condition", seed=0)
        train = to_anndata(profile, 20_000, n_donors=10, seed=1)
        train.obs_names = [f"t{i}" for i in range(train.n_obs)]
        model = sclabel.train(train, label_key="cell_type", model="mlp", max_epochs=2,
                              progress=False)  # fmt: skip
        shutil.rmtree(work / "model", ignore_errors=True)
        model.save(work / "model")
    if not (work / "query.h5ad").exists():
        kang = ad.read_h5ad(SHARED / "kang_pbmc_stim.h5ad")
        profile = fit_profile(kang, cell_type_key="condition", seed=0)
        chunks = generate(profile, 100_000, n_donors=20, chunk_size=20_000, seed=2)
        write_h5ad_chunks(((X, obs[["cell_type"]]) for X, obs in chunks), profile.var,
                          work / "query.h5ad")  # fmt: skip
    if not (work / "loader.store").exists():
        bladder = ad.read_h5ad(SHARED / "mouse_bladder_2100.h5ad")
        profile = fit_profile(bladder, cell_type_key="label_id", seed=0)
        cells = to_anndata(profile, 100_000, n_donors=20, seed=3)
        build_store([cells], work / "loader.store", progress=False)
    if not (work / "cellbench_x15.h5ad").exists():
        cellbench = ad.read_h5ad(SHARED / "cellbench_sc_celllines.h5ad")
        X = sp.vstack([sp.csr_matrix(cellbench.X)] * 15, format="csr")
        obs = ad.AnnData(X=X, var=cellbench.var).obs
        obs.index = [f"c{i}" for i in range(X.shape[0])]
        ad.AnnData(X=X, obs=obs, var=cellbench.var).write_h5ad(work / "cellbench_x15.h5ad")


def measure(src: Path, work: Path, step: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-c", WORKER, str(work), step, str(SHARED / "geneformer_v1")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{step} failed with {src}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="src/ of the tree to compare against")
    parser.add_argument("--after", default=str(ROOT / "src"), help="src/ of the new tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "sclabel-hot-paths"))
    args = parser.parse_args()
    work = Path(args.work)
    prepare(work)
    trees = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    times: dict = {step: {name: [] for name in trees} for step in STEPS}
    for round_ in range(args.rounds):
        for step in STEPS:
            order = list(trees) if round_ % 2 == 0 else list(trees)[::-1]
            for name in order:
                out = measure(trees[name], work, step)
                times[step][name].append(out["seconds"])
                times[step]["cells"] = out["cells"]
                seconds = out["seconds"]
                print(f"round {round_ + 1} {step:15s} {name:6s} {seconds:7.2f} s", flush=True)
    rows = []
    for step in STEPS:
        best = {name: min(times[step][name]) for name in trees}
        cells = times[step]["cells"]
        rows.append({
            "step": step,
            "cells": cells,
            "before_cells_per_s": cells / best["before"],
            "after_cells_per_s": cells / best["after"],
            "after_over_before": best["before"] / best["after"],
            "seconds": {name: times[step][name] for name in trees},
        })  # fmt: skip
    header = bc.run_header(__file__)
    bc.write_json(RESULT, {**header, "before": str(trees["before"]), "rows": rows})
    lines = [
        MD_START,
        f"Machine: {header['machine']}. Date: {header['date']}. Command: `{header['command']}`.",
        f"Each step in a fresh process per tree, {args.rounds} alternating rounds, best kept; "
        "throughput after / before (>1: faster after).",
        "",
        "| step | before, cells/s | after, cells/s | after / before |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {LABELS[row['step']]} | {row['before_cells_per_s']:,.0f} | "
            f"{row['after_cells_per_s']:,.0f} | {row['after_over_before']:.2f} |"
        )
    lines.append(MD_END)
    bc.update_results(
        "\n".join(lines), MD_START, MD_END, "Hot paths before and after a restructure"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
