# Exploratory (session 20): how to estimate the weights of weighted conformal sets
# (inference/conformal.py), offline on the probabilities notes/exploratory/calibration_capture.py
# saved to /tmp/calib (hard-coded; 8 splits x 3 families x 5 seeds, tempered here by the shipped
# T). Compares split conformal, the shipped weighted rule with other bin counts, and a
# logistic-regression density ratio on logit-confidence (and its square). Not part of the suite.
# Run: .venv/bin/python notes/exploratory/conformal_weighting.py
import collections
import glob
import re

import numpy as np
from sklearn.linear_model import LogisticRegression

from sclabel.inference import conformal
from sclabel.inference.calibration import temper

A = 0.9


def runs():
    for f in sorted(glob.glob("/tmp/calib/*.npz")):
        split, fam = re.match(r".*/(.*)_(linear|celltypist|mlp)_\d\.npz", f).groups()
        z = np.load(f)
        t = float(z["T"])
        vp, tp = temper(z["val_p"], t), temper(z["test_p"], t)
        yield split, fam, vp, z["val_y"], tp, z["test_y"]


def split_sets(vs, vc, tp):
    return tp >= conformal.split_rule(np.sort(vs), A).thresholds[0]


def binned(per_bin, most):
    def sets(vs, vc, tp):
        conformal.PER_BIN, conformal.BINS = per_bin, most
        rule = conformal.weighted_rule(vs, vc, tp.max(1), A)
        return tp >= rule.threshold(tp.max(1))[:, None]

    return sets


def logistic(vs, vc, tp):
    zv, zt = conformal._logit(vc), conformal._logit(tp.max(1))
    x = np.r_[zv, zt]
    model = LogisticRegression(class_weight="balanced").fit(
        np.c_[x, x**2], np.r_[np.zeros(zv.size), np.ones(zt.size)]
    )
    ratio = lambda z: np.exp(model.decision_function(np.c_[z, z**2]))  # noqa: E731
    wv, wt = ratio(zv), ratio(zt)
    order = np.argsort(vs)
    cumulative = np.cumsum(wv[order])
    rank = np.searchsorted(cumulative, A * (cumulative[-1] + wt))
    s = vs[order]
    thr = np.where(rank >= s.size, 0.0, 1 - s[np.minimum(rank, s.size - 1)])
    return tp >= thr[:, None]


RULES = {
    "split": split_sets,
    "10 bins": binned(1, 10),
    "n/10 bins": binned(10, 10),
    "n/15 bins (shipped)": binned(15, 10),
    "n/20 bins": binned(20, 10),
    "logistic": logistic,
}
data = list(runs())
for name, rule in RULES.items():
    cover = collections.defaultdict(list)
    for split, fam, vp, vy, tp, ty in data:
        vs = 1 - vp[np.arange(vy.size), vy]
        known = ty >= 0
        s = rule(vs, vp.max(1), tp)
        cover[(split, fam)].append(s[known, ty[known]].mean())
    means = np.array([np.mean(v) for v in cover.values()])
    every = np.concatenate([np.asarray(v) for v in cover.values()])
    p1 = [np.mean(cover[("cellbench_lobo_sc_celseq2_5cl_p1", f)]) for f in ("linear", "celltypist", "mlp")]
    print(
        f"{name:20s} split x family means {means.min():.3f}-{means.max():.3f}, "
        f"{int(np.sum(np.abs(means - A) > 0.03))} of {means.size} outside 3 points; "
        f"runs below 0.87: {int(np.sum(every < 0.87))} of {every.size}; "
        f"p1 (linear, celltypist, mlp) {', '.join(f'{c:.3f}' for c in p1)}"
    )
