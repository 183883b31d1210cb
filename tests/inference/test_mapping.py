"""Reference mapping: nearest reference cells label a query; a score flags cells that map
onto nothing the reference holds."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

import sclabel
from conftest import run, shared_file
from sclabel.errors import InputError


@pytest.fixture(scope="module")
def reference():
    cells = sclabel.datasets.synthetic(900, 150, 4, 6, seed=2)
    model = sclabel.train(cells, label_key="cell_type", split_by="donor", max_epochs=6,
                          progress=False, model="mlp")  # fmt: skip
    return cells, model


def test_mapping_labels_a_query_like_the_classifier(reference, tmp_path):
    cells, model = reference
    model.build_reference(cells)
    query = sclabel.datasets.synthetic(300, 150, 4, 6, seed=2, cell_seed=8)
    mapped = model.map(query)
    truth = query.obs["cell_type"].astype(str).to_numpy()
    assert (mapped.labels == truth).mean() > 0.9
    np.testing.assert_allclose(mapped.probabilities.sum(axis=1), 1, rtol=1e-5)
    score = mapped.extra["mapping_score"]
    assert 0.2 < np.median(score) < 0.9  # query cells sit about as close as reference cells
    model.save(tmp_path / "m")
    loaded = sclabel.Model.load(tmp_path / "m")
    assert loaded.reference.space == "embedding"
    np.testing.assert_array_equal(loaded.map(query).labels, mapped.labels)
    # the score compares distances at the index's k whatever k votes: the same for any --k
    for k in (3, 40):
        np.testing.assert_array_equal(model.map(query, k=k).extra["mapping_score"], score)


def test_an_index_of_another_model_or_none_is_refused(reference):
    cells, model = reference
    other = sclabel.train(
        cells, label_key="cell_type", max_epochs=2, seed=5, progress=False, model="mlp"
    )
    with pytest.raises(InputError, match="no reference index; build one first"):
        other.map(cells)
    other.reference = model.build_reference(cells)
    with pytest.raises(InputError, match="built with another model"):
        other.map(cells)


def test_a_linear_model_maps_in_the_pca_of_its_input(reference):
    cells, _ = reference
    linear = sclabel.train(cells, label_key="cell_type", model="linear", max_epochs=4,
                           progress=False)  # fmt: skip
    index = linear.build_reference(cells)
    assert index.space == "pca" and index.points.shape[1] == 50
    query = sclabel.datasets.synthetic(200, 150, 4, 6, seed=2, cell_seed=9)
    truth = query.obs["cell_type"].astype(str).to_numpy()
    assert (linear.map(query).labels == truth).mean() > 0.9


def test_cli_reference_then_map(reference, tmp_path):
    cells, model = reference
    model.save(tmp_path / "m")
    cells.write_h5ad(tmp_path / "ref.h5ad")
    result = run("--quiet", "reference", tmp_path / "ref.h5ad", "--model", tmp_path / "m")
    assert result.returncode == 0, result.stderr
    result = run("--quiet", "map", tmp_path / "ref.h5ad", "--model", tmp_path / "m", "--out",
                 tmp_path / "mapped.h5ad")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = ad.read_h5ad(tmp_path / "mapped.h5ad")
    assert {"sclabel_map_label", "sclabel_map_mapping_score", "sclabel_map_novel"} <= set(out.obs)
    result = run("--quiet", "map", tmp_path / "ref.h5ad", "--model", tmp_path / "m", "--out",
                 tmp_path / "x.xlsx")  # fmt: skip
    assert result.returncode == 2 and "--out must end in" in result.stderr


@pytest.mark.realdata
@pytest.mark.slow
def test_cellbench_cross_protocol_mapping_and_a_cell_line_it_never_saw():
    """Train and index on the CEL-seq2 plates without HCC827, map Drop-seq: the seen lines
    as well as the classifier labels them, the unseen one with low mapping scores."""
    cells = sclabel.read(shared_file("cellbench_sc_celllines.h5ad"))
    batch = cells.obs["batch"].astype(str).to_numpy()
    line = cells.obs["cell_line"].astype(str).to_numpy()
    reference = cells[(batch != "sc_dropseq") & (line != "HCC827")].copy()
    query = cells[batch == "sc_dropseq"].copy()
    model = sclabel.train(reference, label_key="cell_line", model="mlp", max_epochs=20,
                          progress=False)  # fmt: skip
    model.build_reference(reference)
    mapped = model.map(query)
    truth = query.obs["cell_line"].astype(str).to_numpy()
    seen = truth != "HCC827"
    labels = sorted(set(truth[seen]))
    kwargs = dict(labels=labels, average="macro", zero_division=0)
    classifier = f1_score(truth[seen], model.predict(query).labels[seen], **kwargs)
    mapping = f1_score(truth[seen], mapped.labels[seen], **kwargs)
    assert mapping >= classifier - 0.02, (mapping, classifier)
    auroc = roc_auc_score(~seen, -mapped.extra["mapping_score"])
    assert auroc >= 0.9, auroc
    novel = mapped.extra["novel"]  # the score's cut-off as shipped
    assert novel[~seen].mean() >= 0.5 and novel[seen].mean() <= 0.1
