# Exploratory (session 19): majority voting only for cells below a confidence, vs per-cell
# labels and plain voting, on four shared splits (seed 0). Not part of the suite; numbers in
# benchmarks/RESULTS.md ("Query-side features: the rerun"). Run from the repo root.
import sclabel, numpy as np, anndata as ad, sys
sys.path.insert(0,"benchmarks"); import compare_celltypist as cc
from sklearn.metrics import f1_score
for name in ["mouse_bladder","pbmc68k_reduced","cellbench_cross_protocol","cellbench_lobo_sc_celseq2_5cl_p1"]:
    spec=[s for s in cc.split_specs(quick=False, scale_cells=0) if s["name"]==name][0]
    f=cc.prepare_split(spec); tr,te=ad.read_h5ad(f["train"]),ad.read_h5ad(f["test"])
    truth=te.obs["label"].astype(str).to_numpy()
    for fam in ["mlp","linear"]:
        m=sclabel.train(tr,label_key="label",model=fam,progress=False)
        p=m.predict(te,progress=False); v=p.majority_vote(te)
        F=lambda y: f1_score(truth,y,average="macro",zero_division=0)
        out=[f"cell {F(p.labels):.3f}", f"vote {F(v.labels):.3f}"]
        for t in [m.calibration.unknown_threshold, 0.9, 0.7, 0.5]:
            if t is None: continue
            mix=np.where(p.confidence>=t, p.labels, v.labels)
            out.append(f"keep>={t:.2f} {F(mix):.3f} ({(p.confidence<t).mean():.0%} voted)")
        print(name[:20], fam, " | ".join(out), flush=True)
