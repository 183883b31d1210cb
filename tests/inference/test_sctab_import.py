"""scTab checkpoints become sclabel tabnet checkpoints without running pickle code, and give
scTab's own probabilities (../shared/data/sctab_reference: written by scTab's code)."""

import os
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import torch

import sclabel
from conftest import run, shared_file
from sclabel.errors import InputError

REF = "sctab_reference"
CKPT = f"{REF}/scTab-checkpoints/scTab/run1/val_f1_macro_epoch=39_val_f1_macro=0.000.ckpt"
GENES = f"{REF}/minimal/var.parquet"
CLASSES = f"{REF}/minimal/categorical_lookup/cell_type.parquet"


@pytest.fixture(scope="module")
def files():
    return shared_file(CKPT), shared_file(GENES), shared_file(CLASSES)


@pytest.fixture(scope="module")
def imported(files):
    ckpt, genes, classes = files
    return sclabel.import_sctab(ckpt, genes=genes, classes=classes)


def _probabilities(model, query) -> pd.DataFrame:
    prediction = model.predict(query, progress=False)
    return pd.DataFrame(prediction.probabilities, index=query.obs_names, columns=model.classes)


def test_imported_model_gives_sctabs_own_probabilities(imported):
    query = anndata.read_h5ad(shared_file(f"{REF}/query_dropseq.h5ad"))
    expected = pd.read_csv(shared_file(f"{REF}/expected_probabilities.csv"), index_col=0)
    ours = _probabilities(imported, query).loc[expected.index, expected.columns]
    assert np.abs(ours.to_numpy() - expected.to_numpy()).max() < 1e-5
    # the README's figure for these probabilities, from the cells' own labels
    truth = query.obs.loc[expected.index, "cell_line"].astype(str).to_numpy()
    assert (ours.idxmax(axis=1).to_numpy() == truth).mean() == pytest.approx(0.853, abs=1e-3)


def test_library_size_is_summed_over_the_model_genes_only(imported):
    """scTab's recipe: a gene the model does not read must not change a cell's input."""
    query = anndata.read_h5ad(shared_file(f"{REF}/query_dropseq.h5ad"))[:20].copy()
    outside = ~query.var_names.isin(imported.genes)
    padded = query.copy()
    padded.X = padded.X.toarray()
    padded.X[:, np.flatnonzero(outside)[:50]] += 100.0  # far more counts, all outside
    assert imported.input_spec.library_size == "model_genes"
    np.testing.assert_allclose(
        _probabilities(imported, padded), _probabilities(imported, query), atol=1e-6
    )


def test_the_import_saves_loads_and_records_its_source(imported, files, tmp_path):
    imported.save(tmp_path / "model")
    loaded = sclabel.Model.load(tmp_path / "model")
    assert loaded.model_config.params["input_norm"] == "batch"
    assert loaded.input_spec.library_size == "model_genes"
    source = loaded.metrics["imported_from"]
    assert source["source"] == "scTab" and len(source["sha256"]) == 64
    assert source["hyper_parameters"]["optimizer"] == "torch.optim.adamw.AdamW"
    assert loaded.vocabulary.symbols is not None and loaded.genes[0].startswith("ENSG")
    config = (tmp_path / "model" / "config.json").read_text()
    assert "over the model's genes" in config


def test_cli_import_then_predict(files, tmp_path):
    ckpt, genes, classes = files
    result = run(
        "import-sctab", ckpt, "--genes", genes, "--classes", classes, "--out", tmp_path / "m"
    )
    assert result.returncode == 0, result.stderr
    query = shared_file(f"{REF}/query_dropseq.h5ad")
    result = run("predict", query, "--model", tmp_path / "m", "--out", tmp_path / "p.csv")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "p.csv", index_col=0)
    expected = pd.read_csv(shared_file(f"{REF}/expected_probabilities.csv"), index_col=0)
    assert (table.loc[expected.index].iloc[:, 0] == expected.idxmax(axis=1)).all()


class _Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, files):
    _, genes, classes = files
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Exploit(tmp_path / "pwned")}}, path)
    result = run(
        "import-sctab", path, "--genes", genes, "--classes", classes, "--out", tmp_path / "m"
    )
    assert result.returncode == 2 and "refusing to load" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "m").exists()


def test_a_checkpoint_in_another_layout_says_what_it_found(tmp_path, files):
    _, genes, classes = files
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2, 2)}, "hyper_parameters": {}}, path)
    with pytest.raises(InputError, match=r"not an scTab TabNet checkpoint.*encoder\.weight"):
        sclabel.import_sctab(path, genes=genes, classes=classes)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(InputError, match=r"no state_dict \(found \['weights'\]\)"):
        sclabel.import_sctab(path, genes=genes, classes=classes)
    path.write_text("not a zip")
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        sclabel.import_sctab(path, genes=genes, classes=classes)


def test_a_gene_table_of_another_width_is_refused(tmp_path, files):
    ckpt, genes, classes = files
    short = tmp_path / "var.parquet"
    pd.read_parquet(genes).iloc[:1000].to_parquet(short)
    result = run(
        "import-sctab", ckpt, "--genes", short, "--classes", classes, "--out", tmp_path / "m"
    )
    assert (
        result.returncode == 2
        and "lists 1000 genes, but the checkpoint's weights expect 1500" in (result.stderr)
    )
    assert not (tmp_path / "m").exists()
    wrong = tmp_path / "classes.parquet"
    pd.DataFrame({"name": ["a"] * 5}).to_parquet(wrong)
    with pytest.raises(InputError, match="no 'label' column"):
        sclabel.import_sctab(ckpt, genes=genes, classes=wrong)
