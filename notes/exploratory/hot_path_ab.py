# Exploratory (session 20): one hot_paths.py step, A/B in N alternating rounds, best and median.
# Run: .venv/bin/python notes/exploratory/hot_path_ab.py predict_memory BEFORE/src [rounds]
import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "benchmarks"))
import hot_paths as hp
from pathlib import Path
work = Path("/tmp/sclabel-hot-paths")
trees = {"before": Path(sys.argv[2]), "after": Path(__file__).resolve().parents[2] / "src"}
res = {k: [] for k in trees}
for r in range(int(sys.argv[3]) if len(sys.argv) > 3 else 6):
    for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
        res[name].append(hp.measure(trees[name], work, sys.argv[1])["seconds"])
        print(r, name, round(res[name][-1], 2), flush=True)
print({k: (round(min(v), 2), round(sorted(v)[len(v)//2], 2)) for k, v in res.items()})
