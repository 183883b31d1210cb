"""CellTypist's own labels for the Kang PBMCs with the shipped AIFI L3 model: the reference
for tests/test_celltypist_import.py. Run with CellTypist's environment:

    .venv-celltypist/bin/python benchmarks/celltypist_reference_labels.py

Writes tests/fixtures/celltypist_aifi_l3_kang_labels.csv (cell, label) and
tests/fixtures/celltypist_aifi_l3_kang_majority_voting.csv (cell, label, over_clustering,
majority_voting: CellTypist's majority voting over its own over-clustering).
"""

import time
from pathlib import Path

import celltypist
import scanpy as sc

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MODEL = DATA / "celltypist_models" / "ref_pbmc_clean_celltypist_model_AIFI_L3_2024-04-19.pkl"

adata = sc.read_h5ad(DATA / "kang_pbmc_stim.h5ad")
sc.pp.normalize_total(adata, target_sum=1e4)
sc.pp.log1p(adata)
model = celltypist.models.Model.load(str(MODEL))
start = time.perf_counter()
result = celltypist.annotate(adata, model=model, majority_voting=False)
seconds = time.perf_counter() - start
labels = result.predicted_labels["predicted_labels"].astype(str)
out = ROOT / "tests" / "fixtures" / "celltypist_aifi_l3_kang_labels.csv"
labels.rename("label").to_csv(out, index_label="cell")
print(f"{len(labels)} cells annotated in {seconds:.2f} s -> {out}")

# majority voting: CellTypist's own over-clustering (it builds the neighbour graph and runs
# Leiden itself) and the majority label of each cluster, for tests/inference/test_voting.py
start = time.perf_counter()
voted = celltypist.annotate(adata, model=model, majority_voting=True)
seconds = time.perf_counter() - start
table = voted.predicted_labels[["predicted_labels", "over_clustering", "majority_voting"]]
table = table.astype(str).rename(columns={"predicted_labels": "label"})
out = ROOT / "tests" / "fixtures" / "celltypist_aifi_l3_kang_majority_voting.csv"
table.to_csv(out, index_label="cell")
n_clusters = table["over_clustering"].nunique()
print(f"majority voting over {n_clusters} clusters in {seconds:.2f} s -> {out}")
