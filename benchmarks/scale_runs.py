"""Bigger than memory: one training epoch over a >30 GB store, prediction over 5M cells.

    python benchmarks/scale_runs.py epoch   [--cells 3600000] [--work DIR]
    python benchmarks/scale_runs.py predict [--cells 5000000] [--work DIR]

epoch:   a store of cells generated from a profile fitted to ../shared/data's mouse bladder
         (20,670 genes, ~1,060 non-zeros per cell, ~8.5 kB per cell on disk), split 90/5/5 by
         donor, then (1) the loader alone over the training part and (2) `sclabel train` of a
         linear model for one epoch, each in its own process with its peak RSS sampled.
predict: a 5M-cell .h5ad generated from a Kang-fitted profile (9,015 genes), a model trained
         on 50,000 other generated cells, then `sclabel predict --backed` over the 5M cells
         and CellTypist 1.7.1 (`.venv-celltypist`) on the same file, the latter under a 20 GiB
         address-space limit so it cannot take the machine down.

Each step's command, seconds, exit code and peak RSS (this process tree, sampled every
0.2 s) go to benchmarks/results/scale_runs.json and a table in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _bench_common as bc  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data"
RESULT = HERE / "results" / "scale_runs.json"
MD_START, MD_END = "<!-- scale-runs:start -->", "<!-- scale-runs:end -->"
PY = sys.executable
CELLTYPIST_PY = HERE.parent / ".venv-celltypist" / "bin" / "python"


def measured(name: str, command: list[str], *, limit_gib: float | None = None) -> dict:
    """Run `command`, sampling the RSS of its process tree; returns the step's record."""
    print(f"== {name}: {' '.join(command)}", flush=True)

    def limit() -> None:
        if limit_gib:
            size = int(limit_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    start, peak = time.perf_counter(), 0.0
    log = HERE / "work" / f".{name.replace(' ', '_').replace('/', '_')}.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=limit)
        while process.poll() is None:
            pids = [process.pid, *bc._descendants(process.pid)]
            peak = max(peak, sum(bc._status_kib("VmRSS", p) for p in pids) / 1024)
            time.sleep(0.2)
    text = log.read_text()
    log.unlink()
    record = {
        "name": name,
        "command": " ".join(command),
        "exit_code": process.returncode,
        "seconds": time.perf_counter() - start,
        "peak_rss_mib": peak,
        "limit_gib": limit_gib,
        "output_tail": text[-1500:],
    }
    print(
        f"   exit {process.returncode}, {record['seconds']:.0f} s, peak {peak:,.0f} MiB", flush=True
    )
    return record


def sclabel(*args: str) -> list[str]:
    return [PY, "-m", "sclabel.cli", "--quiet", *args]


def python(code: str) -> list[str]:
    return [PY, "-c", code]


def epoch_steps(work: Path, cells: int) -> list[dict]:
    store = work / "big.store"
    steps = []
    if not store.exists():
        code = (
            "import anndata as ad; from sclabel.scale_data import fit_profile, GeneratedSource;"
            "from sclabel.data.store_build import build_store;"
            f"p = fit_profile(ad.read_h5ad({str(SHARED / 'mouse_bladder_2100.h5ad')!r}),"
            " cell_type_key='label_id');"
            f"build_store([GeneratedSource(p, {cells}, n_donors=200)], {str(store)!r},"
            " label_key='cell_type', split_by='donor', split_fractions=(0.9, 0.05, 0.05),"
            " chunk_size=50000)"
        )
        steps.append(measured("generate store", python(code)))
    size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    loader = (
        "import time, numpy as np; from sclabel.data.store import Store;"
        "from sclabel.data.store_loader import StoreRows;"
        f"s = Store.open({str(store)!r}); rows = np.flatnonzero(s.column('split') == 'train');"
        "t = time.perf_counter(); n = 0\n"
        "for b in StoreRows(s, rows, workers=2).batches(batch_size=2048, shuffle=True):"
        " n += b['x'].shape[0]\n"
        "s = time.perf_counter() - t; print(f'{n} cells in {s:.1f} s: {n / s:,.0f} cells/s')"
    )
    steps.append(measured("loader epoch (training part)", python(loader)))
    train = sclabel(
        "train", str(store), "--label-key", "cell_type", "--split-key", "split",
        "--model", "linear", "--max-epochs", "1", "--batch-size", "2048", "--workers", "2",
        "--out", str(work / "big-linear"),
    )  # fmt: skip
    steps.append(measured("train linear, 1 epoch", train))
    metrics = json.loads((work / "big-linear" / "metrics.json").read_text())
    steps[-1]["fit_seconds"] = metrics["fit"]["train_seconds"]
    steps[-1]["test_macro_f1"] = metrics["test"]["macro_f1"]
    for step in steps:
        step["store_gb"] = size / 1e9
    return steps


def predict_steps(work: Path, cells: int) -> list[dict]:
    big, small = work / "big.h5ad", work / "train50k.h5ad"
    steps = []
    profile = work / "kang-profile"
    kang = str(SHARED / "kang_pbmc_stim.h5ad")
    if not big.exists():
        make = sclabel("simulate", kang, "--cells", str(cells), "--donors", "200",
                       "--save-profile", str(profile), "--out", str(big))  # fmt: skip
        steps.append(measured("generate 5M-cell h5ad", make))
    if not small.exists():
        make = sclabel("simulate", str(profile), "--cells", "50000", "--seed", "7",
                       "--out", str(small))  # fmt: skip
        steps.append(measured("generate 50k training cells", make))
    model = work / "kang-mlp"
    if not model.exists():
        train = sclabel("train", str(small), "--label-key", "cell_type", "--split-by", "donor",
                        "--model", "mlp", "--max-epochs", "5", "--out", str(model))  # fmt: skip
        steps.append(measured("train mlp on 50k cells", train))
    out = work / "big-labels.parquet"
    out.unlink(missing_ok=True)
    predict = sclabel("predict", str(big), "--backed", "--model", str(model), "--out", str(out),
                      "--chunk-size", "16384")  # fmt: skip
    steps.append(measured("sclabel predict --backed, 5M cells", predict))
    if CELLTYPIST_PY.exists():
        ct_model = work / "celltypist.pkl"
        worker = str(HERE / "_celltypist_worker.py")
        if not ct_model.exists():
            labelled = work / "train50k-label.h5ad"  # the worker reads obs["label"]
            copy = (
                f"import anndata as ad; a = ad.read_h5ad({str(small)!r});"
                f"a.obs['label'] = a.obs['cell_type']; a.write_h5ad({str(labelled)!r})"
            )
            subprocess.run(python(copy), check=True)
            fit = [str(CELLTYPIST_PY), worker, "fit", "--train", str(labelled),
                   "--test", str(labelled), "--model-out", str(ct_model), "--input", "counts",
                   "--result", str(work / "ct-fit.json"),
                   "--pred-out", str(work / "ct-fit.csv")]  # fmt: skip
            steps.append(measured("CellTypist train on 50k cells", fit))
        annotate = [str(CELLTYPIST_PY), worker, "predict", "--model-out", str(ct_model),
                    "--query", str(big), "--input", "counts", "--result", str(work / "ct.json"),
                    "--pred-out", str(work / "ct.csv")]  # fmt: skip
        steps.append(measured("CellTypist annotate, 5M cells", annotate, limit_gib=20))
    size = big.stat().st_size
    for step in steps:
        step["h5ad_gb"] = size / 1e9
    return steps


def markdown(result: dict) -> str:
    lines = [
        f"Machine: {result['machine']}, {result['ram_gib']:.0f} GiB RAM. Date: {result['date']}.",
        "",
        "| run | step | exit | seconds | peak RSS (MiB) | data on disk |",
        "|---|---|---:|---:|---:|---|",
    ]
    for kind, run in result["runs"].items():
        for step in run["steps"]:
            disk = (
                f"store {step['store_gb']:.1f} GB"
                if "store_gb" in step
                else f"h5ad {step.get('h5ad_gb', 0):.1f} GB"
            )
            lines.append(
                f"| {kind} | {step['name']} | {step['exit_code']} | {step['seconds']:,.0f} "
                f"| {step['peak_rss_mib']:,.0f} | {disk} |"
            )
        lines.append(f"| {kind} | command: `{run['command']}` | | | | |")
    return MD_START + "\n" + "\n".join(lines) + "\n" + MD_END


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", choices=["epoch", "predict"])
    parser.add_argument("--cells", type=int)
    parser.add_argument("--work", type=Path, default=HERE / "work" / "scale")
    parser.add_argument("--clean", action="store_true", help="delete the big files afterwards")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.run == "epoch":
        steps = epoch_steps(args.work, args.cells or 3_600_000)
    else:
        steps = predict_steps(args.work, args.cells or 5_000_000)
    result = json.loads(RESULT.read_text()) if RESULT.exists() else {"runs": {}}
    result.update(
        machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        ram_gib=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        date=str(date.today()),
    )
    command = "python benchmarks/scale_runs.py " + " ".join(sys.argv[1:])
    # a rerun skips what exists (the generated data, trained models): keep those steps
    previous = result["runs"].get(args.run, {}).get("steps", [])
    rerun = {step["name"] for step in steps}
    steps = [step for step in previous if step["name"] not in rerun] + steps
    result["runs"][args.run] = {"command": command, "steps": steps}
    RESULT.write_text(json.dumps(result, indent=1))
    heading = "Bigger than memory: store epoch and 5M-cell prediction"
    bc.update_results(markdown(result), MD_START, MD_END, heading)
    if args.clean:
        for path in args.work.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()


if __name__ == "__main__":
    main()
