"""Loader throughput: normalized dense batches of 2,048 cells x ~20,000 genes, several ways.

Every loader yields the same thing a training step needs: a float32 torch tensor of
log1p(counts / library size x 10,000) for 2,048 cells over all 20,670 genes, in shuffled
order. Compared on one generated file (statistics fitted to ../shared/data's mouse bladder,
20,670 genes):

  sclabel store          block shuffle (64-cell blocks, 8-batch windows), reader threads and
                         threads that densify each batch (each on its own rows)
  h5ad backed, random    anndata backed mode, 2,048 random (sorted) rows per batch
  h5ad backed, blocks    anndata backed mode, contiguous 2,048-row slices in shuffled order
  zarr, random           anndata's sparse_dataset over a zarr v3 copy, random (sorted) rows
  tiledbsoma-ml          ExperimentDataset (shuffle chunks of 64, io batch 65,536) on a SOMA
                         copy, dense raw counts normalized in torch

Usage: python benchmarks/store_loader.py [--cells 100000] [--batches 150]
Writes benchmarks/results/store_loader.json and its table in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402

from sclabel.io.h5ad_writer import write_h5ad_chunks  # noqa: E402
from sclabel.store.build import build_store  # noqa: E402
from sclabel.store.format import Store  # noqa: E402
from sclabel.store.loader import StoreRows  # noqa: E402
from sclabel.studies.simulate import fit_profile, generate  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data" / "mouse_bladder_2100.h5ad"
RESULT = HERE / "results" / "store_loader.json"
MD_START, MD_END = "<!-- store-loader:start -->", "<!-- store-loader:end -->"
BATCH = 2048


def make_data(work: Path, n_cells: int, warm: bool = True) -> dict[str, Path]:
    """The generated .h5ad and its copies as a store, a zarr and a SOMA experiment."""
    work.mkdir(parents=True, exist_ok=True)
    paths = {k: work / f"cells_{n_cells}.{k}" for k in ("h5ad", "store", "zarr", "soma")}
    if not paths["h5ad"].exists():
        profile = fit_profile(ad.read_h5ad(SHARED), cell_type_key="label_id")
        chunks = generate(profile, n_cells, n_donors=50, chunk_size=20_000)
        write_h5ad_chunks(((X, obs[["cell_type", "donor"]]) for X, obs in chunks),
                          profile.var, paths["h5ad"])  # fmt: skip
    if not paths["store"].exists():
        build_store([paths["h5ad"]], paths["store"], progress=False)
    if not paths["zarr"].exists():
        ad.settings.zarr_write_format = 3
        ad.read_h5ad(paths["h5ad"]).write_zarr(paths["zarr"])
    if not paths["soma"].exists():
        import tiledbsoma.io

        tiledbsoma.io.from_h5ad(str(paths["soma"]), str(paths["h5ad"]), "RNA", X_layer_name="raw")
    for path in paths.values() if warm else ():  # same start for every loader: all cached
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        for f in files:
            with open(f, "rb") as handle:
                while handle.read(1 << 26):
                    pass
    return paths


def normalize_dense(rows: sp.csr_matrix) -> torch.Tensor:
    """What every non-store loader must add: library-size scaling, log1p, densify."""
    rows = sp.csr_matrix(rows, dtype=np.float32)
    totals = np.asarray(rows.sum(axis=1)).ravel()
    rows.data *= np.repeat((1e4 / totals).astype(np.float32), np.diff(rows.indptr))
    np.log1p(rows.data, out=rows.data)
    return torch.from_numpy(rows.toarray())


def store_loader(paths, threads):
    store = Store.open(paths["store"])
    workers, densify = threads
    rows = StoreRows(store, np.arange(store.n_cells), workers=workers, densify_threads=densify)
    for epoch in itertools.count():  # as many epochs as the timed batches need
        for batch in rows.batches(batch_size=BATCH, shuffle=True, seed=0, epoch=epoch):
            yield batch["x"]


def backed_random(paths, *_):
    adata = ad.read_h5ad(paths["h5ad"], backed="r")
    rng = np.random.default_rng(0)
    while True:
        index = np.sort(rng.choice(adata.n_obs, BATCH, replace=False))
        yield normalize_dense(adata.X[index])


def backed_blocks(paths, *_):
    adata = ad.read_h5ad(paths["h5ad"], backed="r")
    starts = np.random.default_rng(0).permutation(np.arange(0, adata.n_obs - BATCH, BATCH))
    for start in starts:
        yield normalize_dense(adata.X[start : start + BATCH])


def zarr_random(paths, *_):
    import zarr

    X = ad.io.sparse_dataset(zarr.open(paths["zarr"], mode="r")["X"])
    rng = np.random.default_rng(0)
    while True:
        yield normalize_dense(X[np.sort(rng.choice(X.shape[0], BATCH, replace=False))])


def soma_ml(paths, *_):
    import tiledbsoma
    from tiledbsoma_ml import ExperimentDataset

    with (
        tiledbsoma.Experiment.open(str(paths["soma"])) as experiment,
        experiment.axis_query("RNA") as query,
    ):
        dataset = ExperimentDataset(query, layer_name="raw", batch_size=BATCH, shuffle=True, seed=0)
        for X, _ in dataset:
            X = torch.from_numpy(X)
            yield torch.log1p(X * (1e4 / X.sum(dim=1, keepdim=True)))


LOADERS = {
    "sclabel store, inline (no threads)": (store_loader, (0, 1)),
    "sclabel store, 1 reader + 1 densify thread": (store_loader, (1, 1)),
    "sclabel store, 1 reader + 2 densify threads": (store_loader, (1, 2)),
    "sclabel store, 2 reader + 2 densify threads": (store_loader, (2, 2)),
    "h5ad backed, random rows": (backed_random, 0),
    "h5ad backed, shuffled contiguous blocks": (backed_blocks, 0),
    "zarr (anndata sparse_dataset), random rows": (zarr_random, 0),
    "tiledbsoma-ml ExperimentDataset": (soma_ml, 0),
}


def drop_page_cache() -> None:
    """Cold start: the kernel forgets cached file pages (Linux, needs root)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as err:
        sys.exit(f"--cold needs root to write /proc/sys/vm/drop_caches ({err})")


def measure(loader, n_batches: int) -> dict:
    batches = iter(loader)
    first = next(batches)  # warm-up: opening files, compiling the numba kernel
    assert 0 < first.shape[0] <= BATCH and first.dtype == torch.float32
    cells, start = 0, time.perf_counter()
    for _, x in zip(range(n_batches), batches, strict=False):
        cells += x.shape[0]
        float(x[0, 0])  # touch the batch as a training step would
    seconds = time.perf_counter() - start
    return {"cells": cells, "seconds": seconds, "cells_per_s": cells / seconds}


def markdown(result: dict) -> str:
    rows = result["loaders"]
    anchor = rows["h5ad backed, random rows"]["cells_per_s"]
    cold = "cold" in RESULT.name
    cache = "page cache emptied before each loader" if cold else "files in the page cache"
    lines = [
        f"Machine: {result['machine']}. Date: {result['date']}. Command: `{result['command']}`.",
        f"Data: {result['n_cells']:,} generated cells x {result['n_genes']:,} genes "
        f"({result['nnz_per_cell']:.0f} non-zeros per cell), {cache}; "
        f"batches of {BATCH} normalized dense cells. {result.get('note', '')}",
        "",
        "| loader | cells/s | x backed random access |",
        "|---|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['cells_per_s']:,.0f} | {row['cells_per_s'] / anchor:.1f} |")
    return MD_START + "\n" + "\n".join(lines) + "\n" + MD_END


def write_markdown(result: dict) -> None:
    title = "cold page cache" if "cold" in RESULT.name else "files in the page cache"
    bc.update_results(markdown(result), MD_START, MD_END, f"Store loader throughput, {title}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=150, help="timed batches per loader")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "loader")
    parser.add_argument("--only", nargs="+", help="loader names to run (quote each)")
    parser.add_argument("--note", default="", help="a sentence for the table (e.g. CPU shared)")
    parser.add_argument("--cold", action="store_true", help="empty the page cache per loader")
    args = parser.parse_args()
    global RESULT, MD_START, MD_END
    if args.cold:  # a second table: every loader starts from disk
        RESULT = RESULT.with_name("store_loader_cold.json")
        MD_START, MD_END = "<!-- store-loader-cold:start -->", "<!-- store-loader-cold:end -->"
    if not SHARED.exists():
        sys.exit(f"real data not found: {SHARED}; see ../shared/data/README.md")
    paths = make_data(args.work, args.cells, warm=not args.cold)
    store = Store.open(paths["store"])
    result = {
        **bc.run_header(__file__),
        "n_cells": store.n_cells,
        "n_genes": store.meta["n_genes"],
        "nnz_per_cell": store.meta["nnz"] / store.n_cells,
        "note": args.note,
        "loaders": {},
    }
    wanted = args.only or list(LOADERS)
    for name in wanted:
        make, workers = LOADERS[name]
        if args.cold:
            drop_page_cache()
        result["loaders"][name] = measure(make(paths, workers), args.batches)
        print(f"{name:45s} {result['loaders'][name]['cells_per_s']:>10,.0f} cells/s", flush=True)
    RESULT.write_text(json.dumps(result, indent=1))
    write_markdown(result)


if __name__ == "__main__":
    main()
