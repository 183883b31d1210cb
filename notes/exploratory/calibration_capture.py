# Exploratory (session 18): saves validation/test probabilities per split x family x seed
# to /tmp/calib for calibration_rules.py. Usage: python calibration_capture.py 0,1,2,3,4
# Session 21: `--by-batch` holds the validation cells out by plate (split_by="batch") on the
# CellBench splits only, to /tmp/calib_g.
"""Capture validation and test probabilities (uncalibrated) per split x family x seed."""
import sys, logging, numpy as np
sys.path.insert(0, "/work/main/benchmarks")
import compare_celltypist as cc
import anndata as ad
import sclabel
from sclabel.inference import calibration as calmod

captured = {}
orig = calmod.Calibration.fit.__func__
def spy(cls, probabilities, y, **kw):
    captured["val_p"], captured["val_y"] = probabilities.copy(), y.copy()
    return orig(cls, probabilities, y, **kw)
calmod.Calibration.fit = classmethod(spy)
import sclabel.training.train as tr
tr.Calibration = calmod.Calibration
logging.getLogger("sclabel").setLevel(logging.WARNING)
by_batch = "--by-batch" in sys.argv
args = [a for a in sys.argv[1:] if a != "--by-batch"]
seeds = [int(s) for s in args[0].split(",")]
only = args[1:] or None
folder = "/tmp/calib_g" if by_batch else "/tmp/calib"
extra = {"split_by": "batch"} if by_batch else {}
for spec in cc.split_specs(quick=False, scale_cells=0):
    if spec["name"] == "cellbench_lobo_sc_dropseq" or (only and spec["name"] not in only):
        continue
    if by_batch and not spec["name"].startswith("cellbench"):
        continue
    files = cc.prepare_split(spec)
    train, test = ad.read_h5ad(files["train"]), ad.read_h5ad(files["test"])
    truth = test.obs["label"].astype(str).to_numpy()
    for seed in seeds:
        for family in ("linear", "celltypist", "mlp"):
            model = sclabel.train(train, label_key="label", model=family, seed=seed, progress=False,
                                  **extra)
            raw = sclabel.predict(model, test, calibrated=False, progress=False).probabilities
            classes = np.asarray(model.classes, dtype=object)
            codes = np.array([list(classes).index(t) if t in classes else -1 for t in truth])
            np.savez(f"{folder}/{spec['name']}_{family}_{seed}.npz", val_p=captured["val_p"],
                     val_y=captured["val_y"], test_p=raw, test_y=codes, T=model.calibration.temperature)
            print(spec["name"], family, seed, "val", captured["val_y"].size, "errors",
                  int((captured["val_p"].argmax(1) != captured["val_y"]).sum()),
                  "test", codes.size, "T", round(model.calibration.temperature, 3), flush=True)
