"""Which approximate-nearest-neighbour library sclabel uses: hnswlib, faiss or pynndescent.

Majority voting builds a k-nearest-neighbour graph of the query, and reference mapping looks
every query cell up in an index of the reference; both at 1M+ cells on a laptop. Each
library builds an index of N reference points (50 dimensions, a mixture of 40 cell types
with sub-structure, like a PCA of cells) and answers k=15 queries for Q other points, in a
fresh process each (for an honest peak RSS). Recall@15 is measured against exact neighbours
of 2,000 queries. Numba's compile time is part of pynndescent's first build in every new
process, so it is reported apart.

Usage: python benchmarks/ann_choice.py [--n 1000000] [--queries 200000]
       [--libraries hnswlib,faiss-hnsw]
Writes benchmarks/results/ann_choice.json and its table in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "ann_choice.json"
MD_START, MD_END = "<!-- ann-choice:start -->", "<!-- ann-choice:end -->"
LIBRARIES = ("hnswlib", "faiss-hnsw", "pynndescent")

WORKER = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np
sys.path.insert(0, sys.argv[5])
import _bench_common as bc
library, n, q, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
centers = rng.normal(size=(40, 50)) * 4
def points(m, seed):
    r = np.random.default_rng(seed)
    which = r.integers(0, 40, m)
    return (centers[which] + r.normal(size=(m, 50))).astype(np.float32)
X, Q = points(n, 1), points(q, 2)
base = bc.rss_mib()
bc.reset_peak()
out = {"library": library}
t = time.perf_counter()
if library == "hnswlib":
    import hnswlib
    index = hnswlib.Index(space="l2", dim=50)
    index.init_index(max_elements=n, ef_construction=100, M=16, random_seed=0)
    index.add_items(X, num_threads=2)
    index.set_ef(50)
    out["build_s"] = time.perf_counter() - t; t = time.perf_counter()
    found, _ = index.knn_query(Q, k=k, num_threads=2)
elif library == "faiss-hnsw":
    import faiss
    faiss.omp_set_num_threads(2)
    index = faiss.IndexHNSWFlat(50, 16)
    index.hnsw.efConstruction = 100
    index.add(X)
    index.hnsw.efSearch = 50
    out["build_s"] = time.perf_counter() - t; t = time.perf_counter()
    _, found = index.search(Q, k)
else:
    from pynndescent import NNDescent
    small = NNDescent(points(2000, 3), n_neighbors=k, random_state=0)  # compile first
    small.query(points(100, 4), k=k)
    out["compile_s"] = time.perf_counter() - t; t = time.perf_counter()
    index = NNDescent(X, n_neighbors=30, random_state=0, low_memory=True, n_jobs=-1)
    index.prepare()
    out["build_s"] = time.perf_counter() - t; t = time.perf_counter()
    found, _ = index.query(Q, k=k)
out["query_s"] = time.perf_counter() - t
out["peak_rss_mib"] = max(bc.hwm_mib(), bc.rss_mib()) - base
sample = np.arange(0, q, max(1, q // 2000))[:2000]
exact = []
for part in np.array_split(sample, 20):
    d = ((Q[part, None, :] - X[None, :, :]) ** 2).sum(-1) if n <= 20000 else None
    if d is None:
        d = (Q[part] ** 2).sum(1)[:, None] - 2 * Q[part] @ X.T + (X ** 2).sum(1)[None, :]
    exact.append(np.argsort(d, axis=1)[:, :k])
exact = np.concatenate(exact)
out["recall"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found[sample], exact)]))
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--k", type=int, default=15)
    parser.add_argument("--libraries", default=",".join(LIBRARIES), help="comma-separated")
    args = parser.parse_args()
    rows = []
    for library in args.libraries.split(","):
        command = [sys.executable, "-c", WORKER, library, str(args.n), str(args.queries),
                   str(args.k), str(HERE)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            rows.append({"library": library, "error": result.stderr.strip().splitlines()[-1]})
        else:
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    header = bc.run_header(__file__)
    bc.write_json(RESULT, {**header, "n": args.n, "queries": args.queries, "rows": rows})
    lines = [
        MD_START,
        f"Machine: {header['machine']}. Date: {header['date']}. Command: `{header['command']}`.",
        f"{args.n:,} reference points and {args.queries:,} queries, 50 dimensions, k={args.k}; "
        "recall@k against exact neighbours of 2,000 queries; each library in a fresh process.",
        "",
        "| library | build s | query s | compile s | peak RSS MiB | recall@k |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['library']} | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['library']} | {r['build_s']:.1f} | {r['query_s']:.1f} | "
            f"{r.get('compile_s', 0):.1f} | {r['peak_rss_mib']:,.0f} | {r['recall']:.3f} |"
        )
    lines.append(MD_END)
    bc.update_results("\n".join(lines), MD_START, MD_END, "Nearest neighbours: which library")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
