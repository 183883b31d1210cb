"""Building blocks for patient-level disease classification (issue 6, GSE158055-style).

Synthetic cohort, balanced sampling, patient splits, patient aggregation, per-cell-type
scores and the k-means baseline. Warnings are errors here (pyproject) unless asserted.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import NearestCentroid

from sclabel.data.balance import (
    balanced_per_cell_type,
    cell_level_split,
    choose_cell_types,
    patient_kfold,
    patient_split,
)
from sclabel.datasets import synthetic_cohort
from sclabel.errors import InputError
from sclabel.evaluation.clustering import elbow, kmeans_baseline
from sclabel.evaluation.patients import aggregate, fit_cell_type_weights, patient_metrics
from sclabel.evaluation.per_cell_type import (
    best_and_worst,
    per_cell_type_metrics,
    per_cell_type_plot,
)

SEV = ("control", "mild", "severe")


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(seed=0)


@pytest.fixture(scope="module")
def cohort_pcs(cohort):
    """30 PCs of log-normalized counts (unsupervised, so shared by both splits)."""
    x = cohort.X.toarray()
    x = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    return PCA(30, random_state=0).fit_transform(x)


# --- synthetic cohort --------------------------------------------------------------------


def test_cohort_structure(cohort):
    obs = cohort.obs
    assert {"patient", "cell_type", "severity", "state"} <= set(obs.columns)
    per_patient = obs.groupby("patient", observed=True)[["severity", "state"]].nunique()
    assert (per_patient == 1).all().all()  # sample-level labels
    assert obs["patient"].nunique() == 24 and obs["cell_type"].nunique() == 6
    controls = obs["severity"] == "control"
    assert (obs.loc[controls, "state"] == "control").all()
    assert (obs.loc[~controls, "state"] != "control").all()
    assert set(obs["severity"]) == {"control", "mild", "severe"}
    assert set(obs["state"]) == {"control", "progression", "convalescence"}
    signal = list(cohort.uns["signal_cell_types"])
    assert signal and set(signal) < set(obs["cell_type"])
    x = cohort.X.toarray()
    x = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    genes = cohort.var_names.get_indexer(cohort.uns["severity_genes"][signal[0]])
    for cell_type in (signal[0], "type_5"):  # severity genes rise with severity only in signal
        cells = (obs["cell_type"] == cell_type).to_numpy()
        means = [x[cells & (obs["severity"] == s).to_numpy()][:, genes].mean() for s in SEV]
        rises = means[0] + 0.3 < means[1] < means[2] - 0.2
        assert rises == (cell_type in signal), (cell_type, means)
    proportions = pd.crosstab(obs["patient"], obs["cell_type"], normalize="index")
    assert proportions.std(axis=0).min() > 0.01  # proportions vary by patient
    assert np.allclose(cohort.X.data, np.round(cohort.X.data))  # raw counts
    again = synthetic_cohort(seed=0)
    assert (again.X != cohort.X).nnz == 0  # seeded


def test_cohort_patient_effect_identifies_patients(cohort):
    """Cells of one patient resemble each other, even in a type without disease signal."""
    noise_type = sorted(set(cohort.obs["cell_type"]) - set(cohort.uns["signal_cell_types"]))[0]
    cells = (cohort.obs["cell_type"] == noise_type).to_numpy()
    x = cohort.X[cells].toarray()
    x = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    patients = cohort.obs["patient"].astype(str).to_numpy()[cells]
    accuracy = cross_val_score(NearestCentroid(), x, patients, cv=3).mean()
    assert accuracy > 10 / 24  # chance is 1/24


def test_cell_level_split_overstates_accuracy(cohort, cohort_pcs):
    """The point of issue 6: a random-cell split scores patient recognition."""
    y = cohort.obs["severity"].astype(str).to_numpy()

    def score(split):
        train, test = (split == "train").to_numpy(), (split == "test").to_numpy()
        model = LogisticRegression(max_iter=2000).fit(cohort_pcs[train], y[train])
        return model.score(cohort_pcs[test], y[test])

    with pytest.warns(UserWarning, match="leak"):
        leaky = score(cell_level_split(cohort.obs, "severity", allow_patient_leak=True))
    honest = np.mean([score(s) for s in patient_kfold(cohort.obs, "patient", "severity", k=3)])
    assert leaky > honest + 0.2, (leaky, honest)


# --- balanced sampling, subsets, splits --------------------------------------------------


def toy_obs() -> pd.DataFrame:
    """Types with known label counts: A 100/80/60, B 30/30/30, C 5/50/50, D 40/40/0."""
    counts = {"A": (100, 80, 60), "B": (30, 30, 30), "C": (5, 50, 50), "D": (40, 40, 0)}
    rows = [
        (t, label)
        for t, n in counts.items()
        for label, k in zip(("x", "y", "z"), n, strict=True)
        for _ in range(k)
    ]
    return pd.DataFrame(rows, columns=["cell_type", "label"])


def test_balanced_equal_labels_per_type(caplog):
    obs = toy_obs()
    with caplog.at_level(logging.INFO, logger="sclabel"):
        rows = balanced_per_cell_type(obs, "label", "cell_type", min_per_type=30, seed=1)
    assert len(set(rows)) == rows.size
    table = pd.crosstab(obs["cell_type"].iloc[rows], obs["label"].iloc[rows])
    assert table.to_dict(orient="index") == {
        "A": {"x": 60, "y": 60, "z": 60},
        "B": {"x": 30, "y": 30, "z": 30},
    }
    assert "dropped 2 cell type(s)" in caplog.text and "'C': 15" in caplog.text
    capped = balanced_per_cell_type(obs, "label", "cell_type", cap_per_type=31, seed=1)
    counts = pd.crosstab(obs["cell_type"].iloc[capped], obs["label"].iloc[capped])
    assert (counts.loc[["A", "B"]] == 10).all().all() and (counts.loc["C"] == 5).all()
    chosen = balanced_per_cell_type(obs, "label", "cell_type", cap_per_type={"A": 9})
    assert set(obs["cell_type"].iloc[chosen]) == {"A"} and chosen.size == 9
    other = balanced_per_cell_type(obs, "label", "cell_type", min_per_type=30, seed=2)
    assert not np.array_equal(rows, other)  # the seed draws other cells


def test_choose_cell_types_most_prevalent_reaches_total():
    obs = pd.DataFrame(
        {"cell_type": np.repeat(["A", "B", "C", "D", "E"], [600, 450, 300, 120, 60])}
    )
    obs["label"] = np.tile(["x", "y", "z"], len(obs) // 3)
    wide = choose_cell_types(obs, "cell_type", total=600, min_per_type=150, label_key="label")
    assert wide.cell_types == ["A", "B", "C"]  # D, E are too small
    assert wide.table["cells"].sum() == 600 and (wide.table["cells"] >= 150).all()
    assert wide.skipped == ["D", "E"] and "| C |" in wide.to_markdown()
    deep = choose_cell_types(obs, "cell_type", total=600, min_per_type=300)
    assert deep.cell_types == ["A", "B"] and deep.caps() == {"A": 300, "B": 300}
    uneven = choose_cell_types(obs, "cell_type", total=1300, min_per_type=300)
    assert uneven.caps() == {"A": 550, "B": 450, "C": 300}  # C and B full, A the rest
    rows = balanced_per_cell_type(obs, "label", "cell_type", cap_per_type=wide.caps())
    assert rows.size == 600
    with pytest.raises(InputError, match="lower total or min_per_type"):
        choose_cell_types(obs, "cell_type", total=5000, min_per_type=100)


def test_patient_split_keeps_patients_whole(cohort):
    split = patient_split(cohort.obs, "patient", "severity", seed=3)
    parts = split.astype(str).groupby(cohort.obs["patient"].to_numpy()).nunique()
    assert (parts == 1).all()
    for part in ("train", "val", "test"):  # stratified: every severity in every part
        assert set(cohort.obs["severity"][split == part]) == {"control", "mild", "severe"}
    folds = patient_kfold(cohort.obs, "patient", "state", k=4)
    tested = pd.concat([cohort.obs["patient"][f == "test"] for f in folds])
    assert tested.groupby(tested.to_numpy()).size().size == 24  # each patient tested ...
    assert sum(f.eq("test").sum() for f in folds) == len(cohort.obs)  # ... exactly once
    for f in folds:
        assert (f.astype(str).groupby(cohort.obs["patient"].to_numpy()).nunique() == 1).all()
        assert (f == "val").any()


def test_cell_level_split_needs_consent_and_warns(cohort):
    with pytest.raises(InputError, match="allow_patient_leak"):
        cell_level_split(cohort.obs, "severity")
    with pytest.warns(UserWarning, match="24 of 24 patients"):
        cell_level_split(cohort.obs, "severity", allow_patient_leak=True, patient_key="patient")


# --- patient-level answers ---------------------------------------------------------------

CLASSES = ["a", "b", "c"]


def hand_cells() -> tuple[np.ndarray, np.ndarray]:
    proba = [
        [0.7, 0.2, 0.1],  # p1: votes a, a, b; mean a
        [0.6, 0.3, 0.1],
        [0.1, 0.8, 0.1],
        [0.6, 0.3, 0.1],  # p2: one vote each for a and b; tie -> b (mean 0.40 > 0.35)
        [0.1, 0.5, 0.4],
        [0.2, 0.2, 0.6],  # p3: c
        [0.4, 0.35, 0.25],  # p4: votes a, a, b but mean b (0.533 > 0.267)
        [0.4, 0.35, 0.25],
        [0.0, 0.9, 0.1],
    ]
    patients = ["p1"] * 3 + ["p2"] * 2 + ["p3"] + ["p4"] * 3
    return np.array(proba), np.array(patients)


def test_aggregate_mean_and_vote_by_hand():
    proba, patients = hand_cells()
    mean = aggregate(proba, patients, method="mean", classes=CLASSES)
    expected = [
        [1.4 / 3, 1.3 / 3, 0.1],
        [0.35, 0.40, 0.25],
        [0.2, 0.2, 0.6],
        [0.8 / 3, 1.6 / 3, 0.2],
    ]
    assert list(mean.index) == ["p1", "p2", "p3", "p4"] and list(mean.columns) == CLASSES
    np.testing.assert_allclose(mean.to_numpy(), expected)
    assert mean.idxmax(axis=1).tolist() == ["a", "b", "c", "b"]
    kwargs = {"cell_types": ["T"] * 9, "weights": {"other": 1.0}}  # no weighted type: mean
    fallback = aggregate(proba, patients, method="weighted", classes=CLASSES, **kwargs)
    pd.testing.assert_frame_equal(fallback, mean)
    vote = aggregate(pd.DataFrame(proba, columns=CLASSES), patients, method="vote")
    assert vote.idxmax(axis=1).tolist() == ["a", "b", "c", "a"]
    np.testing.assert_allclose(vote.sum(axis=1), 1.0)
    assert vote.loc["p1", "a"] > 0.5 > vote.loc["p1", "b"] > vote.loc["p1", "c"]


def informative_and_noise(n_patients: int, seed: int):
    """Type 'signal' points at the true class; the more numerous 'noise' cells confidently
    point at a random class per patient, which misleads the plain mean."""
    rng = np.random.default_rng(seed)
    proba, y, patients, types = [], [], [], []
    for p in range(n_patients):
        label = p % 3
        favourite = rng.integers(0, 3)
        signal = 0.5 * np.eye(3)[label] + 0.5 * rng.dirichlet([1, 1, 1], size=10)
        noise = 0.1 + 0.7 * np.eye(3)[np.full(40, favourite)]
        proba += [signal, noise]
        y += [CLASSES[label]] * 50
        patients += [f"s{seed}p{p}"] * 50
        types += ["signal"] * 10 + ["noise"] * 40
    return np.vstack(proba), np.array(y), np.array(patients), np.array(types)


@pytest.mark.parametrize("rule", ["log_likelihood", "accuracy"])
def test_weighted_aggregation_prefers_the_informative_type(rule):
    val = informative_and_noise(30, seed=0)
    weights = fit_cell_type_weights(*val, classes=CLASSES, rule=rule)
    assert weights.sum() == pytest.approx(1.0)
    assert weights["signal"] > 0.8 > weights["noise"]
    proba, y, patients, types = informative_and_noise(30, seed=1)  # held-out patients
    truth = pd.Series(y, index=patients).groupby(level=0).first()
    kwargs = {"classes": CLASSES, "cell_types": types, "weights": weights}
    weighted = patient_metrics(aggregate(proba, patients, method="weighted", **kwargs), truth)
    mean = patient_metrics(aggregate(proba, patients, method="mean", classes=CLASSES), truth)
    assert weighted["n_patients"] == 30 and weighted["accuracy"] == 1.0
    assert mean["accuracy"] < 0.8 and weighted["macro_f1"] > mean["macro_f1"]


def test_patient_metrics_by_hand():
    proba, patients = hand_cells()
    scores = aggregate(proba, patients, method="mean", classes=CLASSES)
    truth = {"p1": "a", "p2": "a", "p3": "c", "p4": "b"}  # predicted a, b, c, b
    metrics = patient_metrics(scores, truth)
    assert metrics["n_patients"] == 4 and metrics["accuracy"] == 0.75
    # F1: a = 2/3 (p 1, r 1/2), b = 2/3 (p 1/2, r 1), c = 1
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


# --- per-cell-type performance -----------------------------------------------------------


def test_per_cell_type_metrics_by_hand(tmp_path):
    y_true = ["a", "a", "b", "b", "a", "b", "c", "c", "c"]
    y_pred = ["a", "b", "b", "b", "a", "b", "c", "a", "a"]
    types = ["T1"] * 4 + ["T2"] * 3 + ["T3"] * 2
    table = per_cell_type_metrics(y_true, y_pred, types)
    assert table["cell_type"].tolist() == ["T2", "T1", "T3"]
    assert table["n_cells"].tolist() == [3, 4, 2]
    np.testing.assert_allclose(table["accuracy"], [1.0, 0.75, 0.0])
    np.testing.assert_allclose(table["macro_f1"], [1.0, (2 / 3 + 0.8) / 2, 0.0])
    best, worst = best_and_worst(table, 1)
    assert best["cell_type"].tolist() == ["T2"] and worst["cell_type"].tolist() == ["T3"]
    assert per_cell_type_metrics(y_true, y_pred, types, min_cells=3)["cell_type"].size == 2
    path = per_cell_type_plot(table, tmp_path / "plots" / "per_type.png", overall=0.6)
    assert path.stat().st_size > 1000


# --- k-means baseline --------------------------------------------------------------------


def test_elbow_rule():
    assert elbow([2, 3, 4, 5, 6], [100, 50, 10, 8, 6]) == 4
    assert elbow([2, 3, 4], [30, 20, 10]) == 2  # a straight line has no elbow


@pytest.mark.slow
def test_kmeans_finds_planted_blobs(tmp_path):
    x, planted = make_blobs(600, n_features=5, centers=4, cluster_std=0.6, random_state=0)
    noise = np.random.default_rng(0).integers(0, 2, size=600)
    labels = pd.DataFrame({"planted": planted, "coin": noise})
    result = kmeans_baseline(x, labels, k_range=range(2, 9), seed=0, out_dir=tmp_path)
    assert result.k == 4
    assert result.ari["planted"] > 0.99 and abs(result.ari["coin"]) < 0.05
    assert result.majority_accuracy["planted"] > 0.99 and result.silhouette > 0.5
    assert result.curve["k"].tolist() == list(range(2, 9))
    assert result.clusters["n_cells"].sum() == 600
    for name in ("kmeans_elbow.png", "pca_cluster.png", "pca_planted.png", "pca_coin.png"):
        assert (tmp_path / name).stat().st_size > 1000
    json.dumps(result.to_dict())
    assert "k = 4" in result.to_markdown() and "| planted |" in result.to_markdown()


# --- bad inputs --------------------------------------------------------------------------


def test_bad_inputs_raise_input_error():
    obs = toy_obs()
    with pytest.raises(InputError, match=r"no column\(s\) \['severity'\]"):
        balanced_per_cell_type(obs, "severity", "cell_type")
    with pytest.raises(InputError, match="1 distinct value"):
        balanced_per_cell_type(obs.assign(label="x"), "label", "cell_type")
    with pytest.raises(InputError, match="1 distinct value"):
        patient_split(obs.assign(label="x", patient="p"), "patient", "label")
    with pytest.raises(InputError, match="cap_per_type"):
        balanced_per_cell_type(obs, "label", "cell_type", cap_per_type=2)
    x = np.random.default_rng(0).normal(size=(50, 3))
    for k_range in ([2, 3], range(1, 5), range(2, 60)):
        with pytest.raises(InputError, match="k_range"):
            kmeans_baseline(x, k_range=k_range)
    with pytest.raises(InputError, match="1 distinct value"):
        kmeans_baseline(x, {"label": ["x"] * 50}, k_range=range(2, 5))
    proba, patients = hand_cells()
    with pytest.raises(InputError, match="unknown aggregation method"):
        aggregate(proba, patients, method="median")
    with pytest.raises(InputError, match="needs cell_types and weights"):
        aggregate(proba, patients, method="weighted")
    with pytest.raises(InputError, match="more than one label"):
        fit_cell_type_weights(proba, list("aabbccabc"), patients, ["T"] * 9, classes=CLASSES)
    with pytest.raises(InputError, match="one entry per cell"):
        per_cell_type_metrics(["a"], ["a", "b"], ["T", "T"])
