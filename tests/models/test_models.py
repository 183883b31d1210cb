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
