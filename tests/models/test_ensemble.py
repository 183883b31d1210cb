"""Deep ensembles: members with their own seeds, probabilities averaged, one checkpoint."""

import numpy as np
import pytest
import torch

import sclabel
from conftest import FAST, model_batch
from sclabel.errors import InputError


@pytest.fixture(scope="module")
def ensemble_model():
    adata = sclabel.datasets.synthetic(600, 200, 4, 6, seed=1)
    return sclabel.train(
        adata, label_key="cell_type", split_by="donor", ensemble=3, **FAST, model="mlp"
    )


@pytest.fixture
def query():
    return sclabel.datasets.synthetic(120, 200, 4, 6, seed=1, cell_seed=4)


def test_members_differ_by_seed_and_are_recorded(ensemble_model):
    members = ensemble_model.module.members
    assert len(members) == 3 and ensemble_model.ensemble_size == 3
    assert [m["seed"] for m in ensemble_model.metrics["members"]] == [0, 1, 2]
    first = members[0].head.weight
    assert not torch.equal(first, members[1].head.weight)


def test_prediction_is_the_mean_of_member_probabilities(ensemble_model, query):
    prediction = ensemble_model.predict(query, calibrated=False, progress=False)
    batch = model_batch(ensemble_model, query)
    with torch.no_grad():
        members = [
            torch.softmax(m.eval()(batch).logits, 1).numpy() for m in ensemble_model.module.members
        ]
    np.testing.assert_allclose(
        prediction.probabilities, np.mean(members, axis=0), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        prediction.uncertainty, 1 - np.mean(members, axis=0).max(1), rtol=1e-5
    )


def test_ensemble_checkpoint_round_trip(ensemble_model, query, tmp_path):
    ensemble_model.save(tmp_path / "ens")
    loaded = sclabel.Model.load(tmp_path / "ens")
    assert loaded.ensemble_size == 3
    np.testing.assert_array_equal(
        loaded.predict(query, progress=False).probabilities,
        ensemble_model.predict(query, progress=False).probabilities,
    )


def test_ensemble_size_must_be_positive(query):
    with pytest.raises(InputError, match="ensemble must be at least 1"):
        sclabel.train(query, label_key="cell_type", ensemble=0, **FAST, model="mlp")
