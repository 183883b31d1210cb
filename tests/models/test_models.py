import pytest
import torch

from sclabel.errors import InputError
from sclabel.models import MODELS, build, resolve_params

# the pretrained families take their architecture from a pretrained folder; tiny ones here
PRETRAINED = {
    "bert": {
        "architecture": {
            "vocab_size": 40,
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        }
    },
    "perceiver": {"architecture": {"n_tokens": 40, "d_model": 16, "n_latents": 4, "n_heads": 2}},
}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_every_family_maps_a_batch_to_logits(family):
    module = build(family, n_genes=30, n_classes=4, params=PRETRAINED.get(family, {}))
    if family in PRETRAINED:  # genes -> tokens, as `bind` does before training
        module.cells.gene_token.copy_(torch.arange(30) + 2)
    out = module({"x": torch.rand(5, 30)})
    assert out.logits.shape == (5, 4)
    assert torch.isfinite(out.logits).all()


def test_mlp_hyperparameters_shape_the_network():
    module = build("mlp", 30, 3, {"depth": 3, "width": 16, "dropout": 0.0, "activation": "gelu"})
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [16, 16, 16, 3]
    assert any(isinstance(m, torch.nn.GELU) for m in module.modules())
    out = module({"x": torch.rand(2, 30)})
    assert out.embedding.shape == (2, 16)


def test_linear_is_one_affine_map():
    module = build("linear", 10, 3, {})
    x = torch.rand(4, 10)
    expected = x @ module.linear.weight.T + module.linear.bias
    torch.testing.assert_close(module({"x": x}).logits, expected)


def test_linear_full_batch_reaches_the_logistic_regression_optimum():
    # the same objective as scikit-learn's multinomial LogisticRegression(C): mean CE plus
    # ||W||^2 / (2 C n), intercept not penalized; both solvers must land on one optimum
    import dataclasses

    import numpy as np
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    from sclabel.config import TrainConfig

    rng = np.random.default_rng(0)
    X = rng.random((300, 12)).astype(np.float32)
    y = (X[:, 0] * 3 + X[:, 1] * 2 + rng.normal(0, 0.3, 300)).astype(int).clip(0, 3)
    module = build("linear", 12, 4, {"solver": "lbfgs", "C": 0.5, "max_iter": 500})
    config = dataclasses.replace(TrainConfig(), loss="ce")
    assert module.fits_directly(sp.csr_matrix(X), augmented=False, config=config)
    result = module.fit_direct((sp.csr_matrix(X), y), None, class_weight=None, config=config)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    reference = LogisticRegression(C=0.5, max_iter=5000, tol=1e-10).fit(X, y)
    ours = module.linear.weight.detach().numpy()
    # softmax weights are defined up to a shift shared by all classes: compare centred
    np.testing.assert_allclose(ours - ours.mean(0), reference.coef_ - reference.coef_.mean(0),
                               atol=2e-3)  # fmt: skip
    proba = torch.softmax(module({"x": torch.from_numpy(X)}).logits, 1).detach().numpy()
    np.testing.assert_allclose(proba, reference.predict_proba(X), atol=1e-3)


def test_forcing_the_full_batch_solver_where_it_cannot_run_is_refused():

    import numpy as np

    from sclabel.config import TrainConfig

    module = build("linear", 4, 2, {"solver": "lbfgs"})
    X = np.ones((3, 4), np.float32)
    with pytest.raises(InputError, match="solver 'sgd'"):
        module.fits_directly(X, augmented=True, config=TrainConfig())
    with pytest.raises(InputError, match="solver 'sgd'"):
        module.fits_directly(X, augmented=False, config=TrainConfig(loss="focal"))
    with pytest.raises(InputError, match="linear solver must be one of"):
        build("linear", 4, 2, {"solver": "newton"})
    # "auto" picks the full batch on small data, but leaves a DDP run (several devices) to
    # the gradient loop that runs one process per device
    auto = build("linear", 4, 2, {"solver": "auto"})
    assert auto.fits_directly(X, augmented=False, config=TrainConfig(loss="ce"))
    assert not auto.fits_directly(X, augmented=False, config=TrainConfig(loss="ce"),
                                  distributed=True)  # fmt: skip


def test_resolve_params_fills_defaults():
    assert resolve_params("mlp", {"width": 8}) == {
        "depth": 2,
        "width": 8,
        "dropout": 0.2,
        "activation": "relu",
        "hidden": (),
        "norm": "layer",
    }


@pytest.mark.parametrize(
    ("family", "params", "message"),
    [
        ("transformer9", {}, "unknown model family"),
        ("mlp", {"widht": 8}, r"unknown hyperparameter.*widht"),
        ("mlp", {"activation": "swish2"}, "unknown activation"),
        ("mlp", {"dropout": 1.5}, "dropout"),
        ("mlp", {"depth": 0}, "depth"),
        ("bert", {"pooling": "max"}, "pooling"),
        ("bert", {"from_dir": "/nonexistent"}, "no config.json"),
    ],
)
def test_bad_model_options_are_refused(family, params, message):
    with pytest.raises(InputError, match=message):
        resolve_params(family, params)
