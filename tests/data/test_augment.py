"""Donor-difference augmentation: each step on hand-built data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import sclabel
from conftest import FAST
from sclabel.data import augment
from sclabel.data.augment import AugmentConfig, DonorAugmentation


def test_even_subsample_takes_the_same_number_per_type_or_all_of_a_rare_one():
    types = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 5)
    rows = augment.even_subsample(types, max_cells=30, rng=np.random.default_rng(0))
    counts = dict(zip(*np.unique(types[rows], return_counts=True), strict=True))
    assert counts == {"a": 10, "b": 10, "c": 5}
    assert np.unique(rows).size == rows.size


def test_centroids_are_means_per_type_and_donor():
    X = sp.csr_matrix(np.array([[1.0, 0], [3.0, 2], [5.0, 4], [0, 8]]))
    means, pairs = augment.centroids(
        X, np.array(["a", "a", "a", "b"]), np.array(["1", "1", "2", "1"])
    )
    found = {pair: means[i].tolist() for i, pair in enumerate(pairs)}
    assert found == {("a", "1"): [2.0, 1.0], ("a", "2"): [5.0, 4.0], ("b", "1"): [0.0, 8.0]}


def test_difference_vectors_pair_donors_within_a_type_only():
    means = np.array([[1.0], [2.0], [4.0], [10.0]], dtype=np.float32)
    pairs = [("a", "1"), ("a", "2"), ("a", "3"), ("b", "1")]  # b has one donor: no pair
    diffs = augment.difference_vectors(means, pairs, 100, np.random.default_rng(0))
    assert sorted(np.abs(diffs).ravel().tolist()) == [1.0, 2.0, 3.0]
    capped = augment.difference_vectors(means, pairs, 2, np.random.default_rng(0))
    assert capped.shape == (2, 1)


def test_threshold_zeroes_small_entries_and_clamps_large_ones():
    v = np.array([[0.25, -0.2, 0.5, -1.0, 2.0, -7.0]])
    assert augment.threshold(v, 0.25, 1.5).tolist() == [[0.0, 0.0, 0.5, -1.0, 1.5, -1.5]]


def test_small_clusters_are_dropped():
    rng = np.random.default_rng(0)
    big_a = rng.normal(0, 0.01, (20, 4)) + [1, 0, 0, 0]
    big_b = rng.normal(0, 0.01, (20, 4)) + [0, 1, 0, 0]
    outlier = np.array([[0, 0, 0, 9.0]])
    vectors = np.vstack([big_a, big_b, outlier]).astype(np.float32)
    kept, sizes = augment.keep_large_clusters(vectors, 3, min_fraction=0.1, seed=0)
    assert sorted(sizes.tolist()) == [1, 20, 20]
    assert kept.shape == (40, 4)
    assert not (kept[:, 3] > 1).any()


def _two_donor_data():
    """Type a: donor 2 = donor 1 + [1, 0.1, 3] on genes 0-2; type b in donor 1 only."""
    base = np.array([2.0, 2.0, 2.0, 1.0])
    shift = np.array([1.0, 0.1, 3.0, 0.0])
    rows = [base] * 4 + [base + shift] * 4 + [np.array([0, 0, 0, 5.0])] * 4
    types = np.array(["a"] * 8 + ["b"] * 4)
    donors = np.array(["1"] * 4 + ["2"] * 4 + ["1"] * 4)
    return sp.csr_matrix(np.array(rows)), types, donors


def test_fit_augmentation_follows_the_papers_steps():
    X, types, donors = _two_donor_data()
    result = augment.fit_augmentation(X, types, donors, AugmentConfig(n_clusters=1), seed=0)
    # one pair (a/1, a/2): |diff| = [1, 0.1->0, 3->1.5, 0]
    assert len(result) == 1
    assert np.abs(result.vectors.toarray()).tolist() == [[1.0, 0.0, 1.5, 0.0]]
    assert result.info["difference_vectors"] == 1 and result.info["centroids"] == 3


def test_fit_augmentation_needs_two_donors_of_one_type():
    X, types, _ = _two_donor_data()
    with pytest.raises(sclabel.InputError, match="at least 2 donors"):
        augment.fit_augmentation(X, types, np.array(["1"] * 12))
    donors = np.array(["1"] * 8 + ["2"] * 4)  # a only in 1, b only in 2
    with pytest.raises(sclabel.InputError, match="no cell type seen in two donors"):
        augment.fit_augmentation(X, types, donors)


def test_apply_adds_or_subtracts_a_vector_then_clamps():
    vectors = sp.csr_matrix(np.array([[1.0, -1.0, 0.0]], dtype=np.float32))
    aug = DonorAugmentation(vectors, AugmentConfig(prob=1.0, max_value=9.0), {})
    x = torch.tensor([[0.5, 0.5, 8.5]] * 200)
    out = aug.apply(x, np.random.default_rng(0))
    plus = torch.tensor([1.5, 0.0, 8.5])
    minus = torch.tensor([0.0, 1.5, 8.5])
    is_plus = (out == plus).all(1)
    assert (is_plus | (out == minus).all(1)).all()
    assert 50 < int(is_plus.sum()) < 150  # both signs drawn
    assert torch.equal(x, torch.tensor([[0.5, 0.5, 8.5]] * 200))  # input untouched
    none = DonorAugmentation(vectors, AugmentConfig(prob=0.0), {})
    assert torch.equal(none.apply(x, np.random.default_rng(0)), x)


def test_variance_explained_known_answers():
    types = np.repeat(["a", "b"], 50)
    donors = np.tile(["1", "2"], 50)
    X = np.where(types == "a", 1.0, 3.0)[:, None] * np.ones((1, 3))
    r2 = augment.variance_explained(X, types, donors)
    assert r2["r2_cell_type"] == pytest.approx(1.0)
    assert r2["r2_donor"] == pytest.approx(0.0, abs=1e-9)
    assert r2["r2_cell_type_and_donor"] == pytest.approx(1.0)
    noisy = X + np.random.default_rng(0).normal(0, 1, X.shape)
    r2 = augment.variance_explained(noisy, types, donors)
    assert r2["r2_cell_type"] <= r2["r2_cell_type_and_donor"] < 1.0


@pytest.mark.slow
def test_augmentation_lowers_the_donor_share_of_variance():
    adata = sclabel.datasets.synthetic(1500, 200, 3, 6, seed=4, donor_sd=0.6, marker_fold=2.0)
    model = sclabel.train(
        adata,
        label_key="cell_type",
        split_by="donor",
        augment={"prob": 1.0},
        **FAST,
        model="mlp",
    )
    r2 = model.metrics["augmentation"]["variance_explained"]
    assert r2["after"]["r2_donor"] < r2["before"]["r2_donor"]


def test_training_with_augmentation_saves_the_vectors(synthetic, tmp_path):
    plain = sclabel.train(synthetic, label_key="cell_type", split_by="donor", **FAST, model="mlp")
    model = sclabel.train(
        synthetic, label_key="cell_type", split_by="donor", augment=True, **FAST, model="mlp"
    )
    assert not torch.equal(plain.module.body[0].weight, model.module.body[0].weight)
    assert model.metrics["augmentation"]["kept_vectors"] == len(model.augmentation) > 0
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "augmentation.safetensors").is_file()
    loaded = sclabel.Model.load(tmp_path / "m")
    assert (loaded.augmentation.vectors != model.augmentation.vectors).nnz == 0
    assert loaded.augmentation.config == model.augmentation.config
    (tmp_path / "m" / "augmentation.safetensors").write_bytes(b"damaged")
    with pytest.raises(sclabel.InputError, match="checksum"):
        sclabel.Model.load(tmp_path / "m")


def test_augmentation_needs_donors_and_a_gradient_family(synthetic):
    with pytest.raises(sclabel.InputError, match="needs donors"):
        sclabel.train(synthetic, label_key="cell_type", augment=True, **FAST, model="mlp")
    with pytest.raises(sclabel.InputError, match="gradient-trained"):
        sclabel.train(
            synthetic, label_key="cell_type", split_by="donor", model="celltypist", augment=True
        )
    with pytest.raises(sclabel.InputError, match="prob"):
        AugmentConfig(prob=2.0)
