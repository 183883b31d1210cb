"""Integration on the real files in ../shared/data (skipped with a reason when absent)."""

import numpy as np
import pytest

import sclabel
from conftest import shared_file

pytestmark = pytest.mark.realdata


@pytest.mark.slow
def test_cellbench_cross_protocol_transfer():
    """Train on CEL-seq2 plates (donor-style grouped split by plate), predict Drop-seq cells."""
    adata = sclabel.read(shared_file("cellbench_sc_celllines.h5ad"))
    is_dropseq = (adata.obs["batch"] == "sc_dropseq").to_numpy()
    train, query = adata[~is_dropseq].copy(), adata[is_dropseq].copy()
    model = sclabel.train(
        train, label_key="cell_line", split_by="batch", model="linear", progress=False
    )
    assert model.data_config.gene_key == "var_names"
    assert model.genes[0].startswith("ENSG")
    split = model.split
    assert (split.groupby("group")["split"].nunique() == 1).all()  # plates are not mixed
    report = sclabel.evaluate(model.predict(query, progress=False), query.obs["cell_line"])
    # Drop-seq holds 3 of the 5 lines; macro-F1 is over those 3
    assert sorted(report.metrics["per_class"]) == ["H1975", "H2228", "HCC827"]
    assert report.metrics["macro_f1"] > 0.9


def test_kang_condition_from_symbols():
    adata = sclabel.read(shared_file("kang_pbmc_stim.h5ad"))
    model = sclabel.train(adata, label_key="condition", model="linear", progress=False)
    assert model.metrics["test"]["macro_f1"] > 0.9
    # query genes renamed with a var column: the alignment finds them there
    query = adata[:200].copy()
    query.var["gene_symbols"] = query.var_names.to_numpy()
    query.var_names = [f"g{i}" for i in range(query.n_vars)]
    pred = model.predict(query, progress=False)
    assert pred.coverage == 1.0
    np.testing.assert_allclose(
        pred.probabilities,
        model.predict(adata[:200].copy(), progress=False).probabilities,
        rtol=1e-5,
    )


@pytest.mark.slow
def test_mouse_bladder_with_unnamed_genes_and_rare_classes():
    adata = sclabel.read(shared_file("mouse_bladder_2100.h5ad"))
    model = sclabel.train(adata, label_key="label_id", model="linear", progress=False)
    assert len(model.classes) == 16
    counts = model.split[model.split["split"] == "train"].shape[0]
    assert counts == pytest.approx(0.7 * adata.n_obs, rel=0.05)
    assert model.metrics["test"]["accuracy"] > 0.8


def test_pbmc68k_reduced_raw_is_detected_as_log_normalized():
    adata = sclabel.datasets.pbmc_demo()
    model = sclabel.train(
        adata, label_key="bulk_labels", layer="raw", model="mlp", max_epochs=10, progress=False
    )
    assert model.training_input == "log1p"
    assert len(model.genes) == adata.raw.n_vars
    assert model.metrics["test"]["accuracy"] > 0.6
    # X itself is scaled (negative values): refused with the way out
    with pytest.raises(sclabel.InputError, match="negative.*--layer"):
        model.predict(adata, progress=False)
