"""explain: TabNet masks (single and ensembles), input x gradient for other gene-input models,
gene symbols, the table, the plots and the CLI."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

import sclabel
from conftest import model_batch, run
from sclabel.errors import InputError
from sclabel.evaluation import plots


@pytest.fixture(scope="module")
def marker_data():
    return sclabel.datasets.synthetic(1500, 200, 4, 6, markers_per_type=10, marker_fold=6.0, seed=1)


@pytest.fixture(scope="module")
def linear(marker_data):
    return sclabel.train(marker_data, label_key="cell_type", split_by="donor", model="linear",
                         progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def tabnet_pair(marker_data):
    return sclabel.train(marker_data, label_key="cell_type", split_by="donor", model="tabnet",
                         ensemble=2, max_epochs=1, batch_size=256, progress=False)  # fmt: skip


def fold_change_markers(adata, label, n=10) -> set[str]:
    """The `n` genes most enriched in `label`'s cells, computed from the data itself."""
    X = adata.X.toarray()
    X /= X.sum(axis=1, keepdims=True)
    types = adata.obs["cell_type"].to_numpy()
    fold = X[types == label].mean(0) / X[types != label].mean(0)
    return {adata.var_names[i] for i in np.argsort(-fold)[:n]}


def test_gradient_explains_a_linear_model_and_finds_the_markers(linear, marker_data):
    cells = marker_data[:400].copy()
    explanation = linear.explain(cells, progress=False)
    assert explanation.method == "gradient"  # auto: no feature mask
    assert explanation.importance.shape == (400, 200)
    np.testing.assert_allclose(explanation.importance.sum(axis=1), 1.0, rtol=1e-5)
    assert (explanation.importance >= 0).all()
    for label, top in explanation.top_genes(10).items():
        assert len(fold_change_markers(marker_data, label) & set(top)) >= 5, label
    # the predicted labels are the model's own
    predicted = linear.predict(cells, progress=False).labels
    np.testing.assert_array_equal(explanation.labels, predicted)


def test_gradient_of_a_linear_model_is_expression_times_weight(linear, marker_data):
    cells = marker_data[:50].copy()
    explanation = linear.explain(cells, progress=False)
    x = model_batch(linear, cells)["x"]
    x.requires_grad_(True)
    logits = linear.module({"x": x}).logits
    chosen = logits.argmax(1)
    (grad,) = torch.autograd.grad(logits[torch.arange(50), chosen].sum(), x)
    expected = (x * grad).detach().clamp_min(0)
    expected = expected / expected.sum(1, keepdim=True)
    np.testing.assert_allclose(explanation.importance, expected.numpy(), atol=1e-6)


def test_an_ensemble_of_tabnets_averages_its_members_masks(tabnet_pair, marker_data):
    cells = marker_data[:120].copy()
    explanation = tabnet_pair.explain(cells, progress=False)
    assert explanation.method == "mask"
    x = model_batch(tabnet_pair, cells)["x"]
    masks = [member.explain_batch(x)[0] for member in tabnet_pair.module.members]
    assert not torch.allclose(masks[0], masks[1])  # two seeds: two different masks
    np.testing.assert_allclose(explanation.importance, torch.stack(masks).mean(0).numpy(),
                               atol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(
        explanation.labels, tabnet_pair.predict(cells, progress=False).labels
    )
    gradient = tabnet_pair.explain(cells, method="gradient", progress=False)
    assert gradient.method == "gradient" and gradient.importance.shape == (120, 200)


def test_symbols_table_and_expression(linear, marker_data):
    cells = marker_data[:300].copy()
    explanation = linear.explain(cells, progress=False)
    symbol = dict(zip(marker_data.var_names, marker_data.var["gene_symbols"], strict=True))
    ids = explanation.top_genes(3)
    assert explanation.top_genes(3, symbols=True) == {
        label: [symbol[g] for g in genes] for label, genes in ids.items()
    }
    table = explanation.to_table(3)
    assert list(table.columns) == [
        "predicted_label", "cells", "rank", "gene_id", "gene_symbol", "importance",
        "fraction_expressing", "mean_expression",
    ]  # fmt: skip
    assert len(table) == 3 * len(ids)
    first = table.iloc[0]
    assert first["gene_id"] == ids[first["predicted_label"]][0]
    assert first["gene_symbol"] == symbol[first["gene_id"]]
    in_class = explanation.labels == first["predicted_label"]
    counts = cells[in_class, first["gene_id"]].X.toarray().ravel()
    assert first["cells"] == in_class.sum()
    assert first["fraction_expressing"] == pytest.approx((counts > 0).mean())


def test_write_gives_a_table_and_plots_with_the_labels_and_symbols(
    linear, marker_data, tmp_path, monkeypatch
):
    explanation = linear.explain(marker_data[:300].copy(), progress=False)
    drawn = {}
    save = plots.save_figure

    def keep(fig, path):
        drawn[path.name] = [t.get_text() for ax in fig.axes for t in
                            (*ax.get_xticklabels(), *ax.get_yticklabels(), *ax.texts)]  # fmt: skip
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    written = explanation.write(tmp_path / "explain", n=5, n_plot=3)
    assert sorted(p.name for p in (tmp_path / "explain").iterdir()) == [
        "dotplot.png",
        "importance_per_class.csv",
        "top_genes.csv",
        "top_genes.png",
    ]
    for path in written.values():
        assert path.exists()
    for name in ("top_genes.png", "dotplot.png"):
        with Image.open(tmp_path / "explain" / name) as image:
            assert min(image.size) > 100
    top = explanation.top_genes(3, symbols=True)
    for name in ("top_genes.png", "dotplot.png"):
        texts = " ".join(drawn[name])
        for label, genes in top.items():
            assert label in texts, (name, label)
            assert all(g in texts for g in genes), (name, genes)
    plt.close("all")


def test_mask_needs_a_feature_mask_and_token_models_are_refused(linear, marker_data):
    with pytest.raises(InputError, match="no feature mask.*gradient"):
        linear.explain(marker_data[:10].copy(), method="mask", progress=False)
    with pytest.raises(InputError, match="method must be one of"):
        linear.explain(marker_data[:10].copy(), method="shap", progress=False)


def test_the_cli_writes_the_folder_and_refuses_bad_input(linear, marker_data, tmp_path):
    model, data = tmp_path / "linear", tmp_path / "cells.h5ad"
    linear.save(model)
    marker_data[:400].copy().write_h5ad(data)
    out = tmp_path / "explain"
    result = run("--quiet", "explain", data, "--model", model, "--out", out, "--max-cells", "300")
    assert result.returncode == 0, result.stderr
    assert "explaining 300 of 400 cells" in result.stdout
    assert "300 cells explained (gradient)" in result.stdout
    assert "GENE" in result.stdout  # symbols, not Ensembl ids, in the summary
    assert (out / "top_genes.csv").exists() and (out / "dotplot.png").exists()
    before = sorted(p.name for p in tmp_path.iterdir())
    for extra, message in (
        (["--method", "mask", "--out", tmp_path / "x"], "no feature mask"),
        (["--out", data], "is a file; choose a folder name"),
    ):
        result = run("--quiet", "explain", data, "--model", model, *extra)
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.fixture(scope="module")
def celltypist_model(marker_data):
    return sclabel.train(marker_data, label_key="cell_type", split_by="donor",
                         model="celltypist", progress=False)  # fmt: skip


def test_a_model_that_leaves_missing_genes_out_explains_what_it_predicts(
    marker_data, celltypist_model
):
    model = celltypist_model
    query = marker_data[:200, 40:].copy()  # 20% of the model's genes missing
    explanation = model.explain(query, method="gradient", min_gene_coverage=0.5, progress=False)
    predicted = model.predict(query, min_gene_coverage=0.5, progress=False).labels
    np.testing.assert_array_equal(explanation.labels, predicted)
    assert (explanation.importance[:, :40] == 0).all()  # missing genes carry no evidence


def test_the_reports_marker_genes_see_missing_genes_as_prediction_does(
    marker_data, celltypist_model
):
    """The report's dot plot ranks genes with the same present-genes mask as predict and
    explain (fewer than PER_LABEL cells per label: the same cells, so the same ranking).
    Without the mask, the last 40 genes read as measured zeros and ~9% of these cells'
    strongest logit is another class, whose genes then count for the predicted label."""
    from sclabel.evaluation.annotation import marker_genes, model_values

    model, query = celltypist_model, marker_data[:400, :160].copy()
    bound = model.input_spec.bind(query, min_gene_coverage=0.5)
    x = model_values(bound, np.arange(query.n_obs))
    explanation = model.explain(query, method="gradient", min_gene_coverage=0.5, progress=False)
    markers = marker_genes(model, x, explanation.labels, n=10, present=bound.present)
    top = explanation.top_genes(10)
    assert markers and set(markers) == set(top)
    for label, positions in markers.items():
        assert [model.genes[i] for i in positions] == top[label], label
