# Exploratory (session 18): compares temperature rules on probabilities saved by
# calibration_capture.py to /tmp/calib (hard-coded paths). Not part of the suite;
# benchmarks/calibration.py is the maintained benchmark.
import glob, math, sys, numpy as np
from scipy.optimize import minimize_scalar
sys.path.insert(0, "/work/main/src")
from sclabel.evaluation.calibration import expected_calibration_error as ece
from sclabel.inference.calibration import temper, fit_temperature

def nll_fn(p, y):
    logp = np.log(np.clip(p, 1e-30, None)).astype(np.float64); logp -= logp.max(1, keepdims=True)
    rows = np.arange(y.size)
    def nll(lt):
        z = logp / math.exp(lt); top = z.max(1, keepdims=True)
        return float((top[:, 0] + np.log(np.exp(z - top).sum(1)) - z[rows, y]).sum())
    return nll

def fit_map(p, y, sigma):
    f = nll_fn(p, y)
    r = minimize_scalar(lambda lt: f(lt) + lt * lt / (2 * sigma * sigma), bounds=(math.log(0.05), math.log(20)), method="bounded")
    return math.exp(r.x)

def current(p, y):
    err = int((p.argmax(1) != y).sum())
    return fit_temperature(p, y) if err >= 5 else 1.0

def cv_gate(fitter, k=5, seed=0):
    def g(p, y):
        rng = np.random.default_rng(seed); idx = rng.permutation(y.size); folds = np.array_split(idx, k)
        d = 0.0
        for f in folds:
            tr = np.setdiff1d(idx, f)
            T = fitter(p[tr], y[tr])
            d += nll_fn(p[f], y[f])(math.log(T)) - nll_fn(p[f], y[f])(0.0)
        return fitter(p, y) if d < 0 else 1.0
    return g

def lrt(fitter, crit=3.84):
    def g(p, y):
        T = fitter(p, y); f = nll_fn(p, y)
        return T if 2 * (f(0.0) - f(math.log(T))) > crit else 1.0
    return g

def guard(fitter, k):
    def g(p, y):
        T = fitter(p, y)
        return 1.0 if (T < 1 and int((p.argmax(1) != y).sum()) < k) else T
    return g

methods = {
  "cvg_guard5": guard(cv_gate(lambda p, y: fit_map(p, y, 0.5)), 5),
  "cvg_guard1": guard(cv_gate(lambda p, y: fit_map(p, y, 0.5)), 1),
  "lrt_mle": lrt(lambda p, y: fit_temperature(p, y)),
  "lrt_map0.5": lrt(lambda p, y: fit_map(p, y, 0.5)),
  "lrt_map0.5_99": lrt(lambda p, y: fit_map(p, y, 0.5), 6.63),
  "current": current,
  "mle": lambda p, y: fit_temperature(p, y),
  "map0.5": lambda p, y: fit_map(p, y, 0.5),
  "map0.25": lambda p, y: fit_map(p, y, 0.25),
  "map1": lambda p, y: fit_map(p, y, 1.0),
  "cvgate_mle": cv_gate(lambda p, y: fit_temperature(p, y)),
  "cvgate_map0.5": cv_gate(lambda p, y: fit_map(p, y, 0.5)),
}
seeds = sys.argv[1].split(",") if len(sys.argv) > 1 else ["0"]
rows = []
for f in sorted(glob.glob("/tmp/calib/*.npz")):
    name = f.split("/")[-1][:-4]; split, fam, seed = name.rsplit("_", 2)
    if seed not in seeds: continue
    d = np.load(f); vp, vy, tp, ty = d["val_p"], d["val_y"], d["test_p"], d["test_y"]
    c = tp.argmax(1) == ty
    before = ece(tp.max(1), c)
    row = {"split": split, "fam": fam, "seed": seed, "before": before}
    for m, fn in methods.items():
        T = fn(vp, vy); q = temper(tp, T)
        row[m] = ece(q.max(1), q.argmax(1) == ty); row[m + "_T"] = T
    rows.append(row)
print(f"{'split':34s} {'fam':10s} s  before " + " ".join(f"{m:>13s}" for m in methods))
for r in rows:
    print(f"{r['split'][:34]:34s} {r['fam']:10s} {r['seed']} {r['before']:.3f}  " + " ".join(f"{r[m]:.3f}({r[m+'_T']:4.2f})" for m in methods))
for m in methods:
    better = sum(r[m] < r["before"] - 1e-12 for r in rows); worse = sum(r[m] > r["before"] + 1e-12 for r in rows)
    print(f"{m:14s} better {better} equal {len(rows)-better-worse} worse {worse}  mean ECE {np.mean([r[m] for r in rows]):.4f} (before {np.mean([r['before'] for r in rows]):.4f})")
import collections
agg = collections.defaultdict(list)
for r in rows: agg[(r["split"], r["fam"])].append(r)
print("per split x family, mean over seeds")
for m in ["current", "cvgate_map0.5", "cvg_guard5", "cvg_guard1", "lrt_map0.5", "lrt_map0.5_99", "map0.5"]:
    b = w = e = 0; worst = []
    for k, rs in agg.items():
        before = np.mean([r["before"] for r in rs]); after = np.mean([r[m] for r in rs])
        if after < before - 1e-9: b += 1
        elif after > before + 1e-9: w += 1; worst.append((k, round(before, 4), round(after, 4)))
        else: e += 1
    print(m, "better", b, "equal", e, "worse", w, worst)
print()
ms = ["current", "cvgate_map0.5", "cvg_guard5", "cvg_guard1", "lrt_map0.5", "lrt_map0.5_99"]
print(f"{'split':34s} {'fam':10s} before " + " ".join(f"{m:>14s}" for m in ms))
for k, rs in sorted(agg.items()):
    print(f"{k[0][:34]:34s} {k[1]:10s} {np.mean([r['before'] for r in rs]):.4f} " + " ".join(f"{np.mean([r[m] for r in rs]):14.4f}" for m in ms))
