"""What a matrix holds is checked, not assumed: counts, log1p (natural log, from any per-cell
total), log2(x+1) (converted), per-cell-normalized values (--input normalized), and the
transform actually applied is what config.json records."""

import json
import logging

import numpy as np
import pytest
import scipy.sparse as sp

import sclabel
from conftest import run
from sclabel.data.inputs import InputSpec
from sclabel.errors import InputError


def _counts():
    return sclabel.datasets.synthetic(300, 60, 3, 3, seed=4)


def _with_values(adata, values: np.ndarray):
    out = adata.copy()
    out.X = sp.csr_matrix(values.astype(np.float32))
    return out


def _dense(adata) -> np.ndarray:
    return adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)


def _rows(adata, **options) -> np.ndarray:
    spec = InputSpec(_vocab(adata))
    return spec.bind(adata, **options).rows(slice(0, adata.n_obs)).toarray()


def _vocab(adata):
    from sclabel.data.genes import Vocabulary

    return Vocabulary(tuple(adata.var_names))


def _cpm(adata) -> np.ndarray:
    x = _dense(adata)
    return x / x.sum(1, keepdims=True) * 1e6


def test_per_cell_normalized_values_are_refused_with_the_way_forward():
    fpkm = _with_values(_counts(), _cpm(_counts()) * 1.7)  # not integers, not logged
    with pytest.raises(InputError, match="--input normalized"):
        _rows(fpkm)
    # declared: rescaled per cell and log1p'd, exactly as the counts they came from
    np.testing.assert_allclose(_rows(fpkm, values="normalized"), _rows(_counts()), atol=1e-5)


def test_log2_values_are_recognised_and_converted(caplog):
    log2 = _with_values(_counts(), np.log2(_cpm(_counts()) + 1))  # max ~17: not log1p of 1e4
    with caplog.at_level(logging.INFO, logger="sclabel"):
        rows = _rows(log2)
    assert "log2(x+1) values" in caplog.text and "converted" in caplog.text
    np.testing.assert_allclose(rows, _rows(_counts()), atol=1e-4)


def test_natural_log_of_another_total_is_rescaled():
    log_cpm = _with_values(_counts(), np.log1p(_cpm(_counts())))  # log1p of CPM, not of 1e4
    np.testing.assert_allclose(_rows(log_cpm), _rows(_counts()), atol=1e-4)


def test_log1p_of_a_gene_subset_is_used_as_given_without_a_warning(caplog):
    x = _dense(_counts())
    normalized = np.log1p(x / x.sum(1, keepdims=True) * 1e4)[:, :40]  # highly variable genes
    adata = _with_values(_counts()[:, :40], normalized)
    with caplog.at_level(logging.WARNING, logger="sclabel"):
        rows = _rows(adata)
    assert not caplog.text
    np.testing.assert_allclose(rows, normalized, atol=1e-5)


def test_large_logs_whose_rows_do_not_sum_to_one_total_are_warned_about(caplog):
    x = _dense(_counts()) * 300.0  # deep cells, log2 without normalizing
    adata = _with_values(_counts(), np.log2(x + 1) + 0.5 * (x > 0))
    with caplog.at_level(logging.WARNING, logger="sclabel"):
        _rows(adata)
    assert "more than log1p of values normalized" in caplog.text
    assert "--input log2" in caplog.text


def test_config_records_the_transform_applied(tmp_path):
    x = _dense(_counts())
    logged = _with_values(_counts()[:, :40], np.log1p(x / x.sum(1, keepdims=True) * 1e4)[:, :40])
    model = sclabel.train(logged, label_key="cell_type", model="mlp", max_epochs=1,
                          progress=False, out=tmp_path / "m")  # fmt: skip
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["preprocessing"]["training_input"] == "log1p"
    assert config["preprocessing"]["transform"].startswith("log1p-normalized input used as given")
    assert model.input_spec.training_input == "log1p"


def test_cli_train_and_predict_take_normalized_input(tmp_path):
    fpkm = _with_values(_counts(), _cpm(_counts()) * 1.7)
    fpkm.write_h5ad(tmp_path / "fpkm.h5ad")
    refused = run("train", "--model", "mlp", tmp_path / "fpkm.h5ad", "--label-key",
                  "cell_type", "--out", tmp_path / "m")  # fmt: skip
    assert refused.returncode == 2 and "--input normalized" in refused.stderr
    assert not (tmp_path / "m").exists()
    args = ["--input", "normalized", "--model", "mlp", "--max-epochs", "2"]
    ok = run("train", tmp_path / "fpkm.h5ad", "--label-key", "cell_type", *args, "--out",
             tmp_path / "m")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["preprocessing"]["training_input"] == "normalized"
    assert config["data"]["values"] == "normalized"
    predicted = run("predict", tmp_path / "fpkm.h5ad", "--model", tmp_path / "m", "--input",
                    "normalized", "--out", tmp_path / "p.csv")  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    bad = run("predict", tmp_path / "fpkm.h5ad", "--model", tmp_path / "m", "--input", "tpm",
              "--out", tmp_path / "q.csv")  # fmt: skip
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_training_on_the_genes_a_query_has(tmp_path):
    """A model on all of one study's genes refuses another study that has few of them; with
    --genes-from it trains on the shared genes and covers that query fully."""
    reference = _counts()
    query = reference[:50, 45:].copy()  # 15 of 60 genes: 25% coverage
    query.write_h5ad(tmp_path / "query.h5ad")
    reference.write_h5ad(tmp_path / "ref.h5ad")
    full = sclabel.train(reference, label_key="cell_type", model="mlp", max_epochs=1,
                         progress=False)  # fmt: skip
    with pytest.raises(InputError, match="25.0% of the model's 60 genes"):
        full.predict(query, progress=False)
    result = run("train", tmp_path / "ref.h5ad", "--label-key", "cell_type", "--model", "mlp",
                 "--max-epochs", "1", "--genes-from", tmp_path / "query.h5ad",
                 "--out", tmp_path / "m")  # fmt: skip
    assert result.returncode == 0, result.stderr
    model = sclabel.Model.load(tmp_path / "m")
    assert model.genes == tuple(query.var_names)
    assert model.data_config.genes_from == "query.h5ad"
    assert model.predict(query, progress=False).coverage == 1.0
    # a plain list in a file, with a header line
    (tmp_path / "genes.txt").write_text("gene_id\n" + "\n".join(reference.var_names[:10]) + "\n")
    listed = sclabel.train(reference, label_key="cell_type", model="mlp", max_epochs=1,
                           progress=False, genes=tmp_path / "genes.txt")  # fmt: skip
    assert listed.genes == tuple(reference.var_names[:10])
    with pytest.raises(InputError, match="none of the 60 training genes"):
        sclabel.train(reference, label_key="cell_type", genes=["GENE_X", "GENE_Y"], model="mlp")


def test_evaluate_scores_known_classes_and_unseen_cells_apart(tmp_path):
    """4 known classes scored 0.99 were reported as macro-F1 0.38 once unseen classes
    joined the test set; both views are given now."""
    from sclabel.evaluation.metrics import compute_metrics

    truth = np.array(["A"] * 40 + ["B"] * 40 + ["N"] * 20)  # N: never trained on
    predicted = np.array(["A"] * 40 + ["B"] * 40 + ["A"] * 10 + ["unknown"] * 10)
    confidence = np.r_[np.full(80, 0.95), np.linspace(0.3, 0.6, 20)]
    m = compute_metrics(truth, predicted, confidence, ["A", "B"])
    assert m["macro_f1"] < 0.7  # the headline counts N's cells as wrong
    assert m["known_classes"] == {"n_cells": 80, "accuracy": 1.0, "macro_f1": 1.0}
    unseen = m["unseen_cells"]
    assert unseen["n_cells"] == 20 and unseen["flagged_unknown"] == 10
    t = unseen["threshold_flagging_90pct"]
    assert (confidence[80:] < t).mean() >= 0.9 and unseen["known_cells_flagged_at_it"] == 0.0
    # and report.md says both
    adata = _counts()
    model = sclabel.train(adata[adata.obs["cell_type"] != "type_2"].copy(),
                          label_key="cell_type", model="linear", progress=False)  # fmt: skip
    report = model.evaluate(adata, out_dir=tmp_path / "r", progress=False)
    text = (tmp_path / "r" / "report.md").read_text()
    assert "over the classes the model knows" in text and "cells of unseen classes" in text
    assert report.metrics["unseen_cells"]["n_cells"] == int(
        (adata.obs["cell_type"] == "type_2").sum()
    )


def test_numeric_labels_sort_as_numbers_in_scores():
    from sclabel.evaluation.metrics import compute_metrics

    labels = np.array([str(i) for i in (1, 2, 10, 3, 1, 10)])
    m = compute_metrics(labels, labels, np.ones(6), ["1", "10", "2", "3"])
    assert m["confusion"]["rows"] == ["1", "2", "3", "10"]
    assert list(m["per_class"]) == ["1", "2", "3", "10"]
