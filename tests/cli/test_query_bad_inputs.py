"""The query-side options' bad inputs on the command line: one `error:` line, exit 2, and
no output file or report folder left behind."""

import json
import re
import shutil

import pytest

import sclabel
from conftest import run


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """cells.h5ad, model `a` with a reference index, model `b` holding a's index."""
    base = tmp_path_factory.mktemp("query-bad")
    cells = sclabel.datasets.synthetic(300, 60, 3, 4, seed=0)
    cells.write_h5ad(base / "cells.h5ad")
    for name, seed in (("a", 0), ("b", 1)):
        model = sclabel.train(cells, label_key="cell_type", split_by="donor", model="mlp",
                              max_epochs=2, seed=seed, progress=False)  # fmt: skip
        model.save(base / name)
    assert run("--quiet", "reference", base / "cells.h5ad", "--model", base / "a").returncode == 0
    # b gets a's index, as a user copying reference.safetensors between folders would
    a, b = (json.loads((base / m / "config.json").read_text()) for m in "ab")
    shutil.copy(base / "a" / "reference.safetensors", base / "b" / "reference.safetensors")
    b["reference"] = a["reference"]
    b["extra_files"]["reference.safetensors"] = a["extra_files"]["reference.safetensors"]
    (base / "b" / "config.json").write_text(json.dumps(b))
    return base


CASES = [
    ("cluster key missing", ["--model", "a", "--cluster-key", "leiden"],
     r"cluster key 'leiden' is not an obs column; available: \['cell_type', 'donor'"),
    ("index of another model, predict", ["--model", "map:b"],
     "built with another model .*sclabel reference"),
    ("ontology levels without CL classes", ["--model", "a", "--levels", "2"],
     r"3 of the model's 3 classes have no Cell Ontology term: \['type_0'"),
    ("ontology threshold without CL classes", ["--model", "a", "--ontology-threshold", "0.8"],
     "no Cell Ontology term"),
    ("coverage above 1", ["--model", "a", "--coverage", "1.5"], "coverage must be between 0 and 1"),
    ("coverage 0", ["--model", "a", "--coverage", "0"], "coverage must be between 0 and 1"),
    ("report folder is a file", ["--model", "a", "--report", "cells.h5ad"],
     "is a file; choose a folder name"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "extra", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_predict_refuses(folder, name, extra, pattern):
    before = sorted(p.name for p in folder.iterdir())
    paths = {"a": folder / "a", "map:b": f"map:{folder / 'b'}", "cells.h5ad": folder / "cells.h5ad"}
    args = [paths.get(a, a) for a in extra]
    result = run("--quiet", "predict", folder / "cells.h5ad", *args, "--out", folder / "p.csv")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(pattern, errors[0]), errors[0]
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written


def test_map_refuses_an_index_of_another_model(folder):
    result = run("--quiet", "map", folder / "cells.h5ad", "--model", folder / "b",
                 "--out", folder / "m.csv")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("error: ") == 1 and "built with another model" in result.stderr
    assert not (folder / "m.csv").exists()


def test_map_refuses_an_index_built_on_another_gene_set(folder, tmp_path):
    """A model trained on the same cells but fewer genes, holding a's index: refused before
    any cell is mapped (the index's digest covers the genes it was built on)."""
    cells = sclabel.read(folder / "cells.h5ad")
    fewer = cells[:, cells.var_names[:-10]].copy()
    model = sclabel.train(fewer, label_key="cell_type", split_by="donor", model="mlp",
                          max_epochs=2, progress=False)  # fmt: skip
    model.save(tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    a = json.loads((folder / "a" / "config.json").read_text())
    shutil.copy(folder / "a" / "reference.safetensors", tmp_path / "c" / "reference.safetensors")
    config["reference"] = a["reference"]
    config["extra_files"]["reference.safetensors"] = a["extra_files"]["reference.safetensors"]
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    result = run("--quiet", "map", folder / "cells.h5ad", "--model", tmp_path / "c",
                 "--out", tmp_path / "m.csv")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("error: ") == 1 and "built with another model" in result.stderr
    assert not (tmp_path / "m.csv").exists()


def test_majority_voting_refuses_a_graph_of_other_cells(folder, tmp_path):
    """An .h5ad whose obsp['connectivities'] is not cells x cells (written past anndata's
    check, as another tool might): one line naming the graph, exit 2, nothing written."""
    import h5py
    import scipy.sparse as sp
    from anndata.io import write_elem

    shutil.copy(folder / "cells.h5ad", tmp_path / "q.h5ad")
    with h5py.File(tmp_path / "q.h5ad", "a") as handle:
        write_elem(handle, "obsp/connectivities", sp.identity(50, format="csr"))
    for backed in ([], ["--backed"]):
        result = run("--quiet", "predict", tmp_path / "q.h5ad", "--model", folder / "a",
                     "--majority-voting", *backed, "--out", tmp_path / "p.csv")  # fmt: skip
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "connectivities" in errors[0] and "(50, 50)" in errors[0], errors[0]
        assert errors[0].endswith("belongs to other cells or genes; drop or recompute it")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["q.h5ad"]
