"""CellTypist models become sclabel checkpoints without running pickle code, and predict the
same labels as CellTypist itself (reference from benchmarks/celltypist_reference_labels.py)."""

import os
import pickle
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sclabel
from conftest import run, shared_file
from sclabel.errors import InputError

MODEL = "celltypist_models/ref_pbmc_clean_celltypist_model_AIFI_L3_2024-04-19.pkl"
REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "celltypist_aifi_l3_kang_labels.csv"


@pytest.fixture(scope="module")
def imported():
    return sclabel.import_celltypist(shared_file(MODEL))


def test_imported_model_matches_celltypist_labels_on_kang(imported):
    kang = sclabel.read(shared_file("kang_pbmc_stim.h5ad"))
    prediction = imported.predict(kang, progress=False)
    reference = pd.read_csv(REFERENCE, index_col="cell")["label"]
    assert list(reference.index) == list(kang.obs_names)
    assert (prediction.labels == reference.to_numpy()).all()
    # only 2/3 of the model's genes are in Kang: CellTypist leaves the rest out, so must we
    assert prediction.coverage == pytest.approx(0.6745, abs=1e-3)


def test_imported_model_saves_as_json_and_safetensors(imported, tmp_path):
    imported.save(tmp_path / "model")
    loaded = sclabel.Model.load(tmp_path / "model")
    assert loaded.family == "celltypist" and len(loaded.classes) == 71
    assert loaded.genes[:2] == ("HES4", "ISG15")
    np.testing.assert_array_equal(loaded.module.scale.numpy(), imported.module.scale.numpy())


def test_missing_genes_are_left_out_not_zero_filled(imported):
    """A zero-filled gene would add -mean/scale * weight; CellTypist drops the gene instead."""
    genes = list(imported.genes[:1000])
    counts = np.random.default_rng(0).poisson(1.0, size=(5, 1000)).astype(np.float32) + 1
    query = anndata.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(5)]),
        var=pd.DataFrame(index=genes),
    )
    prediction = imported.predict(query, min_gene_coverage=0.3, progress=False)
    module = imported.module
    x = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    z = np.minimum((x - module.mean.numpy()[:1000]) / module.scale.numpy()[:1000], 10)
    logits = (
        z @ module.linear.weight.detach().numpy()[:, :1000].T + module.linear.bias.detach().numpy()
    )
    np.testing.assert_array_equal(prediction.probabilities.argmax(1), logits.argmax(1))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"Model": Exploit(), "Scaler_": None}))
    with pytest.raises(InputError, match="refusing to load"):
        sclabel.import_celltypist(path)
    assert not (tmp_path / "pwned").exists()


def test_a_pickle_that_is_not_a_celltypist_model(tmp_path):
    path = tmp_path / "dict.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(InputError, match="not a CellTypist model"):
        sclabel.import_celltypist(path)


def test_cli_import_then_predict(tmp_path):
    model_file = shared_file(MODEL)
    result = run("--quiet", "import-celltypist", model_file, "--out", tmp_path / "model")
    assert result.returncode == 0, result.stderr
    result = run("--quiet", "predict", shared_file("kang_pbmc_stim.h5ad"), "--model",
                 tmp_path / "model", "--out", tmp_path / "labels.csv")  # fmt: skip
    assert result.returncode == 0, result.stderr
    labels = pd.read_csv(tmp_path / "labels.csv", index_col="cell")["label"]
    reference = pd.read_csv(REFERENCE, index_col="cell")["label"]
    assert (labels == reference).all()


@pytest.mark.slow  # full suite only: keeps the fast tier under 2 min
def test_an_imported_model_joins_a_consensus_with_a_trained_one(imported):
    """popV-style: the AIFI CellTypist model beside an mlp trained on Kang with three of its
    labels; one label per cell from the mean over the union of classes, each member's own
    label kept, agreement = the share of members agreeing."""
    kang = sclabel.read(shared_file("kang_pbmc_stim.h5ad"))
    theirs = pd.read_csv(REFERENCE, index_col="cell")["label"]
    common = theirs.value_counts().index[:3]
    cells = kang[theirs.isin(common).to_numpy()].copy()
    cells.obs["aifi"] = theirs[cells.obs_names].to_numpy()
    trained = sclabel.train(cells, label_key="aifi", model="mlp", max_epochs=5, progress=False)
    consensus = sclabel.predict([imported, trained], cells, progress=False)
    assert set(consensus.classes) == set(imported.classes)  # the mlp's 3 are among the 71
    each = [m.predict(cells, progress=False) for m in (imported, trained)]
    frame = consensus.to_frame()
    for name, own in zip(("0_celltypist", "1_mlp"), each, strict=True):
        assert (frame[f"label_{name}"].to_numpy() == own.labels).all()
    mlp_full = np.zeros_like(each[0].probabilities)
    order = [list(consensus.classes).index(c) for c in trained.classes]
    mlp_full[:, order] = each[1].probabilities
    expected = (each[0].probabilities[:, [list(imported.classes).index(c)
                                          for c in consensus.classes]] + mlp_full) / 2  # fmt: skip
    np.testing.assert_allclose(consensus.probabilities, expected, rtol=1e-5, atol=1e-6)
    agree = (each[0].labels == each[1].labels).mean()
    assert agree > 0.5 and np.isclose((frame["agreement"] == 1).mean(), agree)
