# Exploratory (session 21): the ECE-by-chance tally of benchmarks/calibration.py (ece_lines)
# recomputed on probabilities saved by calibration_capture.py (seeds 0-9 in /tmp/calib),
# plus, per temperature rule, how often it lowers ECE where the test cells show
# miscalibration beyond chance and how far it rises where they do not.
# Usage: python calibration_chance.py 0,1,2,3,4 [/tmp/calib]
import glob, sys, numpy as np
sys.path.insert(0, "/work/main/src"); sys.path.insert(0, "/work/main/benchmarks")
from sclabel.evaluation.calibration import ece_by_chance, expected_calibration_error as ece
from sclabel.inference.calibration import temper, fit_temperature
import calibration as cal
seeds = [int(s) for s in sys.argv[1].split(",")]
root = sys.argv[2] if len(sys.argv) > 2 else "/tmp/calib"
splits = {}
for f in sorted(glob.glob(root + "/*.npz")):
    split, family, seed = f.split("/")[-1][:-4].rsplit("_", 2)
    if int(seed) not in seeds: continue
    d = np.load(f); tp, ty = d["test_p"], d["test_y"]
    out = {}
    for name, t in cal.temperatures(d["val_p"], d["val_y"], float(d["T"])).items():
        p = temper(tp, t); out[name] = {"T": t, "ece": ece(p.max(1), p.argmax(1) == ty)}
    ch = ece_by_chance(tp.max(1), out["before"]["ece"], never_right=ty < 0, seed=int(seed))
    out["chance"] = {"draws": list(ch["draws"])}
    runs = splits.setdefault(split, {})
    runs.setdefault(int(seed), {"families": {}})["families"][family] = out
report = {"date": "x", "command": "offline", "wall_minutes": 0, "machine": "m", "seeds": seeds,
          "splits": [{"name": k, "runs": list(v.values())} for k, v in splits.items()]}
for split in report["splits"]:
    cal.summarize_chance(split)
if True:  # the generated table
    print("\n".join(cal.ece_lines(report)))
# per method: within-chance above count and worst z
for m in cal.METHODS[1:]:
    above, worst, below_b, nb = 0, 0.0, 0, 0  # worst: the largest rise in ECE
    for split in report["splits"]:
        for fam in cal.FAMILIES:
            fams = [r["families"][fam] for r in split["runs"]]
            b = np.mean([f["before"]["ece"] for f in fams]); a = np.mean([f[m]["ece"] for f in fams])
            p = split["chance"][fam]["p"]
            if p < 0.05:
                nb += 1; below_b += a < b
            elif a > b:
                above += 1; worst = max(worst, a - b)
    print(f"{m:12s} beyond-chance below {below_b}/{nb}; within-chance above {above}, worst +{worst:.4f}")
