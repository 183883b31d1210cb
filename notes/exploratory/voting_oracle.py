# Exploratory (session 19): how pure are the clusters majority voting votes over? A vote by the
# TRUE labels over our Leiden clusters vs scanpy's standard pipeline (HVG, scale, PCA), on three
# shared splits. Not part of the suite. Run from the repo root: .venv/bin/python notes/exploratory/voting_oracle.py
import sclabel, numpy as np, pandas as pd, anndata as ad, sys, scanpy as sc
sys.path.insert(0,"benchmarks")
import compare_celltypist as cc
from sklearn.metrics import f1_score
from sclabel.inference.voting import vote, query_pca, neighbour_graph, leiden
for name in ["mouse_bladder","pbmc68k_reduced","kang"]:
    spec=[s for s in cc.split_specs(quick=False, scale_cells=0) if s["name"]==name][0]
    files=cc.prepare_split(spec)
    te=ad.read_h5ad(files["test"])
    truth=te.obs["label"].astype(str).to_numpy()
    f=lambda y: f1_score(truth,y,average="macro",zero_division=0)
    def rep(cl, tag):
        o=vote(truth, cl); print(name, tag, "n_clusters", len(set(cl)), "oracle acc %.3f f1 %.3f"%((o.labels==truth).mean(), f(o.labels)))
    print(name, "X max", te.X.max(), "obsm", list(te.obsm))
    r=query_pca(te); rep(leiden(neighbour_graph(r),5), "ours")
    a=te.copy()
    if a.X.max()>50: sc.pp.normalize_total(a, target_sum=1e4); sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=2000); b=a[:, a.var.highly_variable].copy()
    sc.pp.scale(b, max_value=10); sc.tl.pca(b, n_comps=50)
    rep(leiden(neighbour_graph(b.obsm["X_pca"]),5), "hvg2000+scale+pca50")
    c=a[:, a.var.highly_variable].copy(); sc.tl.pca(c, n_comps=50)
    rep(leiden(neighbour_graph(c.obsm["X_pca"]),5), "hvg2000+pca50 (no scale)")
    d=a.copy(); sc.pp.scale(d, max_value=10); sc.tl.pca(d, n_comps=50)
    rep(leiden(neighbour_graph(d.obsm["X_pca"]),5), "all genes+scale+pca50")
