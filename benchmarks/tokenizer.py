"""Rank-value tokenizer throughput: sclabel's against an anchor that follows Geneformer's.

Both turn raw counts into each cell's gene tokens ordered by (count / cell total x 10,000)
/ gene median, with Geneformer V1's vocabulary and medians (../shared/data/geneformer_v1).

  sclabel tokenize -> store   `sclabel.data.tokenize.tokenize`: backed .h5ad in chunks of
  (full rows)                 2,048 cells -> validate -> align genes -> rank -> write a store
                              of every expressed gene per cell (more than Geneformer keeps)
  sclabel tokenize            the same with `truncate=True` (`sclabel tokenize --truncate`):
  --truncate -> store         each cell's first 2,048 genes, the output Geneformer's
                              tokenizer saves; the like-for-like match for its end-to-end row
  sclabel rank_order          the ranking alone, on the matrix already in memory (chunks
                              of 2,048 cells), keeping each cell's first 2,048 as the anchor
  anchor, file                Geneformer's approach, written here from its description: the
                              backed .h5ad in chunks of 512 cells, then a Python loop over
                              the cells, numpy per cell (count / n_counts x 10,000 / median,
                              np.argsort of the negated values, tokens, first 2,048)
  anchor, in memory           the anchor's per-cell loop alone, on the matrix in memory
  Geneformer's tokenizer,     the approach of Geneformer's own TranscriptomeTokenizer, from
  loom file                   its documented steps: the same cells as a .loom file (its
                              input format), loompy `scan` over 512-cell dense views of the
                              vocabulary's genes, the dense view normalized (/ n_counts x
                              10,000 / median), then per cell np.nonzero over all genes,
                              np.argsort, tokens, first 2,048. Needs `pip install loompy`;
                              skipped without it. The sparse anchor above is the stricter
                              reference (it skips the dense work); both ratios are shown.
  Geneformer's tokenizer      the loom row above plus what Geneformer's tokenize_data does
  end to end                  next: a Hugging Face dataset of input_ids and the label, two
                              `map` passes (truncate to 2,048, add length), save_to_disk.
                              The fair match for `sclabel tokenize -> store`, which also
                              goes from file to disk. Needs `pip install datasets`.

sclabel runs on one thread and on every core; the anchor is one Python thread (Geneformer
spreads files over processes, which would help both the same way). Each timing is the best
of `--repeats` rounds in which every method runs once in turn (the machine is shared and
its speed drifts; round-robin spreads that over all methods). Also compared on CellBench
itself, one thread: one np.lexsort over all non-zeros (row, -score, token), numba's
np.argsort per row, and sclabel's per-row radix kernel.

Usage: python benchmarks/tokenizer.py [--dataset cellbench|kang] [--copies 15] [--repeats 2]
Writes benchmarks/results/tokenizer.json (kang: tokenizer_kang.json) and a table in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import anndata as ad
import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402

from sclabel.data.normalize import count_space  # noqa: E402
from sclabel.foundation.corpus import token_rows, tokenize  # noqa: E402
from sclabel.foundation.ranking import rank_order  # noqa: E402
from sclabel.foundation.vocabulary import GeneTokenizer  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
# per dataset: the source file, the obs column carried, and where results are recorded
DATASETS = {
    "cellbench": {
        "file": "cellbench_sc_celllines.h5ad",
        "label": "cell_line",
        "describe": "CellBench (plate-based, deep)",
        "result": HERE / "results" / "tokenizer.json",
        "markers": ("<!-- tokenizer:start -->", "<!-- tokenizer:end -->"),
    },
    "kang": {
        "file": "kang_pbmc_stim.h5ad",
        "label": "condition",
        "describe": "Kang PBMC (10x droplets), symbols mapped to Ensembl IDs,",
        "result": HERE / "results" / "tokenizer_kang.json",
        "markers": ("<!-- tokenizer-kang:start -->", "<!-- tokenizer-kang:end -->"),
    },
}
MAX_LEN, TARGET_SUM, ANCHOR_CHUNK, CHUNK = 2048, 1e4, 512, 2048
LOOM = "Geneformer's tokenizer (loompy scan, dense views), loom file"
LOOM_DISK = "Geneformer's tokenizer end to end: loom file -> dataset on disk"


def store_name(threads: int, truncate: bool) -> str:
    if truncate:
        return f"sclabel tokenize --truncate -> store (first 2,048), {threads} thread(s)"
    return f"sclabel tokenize -> store (full rows), {threads} thread(s)"


def has_datasets() -> bool:
    try:
        import datasets  # noqa: F401
    except ImportError:
        return False
    return True


def make_file(work: Path, copies: int, dataset: str, tokenizer: GeneTokenizer) -> Path:
    """The dataset repeated `copies` times (unique cell names), written once. Genes are
    Ensembl IDs, as Geneformer's tokenizer requires (Kang's symbols mapped through its name
    table; unmapped and repeated genes are dropped)."""
    spec = DATASETS[dataset]
    path = work / f"{dataset}_x{copies}.h5ad"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        cells = ad.read_h5ad(SHARED / spec["file"])
        cells.obs = cells.obs[[spec["label"]]]
        ids = pd.Index([tokenizer.symbol_to_id.get(g, g) for g in cells.var_names])
        cells = cells[:, ids.str.startswith("ENSG") & ~ids.duplicated()].copy()
        cells.var_names = [tokenizer.symbol_to_id.get(g, g) for g in cells.var_names]
        parts = [cells.copy() for _ in range(copies)]
        for i, part in enumerate(parts):
            part.obs_names = [f"{name}-{i}" for name in part.obs_names]
        ad.concat(parts, merge="same").write_h5ad(path)
    return path


def anchor_cells(X: sp.csr_matrix, n_counts, tokens, norm_factor) -> list[np.ndarray]:
    """Geneformer's way for one chunk of cells (columns: the vocabulary's genes): a Python
    loop over the cells, numpy per cell."""
    cells = []
    for i in range(X.shape[0]):
        row = X[i]
        values = row.data / n_counts[i] * TARGET_SUM / norm_factor[row.indices]
        order = np.argsort(-values)
        cells.append(tokens[row.indices][order][:MAX_LEN])
    return cells


def anchor_file(path: Path, tokenizer: GeneTokenizer) -> list[np.ndarray]:
    adata = ad.read_h5ad(path, backed="r")
    token, median = tokenizer.gene_table(adata.var)
    coding = np.flatnonzero(token >= 0)  # the genes in the vocabulary, as Geneformer selects
    cells = []
    for start in range(0, adata.n_obs, ANCHOR_CHUNK):
        X = adata.X[start : start + ANCHOR_CHUNK]
        n_counts = np.asarray(X.sum(axis=1)).ravel()  # over all genes (Geneformer's n_counts)
        cells += anchor_cells(X[:, coding], n_counts, token[coding], median[coding])
    adata.file.close()
    return cells


def make_loom(work: Path, path: Path, label: str) -> Path | None:
    """The same cells as a .loom (genes x cells, `ensembl_id` rows, `n_counts` columns), as
    Geneformer's tokenizer expects; None when loompy is not installed."""
    try:
        import loompy
    except ImportError:
        return None
    loom = work / (path.stem + ".loom")
    if not loom.exists():
        cells = ad.read_h5ad(path)
        X = sp.csr_matrix(cells.X)
        loompy.create(
            str(loom),
            X.T.tocoo(),
            row_attrs={"ensembl_id": np.asarray(cells.var_names, dtype=str)},
            col_attrs={
                "n_counts": np.asarray(X.sum(axis=1)).ravel(),
                label: np.asarray(cells.obs[label], dtype=str),
            },
        )
    return loom


def anchor_loom(loom: Path, tokenizer: GeneTokenizer, label: str | None = None):
    """Geneformer's TranscriptomeTokenizer approach on a loom file: dense 512-cell views,
    normalized as a block, then one cell at a time. With `label`, returns (cells, that
    column attribute per cell) as the tokenizer carries it into its dataset."""
    import loompy

    with loompy.connect(str(loom), mode="r") as data:
        var = pd.DataFrame(index=pd.Index(data.ra["ensembl_id"]))
        token, median = tokenizer.gene_table(var)
        coding = np.flatnonzero(token >= 0)
        cells, labels = [], []
        for _, _, view in data.scan(axis=1, batch_size=ANCHOR_CHUNK):
            dense = view.view[coding, :][:, :]
            norm = dense / view.ca.n_counts * TARGET_SUM / median[coding][:, None]
            for i in range(norm.shape[1]):
                vector = norm[:, i]
                nonzero = np.nonzero(vector)[0]
                order = np.argsort(-vector[nonzero])
                cells.append(token[coding][nonzero][order])
            if label is not None:
                labels += view.ca[label].tolist()
    if label is None:
        return [cell[:MAX_LEN] for cell in cells]
    return cells, labels


def anchor_loom_to_disk(loom: Path, tokenizer: GeneTokenizer, label: str, out: Path):
    """Geneformer's tokenizer end to end, as its tokenize_data documents the steps: the loom
    tokenized as above (full rows), then a Hugging Face dataset of input_ids and the label,
    truncated to 2,048 tokens and given a length column by two `map` passes (one process),
    saved to disk. Returns the truncated token lists."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    cells, labels = anchor_loom(loom, tokenizer, label)
    dataset = Dataset.from_dict({"input_ids": cells, label: labels})
    dataset = dataset.map(lambda cell: {"input_ids": cell["input_ids"][:MAX_LEN]})
    dataset = dataset.map(lambda cell: {"length": len(cell["input_ids"])})
    shutil.rmtree(out, ignore_errors=True)
    dataset.save_to_disk(str(out))
    return [cell[:MAX_LEN] for cell in cells]


def anchor_memory(X: sp.csr_matrix, token, median) -> list[np.ndarray]:
    n_counts = np.asarray(X.sum(axis=1)).ravel()
    coding = np.flatnonzero(token >= 0)
    X = X[:, coding]
    cells = []
    for start in range(0, X.shape[0], ANCHOR_CHUNK):
        stop = start + ANCHOR_CHUNK
        cells += anchor_cells(X[start:stop], n_counts[start:stop], token[coding], median[coding])
    return cells


def ours_memory(X: sp.csr_matrix, factor, token, median, threads: int) -> list:
    """sclabel's ranking on the matrix in memory, in chunks of 2,048 cells as `tokenize`
    reads them (row views, no copies), keeping what the anchor keeps: each cell's first
    2,048 tokens (with their counts)."""
    chunks = []
    for start in range(0, X.shape[0], CHUNK):
        stop = min(start + CHUNK, X.shape[0])
        lo, hi = X.indptr[start], X.indptr[stop]
        part = (X.data[lo:hi], X.indices[lo:hi], X.indptr[start : stop + 1] - lo)
        rows = sp.csr_matrix(part, shape=(stop - start, X.shape[1]), copy=False)
        ranked = rank_order(
            rows, factor[start:stop], token, median, max_len=MAX_LEN, threads=threads
        )
        chunks.append(ranked)
    return chunks


def best_of(repeats: int, fn) -> tuple[dict, object]:
    """The fastest of `repeats` calls: wall and CPU seconds (user + system, all threads)."""
    best, result = None, None
    for _ in range(repeats):
        start, cpu = time.perf_counter(), os.times()
        result = fn()
        after = os.times()
        run = {
            "seconds": time.perf_counter() - start,
            "cpu_seconds": after.user - cpu.user + after.system - cpu.system,
        }
        best = run if best is None or run["seconds"] < best["seconds"] else best
    return best, result


def interleaved(methods: dict, repeats: int, n_cells: int) -> tuple[dict, dict]:
    """Every method once per round, `repeats` rounds; each method's fastest run is kept.
    Round-robin, so a slow spell of this shared machine hits every method alike instead
    of all the repeats of one."""
    rows: dict[str, dict] = {}
    outputs: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in methods.items():
            run, outputs[name] = best_of(1, fn)
            if name not in rows or run["seconds"] < rows[name]["seconds"]:
                rows[name] = {**run, "cells_per_s": n_cells / run["seconds"]}
    for name, row in rows.items():
        print(f"{name:45s} {row['cells_per_s']:>8,.0f} cells/s {row}", flush=True)
    return rows, outputs


@numba.njit(nogil=True)
def _argsort_rows(indptr, keys, out):  # pragma: no cover
    for r in range(indptr.size - 1):
        out[indptr[r] : indptr[r + 1]] = indptr[r] + np.argsort(keys[indptr[r] : indptr[r + 1]])


def sort_strategies(tokenizer: GeneTokenizer) -> dict:
    """CellBench (1,408 cells), one thread, the whole ranking three ways: numpy's scores and
    one np.lexsort of all non-zeros (row, -score, token), or numba's np.argsort per row on
    (~score << 32 | token), or sclabel's kernel."""
    cells = ad.read_h5ad(SHARED / "cellbench_sc_celllines.h5ad")
    token, median = tokenizer.gene_table(cells.var)
    raw, factor = count_space(cells.X, "counts", TARGET_SUM)

    def scores():
        lengths = np.diff(raw.indptr)
        x = np.log1p(raw.data * np.repeat(factor, lengths))
        score = (np.expm1(x.astype(np.float64)) / median[raw.indices]).astype(np.float32)
        keep = token[raw.indices] >= 0
        rows = np.repeat(np.arange(raw.shape[0]), lengths)[keep]
        return score[keep], token[raw.indices][keep], rows

    def lexsort():
        score, tokens, rows = scores()
        return tokens[np.lexsort((tokens, -score, rows))]

    def argsort_rows():
        score, tokens, rows = scores()
        keys = (0xFFFFFFFF - score.view(np.uint32)).astype(np.uint64) << np.uint64(32)
        order = np.empty(keys.size, np.int64)
        indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=raw.shape[0]))]
        _argsort_rows(indptr, keys | tokens.astype(np.uint64), order)
        return tokens[order]

    argsort_rows(), rank_order(raw[:10], factor[:10], token, median)  # compile
    timings, outputs = {}, {}
    for name, fn in [
        ("np.lexsort of all non-zeros", lexsort),
        ("numba np.argsort per row", argsort_rows),
        ("sclabel radix kernel", lambda: rank_order(raw, factor, token, median, threads=1)),
    ]:
        timings[name], outputs[name] = best_of(3, fn)
    ours = outputs.pop("sclabel radix kernel").tokens
    same = all(np.array_equal(ours, tokens) for tokens in outputs.values())
    return {"cells": int(raw.shape[0]), "nnz": int(raw.nnz), "runs": timings, "same": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cellbench")
    parser.add_argument("--copies", type=int, default=15, help="copies (CellBench: 1,408 cells)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per timing; best kept")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "tokenizer")
    parser.add_argument("--note", default="", help="a sentence for the table")
    args = parser.parse_args()
    if not (SHARED / "geneformer_v1").exists():
        sys.exit(f"real data not found in {SHARED}; see ../shared/data/README.md")
    tokenizer = GeneTokenizer.from_geneformer(SHARED / "geneformer_v1")
    spec = DATASETS[args.dataset]
    path = make_file(args.work, args.copies, args.dataset, tokenizer)
    cells = ad.read_h5ad(path)
    n, cores = cells.n_obs, os.cpu_count() or 1
    token, median = tokenizer.gene_table(cells.var)
    raw, factor = count_space(cells.X, "counts", TARGET_SUM)
    methods = {}  # name -> zero-argument function; all run in turn, `repeats` rounds
    for threads in sorted({1, cores}):
        for cut in (False, True):

            def run(out=args.work / f"corpus_{threads}{'_cut' * cut}", threads=threads, cut=cut):
                shutil.rmtree(out, ignore_errors=True)
                return tokenize([path], out, tokenizer, columns=[spec["label"]],
                                threads=threads, truncate=cut, progress=False)  # fmt: skip

            methods[store_name(threads, cut)] = run
        methods[f"sclabel rank_order in memory, {threads} thread(s)"] = lambda t=threads: (
            ours_memory(raw, factor, token, median, threads=t)
        )
    methods["anchor (Geneformer's way), file"] = lambda: anchor_file(path, tokenizer)
    methods["anchor (Geneformer's way), in memory"] = lambda: anchor_memory(raw, token, median)
    loom = make_loom(args.work, path, spec["label"])
    if loom is not None:
        methods[LOOM] = lambda: anchor_loom(loom, tokenizer)
        if has_datasets():
            out = args.work / "geneformer_dataset"
            methods[LOOM_DISK] = lambda: anchor_loom_to_disk(loom, tokenizer, spec["label"], out)
    rank_order(raw[:10], factor[:10], token, median, threads=1)  # compile the kernels
    rows, outputs = interleaved(methods, args.repeats, n)
    ranked = outputs[f"sclabel rank_order in memory, {cores} thread(s)"]
    store, anchor = outputs[store_name(cores, False)], outputs["anchor (Geneformer's way), file"]
    loom_agreement = agreement(outputs[LOOM], anchor) if LOOM in outputs else None
    cut = outputs[store_name(cores, True)]  # the truncated corpus against Geneformer's dataset
    tokens, _, lengths, _ = token_rows(cut, np.arange(cut.n_cells), MAX_LEN)
    cut_cells = [row[:length] for row, length in zip(tokens, lengths, strict=True)]
    disk_agreement = agreement(cut_cells, outputs[LOOM_DISK]) if LOOM_DISK in outputs else None
    ours = [
        chunk.tokens[a : min(b, a + MAX_LEN)]
        for chunk in ranked
        for a, b in zip(chunk.indptr[:-1], chunk.indptr[1:], strict=True)
    ]
    same = sum(int((a == b).sum()) for a, b in zip(ours, anchor, strict=True))
    result = {
        **bc.run_header(__file__),
        "dataset": args.dataset,
        "n_cells": n,
        "nnz_per_cell": raw.nnz / n,
        "store_cells": store.n_cells,
        "note": args.note,
        "methods": rows,
        "anchor_agreement": same / sum(len(a) for a in anchor),
        "loom_vs_anchor_agreement": loom_agreement,
        "truncated_store_vs_geneformer_dataset_agreement": disk_agreement,
        "sort_strategies": sort_strategies(tokenizer),
    }
    spec["result"].write_text(json.dumps(result, indent=1))
    start, end = spec["markers"]
    heading = "Rank-value tokenizer throughput"
    heading += "" if args.dataset == "cellbench" else ": Kang (10x droplets)"
    bc.update_results(markdown(result, start, end), start, end, heading)


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Fraction of token positions where two tokenizations agree."""
    same = sum(int((x == y).sum()) for x, y in zip(a, b, strict=True))
    return same / sum(len(x) for x in b)


def markdown(result: dict, start: str, end: str) -> str:
    rows = result["methods"]
    anchors = {k: v["cells_per_s"] for k, v in rows.items() if k.startswith("anchor")}
    loom = rows.get(LOOM, {}).get("cells_per_s")
    disk = rows.get(LOOM_DISK, {}).get("cells_per_s")
    sort = result["sort_strategies"]
    lines = [
        f"Machine: {result['machine']}. Date: {result['date']}. Command: `{result['command']}`.",
        f"Data: {DATASETS[result.get('dataset', 'cellbench')]['describe']} repeated to "
        f"{result['n_cells']:,} cells "
        f"({result['nnz_per_cell']:,.0f} non-zeros per cell), Geneformer V1 vocabulary; the "
        f"fastest of repeated runs, files in the page cache. {result.get('note', '')}",
        "",
        "| method | cells/s | x sparse anchor | x Geneformer's tokenizer (loom) "
        "| x Geneformer end to end (loom -> disk) | CPU s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        kind = "file" if ("store" in name or "file" in name) else "in memory"
        ratio = row["cells_per_s"] / anchors.get(f"anchor (Geneformer's way), {kind}", np.nan)
        to_loom = "" if loom is None else f"{row['cells_per_s'] / loom:.1f}"
        to_disk = "" if disk is None else f"{row['cells_per_s'] / disk:.1f}"
        lines.append(
            f"| {name} | {row['cells_per_s']:,.0f} | {ratio:.1f} | {to_loom} | {to_disk} | "
            f"{row['cpu_seconds']:.1f} |"
        )
    runs = ", ".join(f"{k} {v['seconds']:.2f} s" for k, v in sort["runs"].items())
    lines += [
        "",
        f"The anchor's tokens (its first 2,048 per cell) equal sclabel's at "
        f"{result['anchor_agreement']:.4%} of positions (the others are ties or near-ties: the "
        "anchor breaks ties arbitrarily and ranks float64 count ratios, sclabel the loader's "
        "float32 values)."
        + (
            ""
            if result.get("loom_vs_anchor_agreement") is None
            else f" Geneformer's tokenizer (loom) and the sparse anchor agree at "
            f"{result['loom_vs_anchor_agreement']:.4%} of positions."
        )
        + (
            ""
            if result.get("truncated_store_vs_geneformer_dataset_agreement") is None
            else " The truncated store's tokens equal those of the dataset Geneformer's "
            "tokenizer saves at "
            f"{result['truncated_store_vs_geneformer_dataset_agreement']:.4%} of positions."
        ),
        f"Ranking alone on CellBench ({sort['cells']:,} cells, {sort['nnz']:,} non-zeros, one "
        f"thread): {runs} (same tokens: {sort['same']}).",
    ]
    return start + "\n" + "\n".join(lines) + "\n" + end


if __name__ == "__main__":
    main()
