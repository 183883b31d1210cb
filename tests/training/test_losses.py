"""Training losses: each against its definition on a hand example, and each trains a model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sclabel
from conftest import FAST
from sclabel.config import TrainConfig
from sclabel.errors import InputError
from sclabel.training.losses import LOSSES, make_loss

LOGITS = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0], [-2.0, 4.0, 0.0]])
Y = np.array([0, 2, 1, 0])
WEIGHT = np.array([0.5, 2.0, 1.5])


def loss(name, weight=None, **options) -> float:
    fn = make_loss(name, weight, 3, **options)
    return float(fn(torch.tensor(LOGITS, dtype=torch.float32), torch.tensor(Y)))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


P = softmax(LOGITS)
P_TRUE = P[np.arange(Y.size), Y]
ONE_HOT = np.eye(3)[Y]


def test_ce_is_the_mean_negative_log_likelihood():
    assert loss("ce") == pytest.approx(-np.log(P_TRUE).mean(), rel=1e-5)
    assert loss("ce", WEIGHT) == loss("ce")  # plain ce ignores class weights


def test_weighted_ce_is_the_weighted_mean():
    w = WEIGHT[Y]
    expected = (w * -np.log(P_TRUE)).sum() / w.sum()
    assert loss("weighted_ce", WEIGHT) == pytest.approx(expected, rel=1e-5)
    assert loss("weighted_ce", None) == pytest.approx(loss("ce"), rel=1e-6)


def test_focal_by_definition_and_equal_to_ce_at_gamma_zero():
    alpha = WEIGHT[Y]
    terms = -alpha * (1 - P_TRUE) ** 2 * np.log(P_TRUE)
    assert loss("focal", WEIGHT) == pytest.approx(terms.sum() / alpha.sum(), rel=1e-5)
    assert loss("focal", WEIGHT, gamma=0.0) == pytest.approx(loss("weighted_ce", WEIGHT), rel=1e-6)
    assert loss("focal", None, gamma=0.0) == pytest.approx(loss("ce"), rel=1e-6)
    assert loss("focal", None, gamma=5.0) < loss("focal", None, gamma=1.0) < loss("ce")


def test_focal_gradient_stays_finite_on_certain_predictions():
    logits = torch.tensor([[80.0, 0.0], [0.0, 80.0]], requires_grad=True)
    make_loss("focal", None, 2, gamma=0.5)(logits, torch.tensor([0, 1])).backward()
    assert torch.isfinite(logits.grad).all()


def test_dice_by_definition():
    smooth = 1.0
    overlap = (P * ONE_HOT).sum(0)
    dice = (2 * overlap + smooth) / (P.sum(0) + ONE_HOT.sum(0) + smooth)
    assert loss("dice") == pytest.approx(1 - dice.mean(), rel=1e-5)
    assert loss("dice", smooth=0.0) == pytest.approx(
        1 - (2 * overlap / (P.sum(0) + ONE_HOT.sum(0))).mean(), rel=1e-5
    )


def test_dice_of_perfect_predictions_is_about_zero():
    perfect = torch.tensor(ONE_HOT * 50.0, dtype=torch.float32)
    assert float(make_loss("dice", None, 3)(perfect, torch.tensor(Y))) < 1e-6
    wrong = torch.tensor(np.roll(ONE_HOT, 1, axis=1) * 50.0, dtype=torch.float32)
    assert float(make_loss("dice", None, 3)(wrong, torch.tensor(Y))) > 0.7


def test_bce_is_one_vs_rest_binary_cross_entropy():
    sigmoid = 1 / (1 + np.exp(-LOGITS))
    per_entry = -(ONE_HOT * np.log(sigmoid) + (1 - ONE_HOT) * np.log(1 - sigmoid))
    assert loss("bce") == pytest.approx(per_entry.sum(1).mean(), rel=1e-5)


def test_unknown_loss_or_option_is_refused_with_the_choices():
    with pytest.raises(InputError, match="ce, weighted_ce, focal, dice, bce"):
        make_loss("hinge", None, 3)
    with pytest.raises(InputError, match="gamma"):
        make_loss("dice", None, 3, gamma=2.0)
    with pytest.raises(InputError, match="unknown loss"):
        TrainConfig(loss="hinge")
    with pytest.raises(InputError, match="focal_gamma"):
        TrainConfig(loss="focal", focal_gamma=-1)


def test_the_default_loss_is_weighted_ce_and_plain_ce_with_upsampling():
    assert TrainConfig().loss == "weighted_ce"
    assert TrainConfig(upsample=True).loss == "ce"
    assert TrainConfig(upsample=0.5, loss="focal").loss == "focal"  # an explicit choice stays


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_trains_above_chance(synthetic, name):
    model = sclabel.train(synthetic, label_key="cell_type", model="linear", loss=name,
                          model_params={"solver": "sgd"}, **FAST)  # fmt: skip
    assert model.train_config.loss == name
    assert model.metrics["test"]["macro_f1"] > 0.5  # 4 balanced types: chance is 0.25
    history = model.metrics["fit"]["history"]
    assert history[-1]["loss"] < history[0]["loss"]


def test_a_solver_family_refuses_a_loss_it_cannot_use(synthetic):
    with pytest.raises(InputError, match="own solver"):
        sclabel.train(synthetic, label_key="cell_type", model="celltypist", loss="focal")
