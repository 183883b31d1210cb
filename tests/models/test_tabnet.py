"""TabNet with 1.5-entmax attention (scTab) and its explanations."""

import json

import numpy as np
import pytest
import scipy.sparse as sp
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


def test_tabnet_checkpoint_round_trip(marker_data, tmp_path):
    query = marker_data[:200].copy()
    small = {"n_steps": 2, "n_d": 16, "n_a": 16}  # the round trip, not the accuracy
    tabnet = sclabel.train(marker_data[:600].copy(), label_key="cell_type", model="tabnet",
                           max_epochs=2, model_params=small, progress=False)  # fmt: skip
    tabnet.save(tmp_path / "tabnet")
    loaded = sclabel.Model.load(tmp_path / "tabnet")
    np.testing.assert_array_equal(
        loaded.predict(query, progress=False).probabilities,
        tabnet.predict(query, progress=False).probabilities,
    )


@pytest.fixture(scope="module")
def standardized_tabnet(marker_data):
    """With scTab's input norm: the attention ranks standardized genes (see tabnet.py)."""
    return sclabel.train(marker_data, label_key="cell_type", split_by="donor", model="tabnet",
                         model_params={"input_norm": "batch"}, progress=False)  # fmt: skip


@pytest.mark.slow
def test_explain_finds_the_marker_genes(standardized_tabnet, marker_data):
    explanation = standardized_tabnet.explain(marker_data[:600].copy(), progress=False)
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
    with pytest.raises(InputError, match="no feature mask.*gradient.*tabnet"):
        trained_model.explain(marker_data[:10].copy(), method="mask", progress=False)


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


@pytest.mark.parametrize(("n", "chunks"), [(257, [257]), (513, [256, 257]), (1, [1])])
def test_ghost_batch_norm_never_normalizes_a_single_cell(n, chunks):
    """A batch of 256k+1 cells crashed training ("Expected more than 1 value per channel")."""
    bn = GhostBatchNorm(3, virtual_batch_size=256, momentum=0.1).train()
    sizes = []
    real = bn.bn.forward
    bn.bn.forward = lambda x: sizes.append(x.shape[0]) or real(x)
    out = bn(torch.randn(n, 3))
    assert out.shape == (n, 3) and torch.isfinite(out).all()
    assert sorted(sizes) == sorted(chunks if n > 1 else [])  # one cell: running statistics


def test_tabnet_trains_on_batches_of_257_cells():
    adata = sclabel.datasets.synthetic(800, 60, 3, 4, seed=0)
    part = np.array(["train"] * 514 + ["val"] * 143 + ["test"] * 143, dtype=object)
    adata.obs["part"] = np.random.default_rng(0).permutation(part)
    model = sclabel.train(adata, label_key="cell_type", split_key="part", model="tabnet",
                          batch_size=257, max_epochs=1, progress=False,
                          model_params={"n_d": 8, "n_a": 8})  # fmt: skip
    assert model.metrics["fit"]["batch_size"] == 257


def test_a_gene_no_training_cell_expressed_is_not_amplified():
    """scTab's input BatchNorm divides by a running variance of ~0 for such a gene: ~300x."""
    adata = sclabel.datasets.synthetic(600, 50, 3, 4, seed=0)
    X = adata.X.toarray()
    X[:, 0] = 0  # gene 0: never seen in training
    adata.X = sp.csr_matrix(X)
    options = dict(label_key="cell_type", model="tabnet", max_epochs=3, progress=False)
    small = {"n_d": 8, "n_a": 8}
    safe = sclabel.train(adata, model_params=small, **options)  # the default: no input norm
    scTab = sclabel.train(adata, model_params={**small, "input_norm": "batch"}, **options)
    query = adata[:20].copy()
    X = query.X.toarray()
    X[:, 0] = np.round(X.sum(axis=1) * 0.05)  # the query cells do express it
    query.X = sp.csr_matrix(X)

    def network_input(model) -> torch.Tensor:
        """What the feature transformers see: the input after the model's input norm."""
        module, x = model.module.eval(), model_batch(model, query)["x"]
        with torch.no_grad():
            return x if module.input_bn is None else module.input_bn(x)

    def largest_logit(model) -> float:
        with torch.no_grad():
            return float(model.module.eval()(model_batch(model, query)).logits.abs().max())

    seen = network_input(safe)
    assert float(seen[:, 0].abs().max()) < 10  # the unseen gene: not amplified
    assert float(network_input(scTab)[:, 0].abs().max()) > 100  # what scTab's layer does
    assert largest_logit(safe) < 20


def test_tabnet_checkpoints_from_before_input_norm_load_as_they_were(marker_data, tmp_path):
    model = sclabel.train(marker_data[:600].copy(), label_key="cell_type", model="tabnet",
                          max_epochs=1, progress=False,
                          model_params={"n_d": 8, "n_a": 8, "input_norm": "batch"})  # fmt: skip
    model.save(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["hyperparameters"]["input_norm"]  # as sclabel 0.1 saved a tabnet
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    loaded = sclabel.Model.load(tmp_path / "old")
    assert loaded.model_config.params["input_norm"] == "batch"
    query = marker_data[600:700].copy()
    np.testing.assert_array_equal(
        loaded.predict(query, progress=False).probabilities,
        model.predict(query, progress=False).probabilities,
    )
