"""GPU throughput: the store loader feeding a device, and TabNet training steps on it.

On the generated store of benchmarks/store_loader.py (20,670 genes, ~1,000 non-zeros per
cell), batches of 2,048 cells:

  loader -> device, dense     StoreRows' dense batches (1 reader + 2 densify threads, the
                              training default) copied to the device, as the training loop's
                              `fabric.to_device` does
  loader -> device, sparse    the same batches as CSR, copied, densified on the device
                              (a tenth of the bytes over PCIe)
  TabNet step, batch resident forward + backward + AdamW on one batch already on the device:
                              the model's own ceiling
  TabNet step, from loader    the same steps fed by the dense loader: what training gets

The aim (issue 4): the loader keeps the GPU busy, at least 50,000 cells/s. Without CUDA,
`--device cpu` runs every measurement (fewer steps) so the script itself is checked.

Usage: python benchmarks/gpu_throughput.py [--device cuda] [--cells 100000] [--steps 100]
                                          [--model-steps 50]
Writes benchmarks/results/gpu_throughput[_cpu].json and a table in RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402
from store_loader import SHARED, make_data  # noqa: E402

from sclabel.models import build  # noqa: E402
from sclabel.store.format import Store  # noqa: E402
from sclabel.store.loader import StoreRows  # noqa: E402

HERE = Path(__file__).resolve().parent
BATCH = 2048


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_batches(rows: StoreRows, y: np.ndarray, sparse: bool):
    for epoch in itertools.count():
        yield from rows.batches(y, batch_size=BATCH, shuffle=True, seed=0, epoch=epoch,
                                sparse=sparse)  # fmt: skip


def timed(steps: int, device: torch.device, step) -> dict:
    """Cells per second over `steps` calls of step() -> cells, after two warm-up calls."""
    for _ in range(2):
        step()
    synchronize(device)
    cells, start = 0, time.perf_counter()
    for _ in range(steps):
        cells += step()
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"cells": cells, "seconds": seconds, "cells_per_s": cells / seconds}


def measure(store: Store, device: torch.device, steps: int, model_steps: int) -> dict:
    y = store.column("cell_type").cat.codes.to_numpy().astype(np.int64)
    n_classes = int(y.max()) + 1
    rows = StoreRows(store, np.arange(store.n_cells))
    results = {}

    dense = loader_batches(rows, y, sparse=False)

    def copy_dense() -> int:
        x = next(dense)["x"].to(device)
        return x.shape[0]

    results["loader -> device, dense"] = timed(steps, device, copy_dense)
    sparse = loader_batches(rows, y, sparse=True)

    def copy_sparse() -> int:
        x = next(sparse)["x"].to(device).to_dense()
        return x.shape[0]

    results["loader -> device, sparse"] = timed(steps, device, copy_sparse)

    model = build("tabnet", store.meta["n_genes"], n_classes, {}).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step(batch) -> int:
        out = model(batch)
        loss = loss_fn(out.logits, batch["y"]) + sum(out.loss_terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return batch["x"].shape[0]

    resident = {k: v.to(device) for k, v in next(dense).items()}
    results["TabNet step, batch resident"] = timed(
        model_steps, device, lambda: train_step(resident)
    )

    def fed_step() -> int:
        return train_step({k: v.to(device) for k, v in next(dense).items()})

    results["TabNet step, from loader"] = timed(model_steps, device, fed_step)
    return results


def markdown(result: dict, start: str, end: str) -> str:
    lines = [
        f"Machine: {result['machine']}. Date: {result['date']}. Command: `{result['command']}`.",
        f"Data: {result['n_cells']:,} generated cells x {result['n_genes']:,} genes, batches "
        f"of {BATCH}; {result['steps']} timed loader batches and {result['model_steps']} "
        "timed TabNet steps, each after 2 warm-up steps.",
        "",
        "| measurement | cells/s |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {row['cells_per_s']:,.0f} |" for name, row in result["runs"].items()]
    return start + "\n" + "\n".join(lines) + "\n" + end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu")
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=100, help="timed loader batches")
    parser.add_argument("--model-steps", type=int, default=50, help="timed TabNet steps")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "loader")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here; run with --device cpu to check the script")
    if not SHARED.exists():
        sys.exit(f"real data not found: {SHARED}; see ../shared/data/README.md")
    store = Store.open(make_data(args.work, args.cells)["store"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU (CPU run)"
    result = {
        **bc.run_header(__file__, name),
        "n_cells": store.n_cells,
        "n_genes": store.meta["n_genes"],
        "steps": args.steps,
        "model_steps": args.model_steps,
        "runs": measure(store, device, args.steps, args.model_steps),
    }
    for run, row in result["runs"].items():
        print(f"{run:32s} {row['cells_per_s']:>10,.0f} cells/s", flush=True)
    suffix = "" if device.type == "cuda" else "_cpu"
    (HERE / "results" / f"gpu_throughput{suffix}.json").write_text(json.dumps(result, indent=1))
    start, end = f"<!-- gpu-throughput{suffix}:start -->", f"<!-- gpu-throughput{suffix}:end -->"
    title = "GPU throughput" + (" (the script checked on CPU)" if suffix else "")
    bc.update_results(markdown(result, start, end), start, end, title)


if __name__ == "__main__":
    main()
