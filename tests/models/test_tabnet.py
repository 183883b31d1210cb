"""TabNet with 1.5-entmax attention (scTab) and its explanations."""

import numpy as np
import pytest
import torch

import sclabel
from conftest import model_batch
from sclabel.errors import InputError
from sclabel.models import build
from sclabel.models.tabnet import GhostBatchNorm


@pytest.fixture(scope="module")
def marker_data():
    return sclabel.datasets.synthetic(2000, 300, 4, 6, markers_per_type=10, marker_fold=6.0, seed=1)


@pytest.fixture(scope="module")
def tabnet(marker_data):
    return sclabel.train(
        marker_data, label_key="cell_type", split_by="donor", model="tabnet", progress=False
    )


@pytest.mark.slow
def test_entmax_masks_are_sparse_distributions_over_genes(marker_data):
    model = sclabel.train(
        marker_data, label_key="cell_type", model="tabnet", max_epochs=3, progress=False,
        model_params={"n_steps": 2, "n_d": 16, "n_a": 16},
    )  # fmt: skip
    batch = model_batch(model, marker_data[:64].copy())
    with torch.no_grad():
        masks = [mask for mask, _ in model.module.eval()._steps(batch["x"])]
    assert len(masks) == 2
    for mask in masks:
        assert (mask >= 0).all()
        torch.testing.assert_close(mask.sum(dim=1), torch.ones(64))
        assert (mask == 0).float().mean() > 0.2  # entmax gives exact zeros; softmax never does


def test_sparsity_term_is_lambda_times_mask_entropy():
    torch.manual_seed(0)
    module = build("tabnet", 50, 3, {"n_d": 8, "n_a": 8, "lambda_sparse": 0.5}).eval()
    x = torch.rand(10, 50)
    ((mask, _),) = list(module._steps(x))
    entropy = (-mask * torch.log(mask + 1e-15)).sum(dim=1).mean()
    torch.testing.assert_close(module({"x": x}).loss_terms["sparsity"], 0.5 * entropy)


def test_ghost_batch_norm_normalizes_each_virtual_batch():
    bn = GhostBatchNorm(3, virtual_batch_size=100, momentum=0.1).train()
    x = torch.cat([torch.randn(100, 3) + 5, torch.randn(100, 3) - 5])
    out = bn(x)
    for chunk in out.split(100):  # each half centred on its own mean, not the global one
        torch.testing.assert_close(chunk.mean(0), torch.zeros(3), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_tabnet_learns_and_uses_the_paper_training_settings(tabnet, marker_data):
    assert tabnet.metrics["test"]["macro_f1"] > 0.9
    config = tabnet.train_config
    assert (config.lr, config.weight_decay, config.grad_clip) == (0.005, 0.05, 1.0)
    assert tabnet.model_config.params["n_d"] == 128 and tabnet.model_config.params["n_a"] == 64
    override = sclabel.train(
        marker_data, label_key="cell_type", model="tabnet", lr=0.01, max_epochs=1, progress=False
    )
    assert override.train_config.lr == 0.01


def test_tabnet_checkpoint_round_trip(tabnet, marker_data, tmp_path):
    query = marker_data[:200].copy()
    tabnet.save(tmp_path / "tabnet")
    loaded = sclabel.Model.load(tmp_path / "tabnet")
    np.testing.assert_array_equal(
        loaded.predict(query, progress=False).probabilities,
        tabnet.predict(query, progress=False).probabilities,
    )


def test_explain_finds_the_marker_genes(tabnet, marker_data):
    explanation = tabnet.explain(marker_data[:600].copy(), progress=False)
    assert explanation.importance.shape == (600, 300)
    np.testing.assert_allclose(explanation.importance.sum(axis=1), 1.0, rtol=1e-5)
    # the most differentially expressed genes of each type, computed from the data itself
    X = marker_data.X.toarray()
    X /= X.sum(axis=1, keepdims=True)
    types = marker_data.obs["cell_type"].to_numpy()
    for label, top in explanation.top_genes(10).items():
        fold = X[types == label].mean(0) / X[types != label].mean(0)
        markers = {marker_data.var_names[i] for i in np.argsort(-fold)[:10]}
        assert len(markers & set(top)) >= 3, label  # chance level is 10 * 10 / 300 = 0.3
    assert explanation.per_class().shape == (4, 300)


def test_explain_needs_a_feature_mask(trained_model, marker_data):
    with pytest.raises(InputError, match="no feature mask.*tabnet"):
        trained_model.explain(marker_data[:10].copy(), progress=False)


def test_batch_norm_statistics_are_recomputed_from_training_batches():
    from sclabel.training.loop import recalibrate_batch_norm

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(3, momentum=0.02)

        def forward(self, batch):
            return self.bn(batch["x"])

    module = Tiny().eval()
    batches = [{"x": torch.randn(16, 3) * 2 + 5, "y": torch.zeros(16)} for _ in range(4)]
    recalibrate_batch_norm(module, batches, "cpu")
    means = torch.stack([b["x"].mean(0) for b in batches]).mean(0)
    variances = torch.stack([b["x"].var(0) for b in batches]).mean(0)
    assert torch.allclose(module.bn.running_mean, means, atol=1e-5)
    assert torch.allclose(module.bn.running_var, variances, atol=1e-4)
    assert module.bn.momentum == 0.02 and not module.training


def test_partial_sort_entmax_on_many_genes_is_exact():
    from entmax import entmax15

    from sclabel.models.tabnet import ENTMAX_FULL_SORT_MAX, AttentiveTransformer, TabNetParams

    n_genes = ENTMAX_FULL_SORT_MAX + 500
    layer = AttentiveTransformer(8, n_genes, TabNetParams()).eval()
    assert layer.top_k is not None
    a, prior = torch.randn(64, 8), torch.ones(64, n_genes)
    expected = entmax15(layer.bn(layer.fc(a)) * prior, dim=-1)
    torch.testing.assert_close(layer(a, prior), expected)
