"""`sclabel benchmark` and `sclabel scaling`: every variant on one split, learning curves."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import sclabel
from sclabel.cli import main
from sclabel.config import DataConfig
from sclabel.studies.benchmark import Variant, run_benchmark
from sclabel.studies.scaling import nested_subsets, run_scaling
from sclabel.training.data import load_training_data

OPTIONS = {"max_epochs": 3, "progress": False}


@pytest.fixture(scope="module")
def data():
    adata = sclabel.datasets.synthetic(900, 120, 4, 8, seed=3)
    config = DataConfig(label_key="cell_type", split_by="donor")
    return load_training_data(adata, config, seed=0, progress=False)


def test_variant_names_parse():
    assert Variant.parse("tabnet+aug*5") == Variant("tabnet", True, 5)
    assert Variant.parse("linear").name == "linear"
    for bad in ("resnet", "xgboost*3", "mlp+aug*0", "mlp*", "celltypist+aug"):
        with pytest.raises(sclabel.InputError):
            Variant.parse(bad)


@pytest.mark.slow
def test_every_variant_on_the_same_split(data):
    variants = ["linear", "mlp+aug", "tabnet*2", "celltypist", "xgboost"]
    seen = []
    table = run_benchmark(
        data, variants, train_options=OPTIONS, on_row=lambda t: seen.append(len(t))
    )
    assert seen == [1, 2, 3, 4, 5]
    assert table["variant"].tolist() == variants
    assert (table["n_test"] == data.subsets["test"][1].size).all()
    assert table["macro_f1"].between(0, 1).all() and (table["macro_f1"] > 0.5).all()
    assert (table["train_seconds"] > 0).all() and (table["predict_cells_per_s"] > 0).all()
    assert table["peak_memory_mb"].notna().all()
    assert table.loc[table.variant == "tabnet*2", "ensemble"].item() == 2
    assert "kept_vectors" in table.attrs["augmentation"]
    assert "r2_donor" in table.attrs["augmentation"]["variance_explained"]["after"]


def test_ontology_column_on_cl_names():
    adata = sclabel.datasets.synthetic(600, 100, 2, 6, seed=5)
    names = {"type_0": "T cell", "type_1": "B cell"}
    adata.obs["cell_type"] = adata.obs["cell_type"].map(names).astype("category")
    config = DataConfig(label_key="cell_type", split_by="donor")
    data = load_training_data(adata, config, progress=False)
    table = run_benchmark(data, ["linear"], train_options=OPTIONS, ontology=True)
    assert table["macro_f1_ontology"].item() >= table["macro_f1"].item()


def test_nested_subsets_by_donor_and_cell(data):
    by_donor = nested_subsets(data, [1.0, 0.3, 0.6], "donor", seed=0)
    assert [f for f, _ in by_donor] == [0.3, 0.6, 1.0]
    donors = data.donors["train"]
    sets = [set(rows) for _, rows in by_donor]
    assert sets[0] < sets[1] <= sets[2] and len(sets[2]) == donors.size
    for _, rows in by_donor:  # whole donors only
        kept = set(donors[rows])
        assert np.isin(donors, list(kept)).sum() == rows.size
    by_cell = nested_subsets(data, [0.5, 1.0], "cell", seed=0)
    assert set(by_cell[0][1]) < set(by_cell[1][1])
    with pytest.raises(sclabel.InputError):
        nested_subsets(data, [0, 1], "cell", seed=0)


def test_scaling_rows_per_width_and_fraction(data):
    table = run_scaling(
        data, "mlp", fractions=[0.5, 1.0], by="cell", widths=[16, 32], train_options=OPTIONS
    )
    assert len(table) == 4
    assert table["width"].tolist() == [16, 16, 32, 32]
    small, full = table["n_train"].iloc[:2]
    assert small < full == data.subsets["train"][1].size
    with pytest.raises(sclabel.InputError, match="no width"):
        run_scaling(data, "linear", widths=[8], train_options=OPTIONS)


@pytest.mark.slow
def test_cli_benchmark_and_scaling_write_tables(tmp_path, capsys):
    path = tmp_path / "s.h5ad"
    sclabel.datasets.synthetic(600, 100, 3, 6, seed=2).write_h5ad(path)
    common = [str(path), "--label-key", "cell_type", "--split-by", "donor", "--max-epochs", "2"]
    out = tmp_path / "bench"
    assert (
        main(["--quiet", "benchmark", *common, "--models", "linear,xgboost", "--out", str(out)])
        == 0
    )
    table = pd.read_csv(out / "benchmark.csv")
    assert table["variant"].tolist() == ["linear", "xgboost"]
    assert json.loads((out / "benchmark.json").read_text())["rows"][0]["variant"] == "linear"
    assert (out / "benchmark.png").stat().st_size > 0 and "| variant |" in (
        out / "benchmark.md"
    ).read_text()
    curve = tmp_path / "curve"
    args = [
        "--quiet",
        "scaling",
        *common,
        "--model",
        "linear",
        "--fractions",
        "0.5,1",
        "--out",
        str(curve),
    ]
    assert main(args) == 0
    assert len(pd.read_csv(curve / "learning_curve.csv")) == 2
    assert (curve / "learning_curve.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["benchmark", "--models", "linear,resnet"], "unknown variant"),
        (["benchmark", "--models", "linear", "--param", "depth=2"], "FAMILY.NAME"),
        (["scaling", "--model", "linear", "--fractions", "0.5,x"], "comma-separated"),
        (["scaling", "--model", "linear", "--widths", "8"], "no width"),
    ],
)
def test_cli_bad_inputs_exit_2_without_output(tmp_path, capsys, extra, message):
    path = tmp_path / "s.h5ad"
    sclabel.datasets.synthetic(300, 50, 2, 6, seed=2).write_h5ad(path)
    out = tmp_path / "out"
    command, *rest = extra
    args = [command, str(path), "--label-key", "cell_type", "--split-by", "donor", *rest]
    assert main(["--quiet", *args, "--max-epochs", "1", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
