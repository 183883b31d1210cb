#!/bin/sh
# Exploratory (session 20): `sclabel predict --report` in a fresh process, two source trees
# alternating (the report's UMAP neighbour graph: scanpy/umap's numba vs voting.neighbour_graph).
# Usage: sh notes/exploratory/report_speed.sh BEFORE/src AFTER/src   (writes into ./report-speed)
set -e
PY=${PY:-$(pwd)/.venv/bin/python}
mkdir -p report-speed && cd report-speed
$PY -c "
import sclabel
sclabel.datasets.synthetic(3000, 500, 6, 8, seed=1).write_h5ad('train.h5ad')
sclabel.datasets.synthetic(3000, 500, 6, 8, seed=1, cell_seed=4).write_h5ad('q.h5ad')
m = sclabel.train(sclabel.read('train.h5ad'), label_key='cell_type', model='mlp', max_epochs=3, progress=False)
m.save('m')
" 2>/dev/null
for r in 1 2 3; do
  for src in "$1" "$2"; do
    rm -rf out.csv r
    s=$(date +%s.%N)
    PYTHONPATH=$src $PY -m sclabel.cli --quiet predict q.h5ad --model m --out out.csv --report r >/dev/null 2>&1
    echo "round $r $src $(echo "$(date +%s.%N) - $s" | bc) s"
  done
done
