# Exploratory (session 20): would a temperature fitted on validation cells re-weighted to the
# test cells' confidences (the weights of weighted conformal sets) lower test ECE on every split?
# Offline on /tmp/calib (notes/exploratory/calibration_capture.py), probabilities tempered by
# the shipped T first; "always": the weighted MAP T applied; "with the test": only where the
# likelihood ratio passes the 1% level. Not part of the suite.
# Run: .venv/bin/python notes/exploratory/weighted_temperature.py
import collections
import glob
import math
import re

import numpy as np
from scipy.optimize import minimize_scalar

from sclabel.evaluation.calibration import expected_calibration_error as ece
from sclabel.inference.calibration import LR_CRITICAL, PRIOR_SD, temper
from sclabel.inference.conformal import _logit


def weights(vc, tc, bins=10):
    zv, zt = _logit(vc), _logit(tc)
    edges = np.unique(np.quantile(np.r_[zv, zt], np.linspace(0, 1, bins + 1)[1:-1]))
    bv, bt = np.searchsorted(edges, zv, side="right"), np.searchsorted(edges, zt, side="right")
    hv = np.bincount(bv, minlength=edges.size + 1) + 0.5
    ht = np.bincount(bt, minlength=edges.size + 1) + 0.5
    w = ((ht / ht.sum()) / (hv / hv.sum()))[bv]
    return w * w.size / w.sum()


def weighted_fit(p, y, w):
    logp = np.log(np.clip(p, 1e-30, None))
    logp -= logp.max(1, keepdims=True)
    rows = np.arange(y.size)

    def nll(lt):
        z = logp / math.exp(lt)
        top = z.max(1, keepdims=True)
        return float((w * (top[:, 0] + np.log(np.exp(z - top).sum(1)) - z[rows, y])).sum())

    best = minimize_scalar(lambda lt: nll(lt) + lt * lt / (2 * PRIOR_SD**2),
                           bounds=(math.log(0.05), math.log(20)), method="bounded")  # fmt: skip
    return math.exp(best.x), 2 * (nll(0) - nll(best.x))


res = collections.defaultdict(lambda: collections.defaultdict(list))
for f in sorted(glob.glob("/tmp/calib/*.npz")):
    split, fam = re.match(r".*/(.*)_(linear|celltypist|mlp)_\d\.npz", f).groups()
    z = np.load(f)
    vp, tp = temper(z["val_p"], float(z["T"])), temper(z["test_p"], float(z["T"]))
    vy, ty = z["val_y"], z["test_y"]
    score = lambda p: ece(p.max(1), p.argmax(1) == ty)  # noqa: E731
    t, ratio = weighted_fit(vp, vy, weights(vp.max(1), tp.max(1)))
    res[(split, fam)]["shipped"].append(score(tp))
    res[(split, fam)]["always"].append(score(temper(tp, t)))
    res[(split, fam)]["with the test"].append(score(temper(tp, t)) if ratio > LR_CRITICAL else score(tp))
for rule in ("always", "with the test"):
    b = np.array([np.mean(v["shipped"]) for v in res.values()])
    a = np.array([np.mean(v[rule]) for v in res.values()])
    print(f"{rule}: mean ECE {b.mean():.4f} -> {a.mean():.4f}; split x family below "
          f"{int((a < b - 1e-12).sum())}, equal {int((abs(a - b) <= 1e-12).sum())}, "
          f"above {int((a > b + 1e-12).sum())} of {b.size}")
