"""The CLI: success paths, --help, and one-line errors with exit 2.

Commands run in this process through `sclabel.cli.main` (as `sclabel ARGS` would, with its
output captured), which is many times faster than a fresh Python per command; the smoke
tests at the end run the real `sclabel` entry point in a subprocess.
"""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

import sclabel
from conftest import run  # the CLI in this process

COMMANDS = [
    "train",
    "predict",
    "evaluate",
    "info",
    "demo",
    "import-celltypist",
    "prepare",
    "benchmark",
    "scaling",
    "store",
    "simulate",
]


def run_subprocess(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "sclabel.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def assert_one_line_error(result, pattern):
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr

    assert re.search(pattern, errors[0]), errors[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli")
    sclabel.datasets.synthetic(600, 200, 4, 6, seed=1).write_h5ad(path / "train.h5ad")
    query = sclabel.datasets.synthetic(200, 200, 4, 6, seed=1, cell_seed=9)
    query.write_h5ad(path / "query.h5ad")
    result = run(
        "train",
        path / "train.h5ad",
        "--label-key",
        "cell_type",
        "--split-by",
        "donor",
        "--model",
        "linear",
        "--max-epochs",
        "30",
        "--lr",
        "0.01",
        "--out",
        path / "model",
        "--report",
        path / "train-report",
        "--export-split",
        path / "split.csv",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    return path


def test_every_command_has_help_with_an_example():
    from sclabel.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(COMMANDS) < set(commands.choices)  # the foundation and experiment ones too
    for command in commands.choices:
        result = run(command, "--help")
        assert result.returncode == 0
        assert "Example: sclabel " + command in result.stdout


def test_train_writes_model_report_and_split(workdir):
    assert (workdir / "model" / "model.safetensors").exists()
    assert (workdir / "train-report" / "report.md").exists()
    split = pd.read_csv(workdir / "split.csv")
    assert set(split["split"]) == {"train", "val", "test"}


def test_predict_to_csv_and_h5ad(workdir):
    result = run(
        "predict",
        workdir / "query.h5ad",
        "--model",
        workdir / "model",
        "--out",
        workdir / "pred.csv",
        "--unknown-threshold",
        "0.3",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(workdir / "pred.csv", index_col="cell")
    assert len(table) == 200
    assert (table["label"] == sclabel.read(workdir / "query.h5ad").obs["cell_type"]).mean() > 0.8

    result = run(
        "predict",
        workdir / "query.h5ad",
        "--model",
        workdir / "model",
        "--backed",
        "--out",
        workdir / "pred.h5ad",
        "--unknown-threshold",
        "0.3",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    annotated = anndata.read_h5ad(workdir / "pred.h5ad")  # obs/obsm only: no genes to check
    assert list(annotated.obs["sclabel_label"]) == list(table["label"])
    assert "sclabel_probabilities" in annotated.obsm


def test_predict_in_memory_h5ad_keeps_the_matrix(workdir):
    result = run(
        "predict",
        workdir / "query.h5ad",
        "--model",
        workdir / "model",
        "--out",
        workdir / "annotated.h5ad",
        "--key-added",
        "ct",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    annotated = anndata.read_h5ad(workdir / "annotated.h5ad")
    original = anndata.read_h5ad(workdir / "query.h5ad")
    assert (annotated.X != original.X).nnz == 0
    assert {"ct_label", "ct_confidence", "ct_uncertainty"} <= set(annotated.obs)
    assert list(annotated.obsm["ct_probabilities"].columns) == [
        "type_0",
        "type_1",
        "type_2",
        "type_3",
    ]


def test_evaluate_and_info(workdir):
    result = run(
        "evaluate",
        workdir / "query.h5ad",
        "--model",
        workdir / "model",
        "--out",
        workdir / "report",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((workdir / "report" / "metrics.json").read_text())
    assert metrics["n_cells"] == 200
    assert (f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
            f"ECE {metrics['ece']:.4f} ({metrics['ece_by_chance']:.4f} by chance alone)"
            ) in result.stdout  # fmt: skip

    result = run("info", workdir / "model", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["config"]["family"] == "linear"


def test_missing_input_file(workdir):
    result = run(
        "predict", workdir / "nope.h5ad", "--model", workdir / "model", "--out", workdir / "x.csv"
    )
    assert_one_line_error(result, "input not found")
    assert not (workdir / "x.csv").exists()


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["predict", "q.h5ad", "--model", "m", "--out", "x.csv", "--sets", "aps"],
         "argument --sets: invalid choice: 'aps'"),
        (["predict", "q.h5ad"], "the following arguments are required: --model/--models, --out"),
        (["predict", "q.h5ad", "--model", "m", "--out", "x.csv", "--coverage", "most"],
         "argument --coverage: invalid float value: 'most'"),
        (["annotate"], "the following arguments are required: input, --model"),
        (["relabel"], "argument command: invalid choice: 'relabel'"),
    ],
)  # fmt: skip
def test_a_usage_error_is_one_line_that_names_the_help(tmp_path, args, pattern):
    """argparse's own errors (a missing or unknown option, a bad choice or number) keep the
    promise too: one line, exit 2, nothing written; the line says where the options are."""
    result = run(*args, cwd=tmp_path)
    assert_one_line_error(result, pattern)
    assert len(result.stderr.strip().splitlines()) == 1 and "(see: sclabel" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_unreadable_input_file(workdir):
    (workdir / "garbage.h5ad").write_bytes(b"not an hdf5 file at all")
    result = run("train", "--model", "mlp", workdir / "garbage.h5ad", "--label-key", "cell_type")
    assert_one_line_error(result, "could not read")


def test_missing_label_column(workdir):
    result = run(
        "train",
        "--model",
        "mlp",
        workdir / "train.h5ad",
        "--label-key",
        "celltype",
        "--out",
        workdir / "m2",
    )
    assert_one_line_error(result, r"'celltype' not found in obs; available: \['cell_type'")
    assert not (workdir / "m2").exists()


def test_low_gene_overlap_names_the_fix(workdir):
    adata = sclabel.read(workdir / "query.h5ad")
    adata.var_names = [f"SYM{i}" for i in range(adata.n_vars)]  # unknown symbols
    adata.var = adata.var.drop(columns="gene_symbols")
    adata.write_h5ad(workdir / "symbols.h5ad")
    result = run(
        "predict",
        workdir / "symbols.h5ad",
        "--model",
        workdir / "model",
        "--out",
        workdir / "sym.csv",
    )
    assert_one_line_error(result, r"only 0\.0% of the model's 200 genes.*--min-gene-coverage")
    assert not (workdir / "sym.csv").exists()


def test_tampered_checkpoint(workdir, tmp_path):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(workdir / "model", broken)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (broken / "model.safetensors").write_bytes(bytes(data))
    result = run("predict", workdir / "query.h5ad", "--model", broken, "--out", tmp_path / "p.csv")
    assert_one_line_error(result, "modified or damaged")
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_debug_shows_the_traceback(workdir):
    result = run_subprocess("--debug", "info", workdir / "no-model")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "InputError" in result.stderr


@pytest.mark.slow
def test_the_installed_command_answers_help_and_version(workdir):
    result = subprocess.run(
        [Path(sys.executable).with_name("sclabel"), "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("sclabel "), result.stderr
    result = run_subprocess("predict", "--help")
    assert result.returncode == 0 and "Example: sclabel predict" in result.stdout
    result = run_subprocess("predict", workdir / "query.h5ad", "--model", workdir / "nope",
                            "--out", workdir / "never.csv")  # fmt: skip
    assert_one_line_error(result, "model not found")
    assert not (workdir / "never.csv").exists()


@pytest.mark.slow
def test_demo_runs_on_scanpy_pbmc(tmp_path):
    result = run("demo", "--out", tmp_path / "demo", "--max-epochs", "5", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "report:" in result.stdout
    m = json.loads((tmp_path / "demo" / "report" / "metrics.json").read_text())
    assert f"ECE {m['ece']:.3f} ({m['ece_by_chance']:.3f} by chance alone)" in result.stdout
    assert (tmp_path / "demo" / "report" / "confusion_matrix.png").exists()
    assert sclabel.Model.load(tmp_path / "demo" / "model").classes[0] == "CD14+ Monocyte"
    report = (tmp_path / "demo" / "report" / "report.md").read_text()
    assert "- Data: `scanpy.datasets.pbmc68k_reduced() (its log-normalized .raw)`" in report
    # the default family is auto: the report says what it compared and kept
    assert ", chosen by --model auto (" in report and "validation macro-F1: linear " in report


def _bad_inputs():
    """(name, how to break a good training file, expected message) for `sclabel train`."""

    def set_value(value):
        def corrupt(a):
            a.X.data[0] = value

        return corrupt

    def single_class(a):
        a.obs["cell_type"] = "T cell"

    def zero_counts(a):
        X = a.X.tolil()
        X[3, :] = 0
        a.X = X.tocsr()

    def duplicate_names(a):
        a.obs_names = ["cell"] * a.n_obs

    return [
        ("single-class", single_class, "1 class.*need at least 2"),
        ("nan", set_value(np.nan), "NaN or infinite"),
        ("inf", set_value(np.inf), "NaN or infinite"),
        ("negative", set_value(-1.0), "negative values.*--layer"),
        ("zero-counts", zero_counts, "zero counts.*filter_cells"),
        ("duplicates", duplicate_names, "duplicate cell names.*obs_names_make_unique"),
        ("empty", lambda a: a._inplace_subset_obs(np.zeros(a.n_obs, bool)), "empty"),
    ]


@pytest.mark.parametrize(
    ("name", "corrupt", "pattern"), _bad_inputs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_bad_training_input(tmp_path, name, corrupt, pattern):
    adata = sclabel.datasets.synthetic(120, 50, 3, 3, seed=0)
    corrupt(adata)
    adata.write_h5ad(tmp_path / "bad.h5ad")
    result = run(
        "train",
        "--model",
        "mlp",
        tmp_path / "bad.h5ad",
        "--label-key",
        "cell_type",
        "--out",
        tmp_path / "m",
    )
    assert_one_line_error(result, pattern)
    assert not (tmp_path / "m").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5ad"]  # no partial output


@pytest.mark.parametrize("breakage", ["incomplete", "newer"])
def test_bad_checkpoint_on_the_command_line(workdir, tmp_path, breakage):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(workdir / "model", broken)
    if breakage == "incomplete":
        (broken / "genes.json").unlink()
        pattern = r"incomplete checkpoint.*genes\.json"
    else:
        config = json.loads((broken / "config.json").read_text())
        config["format_version"] = 99
        (broken / "config.json").write_text(json.dumps(config))
        pattern = "format 99 is newer.*upgrade sclabel"
    result = run("predict", workdir / "query.h5ad", "--model", broken, "--out", tmp_path / "p.csv")
    assert_one_line_error(result, pattern)
    assert not (tmp_path / "p.csv").exists()


def test_evaluate_with_ontology_and_groups(tmp_path):
    """CL names as labels: a model trained on them is scored flat and ontology-aware."""
    adata = sclabel.datasets.synthetic(600, 200, 3, 6, seed=1)
    names = {"type_0": "T cell", "type_1": "CD4-positive, alpha-beta T cell", "type_2": "B cell"}
    adata.obs["cell_type"] = adata.obs["cell_type"].map(names).astype("category")
    adata.obs["tissue"] = np.where(np.arange(adata.n_obs) % 2, "blood", "lung")
    adata.write_h5ad(tmp_path / "cl.h5ad")
    result = run(
        "train",
        tmp_path / "cl.h5ad",
        "--label-key",
        "cell_type",
        "--model",
        "linear",
        "--max-epochs",
        "10",
        "--out",
        tmp_path / "model",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    result = run(
        "evaluate",
        tmp_path / "cl.h5ad",
        "--model",
        tmp_path / "model",
        "--ontology",
        "--group-by",
        "tissue",
        "--out",
        tmp_path / "report",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert "Cell Ontology-aware macro-F1" in result.stdout
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["ontology"]["terms"]["T cell"] == "CL:0000084"
    assert metrics["ontology"]["macro_f1"] >= metrics["macro_f1"]  # can only forgive errors
    assert set(metrics["by_group"]) == {"blood", "lung"}
    result = run(
        "evaluate",
        tmp_path / "cl.h5ad",
        "--model",
        tmp_path / "model",
        "--group-by",
        "organ",
        "--out",
        tmp_path / "r2",
    )
    assert_one_line_error(result, "obs column 'organ' not found")


@pytest.mark.slow  # full suite only: keeps the fast tier under 2 min
def test_tabnet_keeps_its_paper_defaults_unless_overridden(workdir, tmp_path):
    for extra, lr in (([], 0.005), (["--lr", "0.02"], 0.02)):
        out = tmp_path / f"tabnet-{lr}"
        result = run("train", workdir / "train.h5ad", "--label-key", "cell_type", "--model",
                     "tabnet", "--max-epochs", "1", "--out", out, "--quiet", *extra)  # fmt: skip
        assert result.returncode == 0, result.stderr
        config = json.loads((out / "config.json").read_text())["train"]
        assert config["lr"] == lr and config["weight_decay"] == 0.05 and config["grad_clip"] == 1.0


def test_prepare_then_train_on_its_split_with_augmentation(workdir, tmp_path):
    prepared = tmp_path / "prepared.h5ad"
    result = run(
        "prepare", workdir / "train.h5ad", "--label-key", "cell_type", "--donor-key", "donor",
        "--min-cells", "20", "--min-donors", "3", "--min-ancestors", "0",
        "--out", prepared, "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = run(
        "train", prepared, "--label-key", "cell_type", "--split-key", "split",
        "--donor-key", "donor", "--augment", "--model", "mlp", "--max-epochs", "3",
        "--out", tmp_path / "model", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["data"]["split_key"] == "split"
    assert config["augmentation"]["info"]["kept_vectors"] > 0
    assert "augmentation.safetensors" in config["extra_files"]
    split = pd.read_csv(tmp_path / "model" / "split.csv", index_col="cell")
    given = anndata.read_h5ad(prepared).obs["split"].astype(str)
    assert split["split"].to_dict() == given.to_dict()
    result = run(
        "train", "--model", "mlp", prepared, "--label-key", "cell_type", "--split-key", "split",
        "--augment",
        "--out", tmp_path / "none", "--quiet",
    )  # fmt: skip
    assert_one_line_error(result, "needs donors")
    assert not (tmp_path / "none").exists()


def test_train_refuses_a_foreign_out_folder_before_reading_any_data(tmp_path):
    """It trained fully, then refused --out and lost the model and its resume state."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    # the input does not even exist: --out is judged first, before anything is read
    result = run("train", tmp_path / "missing.h5ad", "--label-key", "cell_type", "--out", out)
    assert_one_line_error(result, "model exists and is not a sclabel checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    result = run("train", tmp_path / "missing.h5ad", "--label-key", "cell_type", "--report", out)
    assert_one_line_error(result, "model exists and is not a sclabel report")


def test_the_resume_state_outlives_a_failed_save(tmp_path, monkeypatch):
    adata = sclabel.datasets.synthetic(300, 50, 3, 3, seed=0)
    state = tmp_path / ".model.training"

    def disk_full(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sclabel.Model, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        sclabel.train(adata, label_key="cell_type", max_epochs=2, progress=False,
                      checkpoint_dir=state, out=tmp_path / "model", model="mlp")  # fmt: skip
    assert (state / "member-0" / "state.json").exists()  # --resume can still finish it


def test_help_shows_each_default_once_and_every_training_option_explained():
    result = run("train", "--help")
    text = " ".join(result.stdout.split())
    assert "(default: None)" not in text
    assert "default 3e-3 (default" not in text
    for flag in ("--max-epochs", "--patience", "--seed", "--lr", "--weight-decay"):
        entry = text.split(flag, 2)[-1][:160]
        assert "default" in entry, flag


def test_predict_says_how_it_read_the_values(workdir):
    result = run("predict", workdir / "query.h5ad", "--model", workdir / "model", "--out",
                 workdir / "said.csv")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "sclabel: input: raw counts (integers" in result.stderr
