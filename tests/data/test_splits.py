"""sclabel.data.splits: grouped (donor) and stratified train/val/test splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sclabel.data.splits import make_split
from sclabel.errors import InputError


def donor_table(n_donors: int, cells_per_donor: int = 20, classes=("a", "b", "c"), seed: int = 0):
    """Cells of every class in every donor; returns (labels, groups) indexed by cell name."""
    rng = np.random.default_rng(seed)
    donors = np.repeat([f"donor{d}" for d in range(n_donors)], cells_per_donor)
    labels = np.tile(list(classes), donors.size // len(classes) + 1)[: donors.size]
    labels = rng.permutation(labels)
    index = [f"cell{i}" for i in range(donors.size)]
    return pd.Series(labels, index=index), pd.Series(donors, index=index)


def parts_of_groups(split: pd.Series, groups: pd.Series) -> pd.Series:
    """The set of parts each group's cells landed in."""
    return split.astype(str).groupby(groups.to_numpy()).agg(lambda s: frozenset(s))


def test_grouped_split_never_splits_a_group():
    labels, groups = donor_table(20)
    for seed in range(5):
        split = make_split(labels, groups=groups, seed=seed)
        per_group = parts_of_groups(split, groups)
        assert all(len(parts) == 1 for parts in per_group), per_group


def test_grouped_split_fractions_of_groups():
    labels, groups = donor_table(20)
    split = make_split(labels, groups=groups, seed=3)
    per_group = parts_of_groups(split, groups).map(lambda parts: next(iter(parts)))
    # 20 groups: round(0.15 * 20) = 3 each for val and test, 14 for train
    assert per_group.value_counts().to_dict() == {"train": 14, "val": 3, "test": 3}


def test_grouped_split_returns_series_like_labels():
    labels, groups = donor_table(6)
    split = make_split(labels, groups=groups)
    assert split.name == "split"
    assert split.index.equals(labels.index)
    assert list(split.cat.categories) == ["train", "val", "test"]
    assert split.notna().all()


def test_grouped_split_moves_the_only_donor_of_a_class_into_train():
    labels, groups = donor_table(10, classes=("a", "b"))
    rare = groups == "donor7"
    labels[rare & (np.arange(labels.size) % 2 == 0)] = "rare"  # "rare" lives in donor7 only
    # a naive 6/2/2 split of 10 donors holds donor7 out with probability 0.4 per seed, so
    # over 30 seeds the move into train is exercised (all 30 in train naively: p < 3e-6)
    for seed in range(30):
        split = make_split(labels, groups=groups, seed=seed)
        assert (split[rare] == "train").all(), seed
        for label in labels.unique():
            assert (split[labels == label] == "train").any(), (seed, label)
        assert (split == "val").any() and (split == "test").any(), seed
        assert all(len(parts) == 1 for parts in parts_of_groups(split, groups))


def test_grouped_split_refills_a_part_emptied_by_the_move():
    # three donors, one per part; the rare class lives in donor2 only
    labels = pd.Series(["x"] * 9 + ["rare"] * 3)
    groups = pd.Series(["donor0"] * 3 + ["donor1"] * 3 + ["donor2"] * 6)
    for seed in range(12):
        split = make_split(labels, groups=groups, seed=seed)
        assert (split[groups == "donor2"] == "train").all(), seed
        per_group = parts_of_groups(split, groups).map(lambda parts: next(iter(parts)))
        assert sorted(per_group) == ["test", "train", "val"], (seed, per_group.to_dict())


def test_grouped_split_prefers_training_coverage_over_held_out_parts():
    # each donor is the only source of its class: all must train, nothing is left to hold out
    labels = pd.Series(["a"] * 4 + ["b"] * 4 + ["c"] * 4)
    groups = pd.Series(["d0"] * 4 + ["d1"] * 4 + ["d2"] * 4)
    split = make_split(labels, groups=groups, seed=0)
    assert (split == "train").all()


def test_grouped_split_too_few_groups():
    labels, groups = donor_table(2)
    with pytest.raises(InputError, match=r"2 group\(s\), need at least 3 .*omit --split-by"):
        make_split(labels, groups=groups)


def test_grouped_split_too_few_groups_without_test_part():
    labels, groups = donor_table(1)
    with pytest.raises(InputError, match=r"1 group\(s\), need at least 2 .*more donors/samples"):
        make_split(labels, groups=groups, fractions=(0.8, 0.2, 0.0))


def test_grouped_split_two_groups_enough_without_test_part():
    labels, groups = donor_table(2)
    split = make_split(labels, groups=groups, fractions=(0.7, 0.3, 0.0))
    assert not (split == "test").any()
    assert set(split.astype(str)) == {"train", "val"}


def test_grouped_split_no_test_fraction():
    labels, groups = donor_table(10)
    split = make_split(labels, groups=groups, fractions=(0.7, 0.3, 0.0), seed=4)
    per_group = parts_of_groups(split, groups).map(lambda parts: next(iter(parts)))
    assert per_group.value_counts().to_dict() == {"train": 7, "val": 3}


def test_grouped_split_numeric_groups():
    labels, groups = donor_table(6)
    numeric = groups.str.replace("donor", "").astype(int)
    split = make_split(labels, groups=numeric, seed=2)
    assert all(len(parts) == 1 for parts in parts_of_groups(split, numeric))


@pytest.mark.parametrize("grouped", [True, False])
def test_split_is_deterministic_per_seed(grouped):
    labels, groups = donor_table(20)
    groups = groups if grouped else None
    first = make_split(labels, groups=groups, seed=11)
    again = make_split(labels, groups=groups, seed=11)
    other = make_split(labels, groups=groups, seed=12)
    pd.testing.assert_series_equal(first, again)
    assert not first.equals(other)


# --- stratified ------------------------------------------------------------------------------


def stratified_labels() -> pd.Series:
    values = ["a"] * 100 + ["b"] * 40 + ["c"] * 1 + ["d"] * 2
    order = np.random.default_rng(0).permutation(len(values))
    return pd.Series(np.asarray(values)[order], index=[f"c{i}" for i in range(len(values))])


def test_stratified_split_keeps_class_proportions():
    labels = stratified_labels()
    split = make_split(labels, seed=5)
    table = pd.crosstab(labels, split.astype(str))
    # a: 100 -> 15 val, 15 test; b: 40 -> round(6) each; c, d: too small to hold out
    expected = {
        "a": {"train": 70, "val": 15, "test": 15},
        "b": {"train": 28, "val": 6, "test": 6},
        "c": {"train": 1, "val": 0, "test": 0},
        "d": {"train": 2, "val": 0, "test": 0},
    }
    for label, parts in expected.items():
        for part, n in parts.items():
            assert table.at[label, part] == n, (label, part)


def test_stratified_split_small_classes_keep_one_per_held_out_part():
    labels = pd.Series(["a"] * 3 + ["b"] * 5)
    split = make_split(labels, seed=0)
    table = pd.crosstab(labels, split.astype(str))
    assert table.loc["a"].to_dict() == {"test": 1, "train": 1, "val": 1}
    assert table.loc["b"].to_dict() == {"test": 1, "train": 3, "val": 1}


def test_stratified_split_without_test_part():
    labels = stratified_labels()
    split = make_split(labels, fractions=(0.7, 0.3, 0.0), seed=1)
    assert not (split == "test").any()
    table = pd.crosstab(labels, split.astype(str))
    assert table.at["a", "train"] == 70 and table.at["a", "val"] == 30
    assert table.at["b", "train"] == 28 and table.at["b", "val"] == 12


def test_stratified_split_index_and_type():
    labels = stratified_labels()
    split = make_split(labels)
    assert split.index.equals(labels.index)
    assert split.name == "split"
    assert list(split.cat.categories) == ["train", "val", "test"]
    assert split.notna().all()


def test_groups_with_one_label_each_are_stratified_by_it():
    """Severity belongs to a patient: with 3 patients per class, every part gets each class
    (random dealing of 9 patients leaves a class out of val or test in most seeds)."""
    patients = np.repeat([f"p{i}" for i in range(9)], 20)
    severity = np.repeat(["mild", "severe", "control"] * 3, 20)
    labels = pd.Series(severity)
    for seed in range(10):
        split = make_split(labels, groups=pd.Series(patients), seed=seed)
        for part in ("train", "val", "test"):
            assert set(labels[split == part]) == {"mild", "severe", "control"}
        per_patient = pd.Series(split.to_numpy()).groupby(patients).nunique()
        assert (per_patient == 1).all()  # patients stay whole
