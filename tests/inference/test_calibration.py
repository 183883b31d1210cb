"""Calibrated confidence, conformal prediction sets and an unknown threshold from validation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import sclabel
from sclabel.errors import InputError
from sclabel.inference.calibration import (
    Calibration,
    fit_temperature,
    prediction_sets,
    temper,
    threshold_for_precision,
)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_tempering_probabilities_equals_softmax_of_scaled_logits():
    z = np.random.default_rng(0).normal(size=(20, 4)) * 3
    np.testing.assert_allclose(temper(softmax(z), 2.5), softmax(z / 2.5), rtol=1e-6)
    np.testing.assert_array_equal(temper(softmax(z), 1.0), softmax(z))


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_the_fitted_temperature_undoes_over_or_under_confidence(true_t):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20_000, 5)) * 2
    truth = softmax(z / true_t)  # the real chances; the model says softmax(z)
    y = (rng.random((z.shape[0], 1)) > truth.cumsum(axis=1)).sum(axis=1)
    assert fit_temperature(softmax(z), y) == pytest.approx(true_t, rel=0.08)


def test_conformal_sets_reach_the_asked_coverage_on_new_cells():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(6_000, 6)) * 1.5
    p = softmax(z)
    y = (rng.random((z.shape[0], 1)) > p.cumsum(axis=1)).sum(axis=1)  # calibrated by design
    calibration = Calibration.fit(p[:2000], y[:2000])
    for coverage in (0.8, 0.9, 0.95):
        threshold = calibration.set_threshold(coverage)
        inside = p[2000:] >= threshold
        reached = inside[np.arange(4000), y[2000:]].mean()
        assert coverage - 0.03 <= reached <= coverage + 0.03, (coverage, reached)
    sets, sizes = prediction_sets(np.array([[0.7, 0.2, 0.1]]), ["a", "b", "c"], 0.15)
    assert sets.tolist() == ["a;b"] and sizes.tolist() == [2]


def test_threshold_for_a_target_precision_by_hand():
    confidence = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([True, True, True, False, True, False])
    assert threshold_for_precision(confidence, correct, 0.75) == 0.7  # 4 of the top 5
    assert threshold_for_precision(confidence, correct, 1.0) == 0.9
    assert threshold_for_precision(np.array([0.5]), np.array([False]), 0.9) is None


@pytest.fixture(scope="module")
def calibrated_model():
    adata = sclabel.datasets.synthetic(900, 120, 4, 6, seed=3)
    return sclabel.train(adata, label_key="cell_type", split_by="donor", max_epochs=6,
                         progress=False, model="mlp")  # fmt: skip


def test_a_trained_model_is_calibrated_on_its_validation_cells(calibrated_model, tmp_path):
    calibration = calibrated_model.calibration
    assert calibration.fitted and calibration.temperature > 0
    assert calibration.scores.size == calibrated_model.metrics["n_cells"]["val"]
    report = calibrated_model.metrics["calibration"]
    assert {"test_ece_before", "test_ece_after", "sets_90"} <= set(report)
    calibrated_model.save(tmp_path / "m")
    on_disk = json.loads((tmp_path / "m" / "metrics.json").read_text())["calibration"]
    assert on_disk["test_ece_before"] == pytest.approx(report["test_ece_before"])
    assert on_disk["test_ece_after"] == pytest.approx(report["test_ece_after"])
    assert on_disk["info"]["val_ece_before"] == pytest.approx(calibration.info["val_ece_before"])
    loaded = sclabel.Model.load(tmp_path / "m")
    assert loaded.calibration.temperature == calibration.temperature
    np.testing.assert_allclose(loaded.calibration.scores, calibration.scores, rtol=1e-6)


def test_predict_gives_sets_auto_unknown_and_raw_probabilities_on_request(calibrated_model):
    query = sclabel.datasets.synthetic(300, 120, 4, 6, seed=3, cell_seed=5)
    calibrated = calibrated_model.predict(query, coverage=0.9, unknown_threshold="auto",
                                         progress=False)  # fmt: skip
    raw = calibrated_model.predict(query, calibrated=False, progress=False)
    t = calibrated_model.calibration.temperature
    np.testing.assert_allclose(calibrated.probabilities, temper(raw.probabilities, t), rtol=1e-5)
    assert (calibrated.probabilities.argmax(1) == raw.probabilities.argmax(1)).all()
    frame = calibrated.to_frame()
    assert {"prediction_set", "set_size"} <= set(frame.columns)
    first = frame["prediction_set"].str.split(";").str[0]
    one = frame["set_size"] == 1
    assert (first[one] == frame["label"][one]).all()  # a single-class set is the label
    unknown = frame["label"] == "unknown"
    threshold = calibrated_model.calibration.unknown_threshold
    assert (unknown == (frame["confidence"] < threshold)).all()


def test_auto_with_a_precision_is_chosen_on_the_validation_cells_and_saved():
    """'auto:P' holds precision P on the validation cells: a hand-made case where the
    thresholds for 0.8, 0.95 and 1.0 are known, kept through save/load."""
    from sclabel.inference.calibration import Calibration

    # 10 cells, confidences 0.99 .. 0.90; wrong at 0.95 and 0.91
    top = np.linspace(0.99, 0.90, 10)
    y = np.zeros(10, dtype=int)
    wrong = np.isin(np.arange(10), [4, 8])
    proba = np.column_stack([np.where(wrong, 1 - top, top), np.where(wrong, top, 1 - top)])
    calibration = Calibration.fit(proba, y)
    assert calibration.temperature == 1.0  # 10 cells: no evidence against T = 1
    assert calibration.auto_threshold() == pytest.approx(0.96)  # 4 of 4 right; 4 of 5 is 0.8
    assert calibration.auto_threshold(0.95) == calibration.auto_threshold()
    assert calibration.auto_threshold(0.8) == pytest.approx(0.90)  # 8 of 10
    assert calibration.auto_threshold(0.85) == pytest.approx(0.92)  # 7 of 8 = 0.875
    assert calibration.auto_threshold(1.0 - 1e-9) == pytest.approx(0.96)
    restored = Calibration.from_parts(calibration.to_dict(), calibration.tensors())
    assert restored.auto_threshold(0.8) == pytest.approx(0.90)
    with pytest.raises(InputError, match="between 0 and 1"):
        calibration.auto_threshold(1.5)
    scores_only = {"scores": restored.tensors()["scores"]}
    earlier = Calibration.from_parts(calibration.to_dict(), scores_only)
    assert earlier.auto_threshold() == pytest.approx(0.96)  # as an earlier sclabel saved it
    with pytest.raises(InputError, match="keeps only its 0.95-precision threshold"):
        earlier.auto_threshold(0.8)
    bad = np.column_stack([1 - top, top])  # every cell wrong
    with pytest.raises(InputError, match="no confidence holds precision 0.5"):
        Calibration.fit(bad, y).auto_threshold(0.5)


def test_predict_takes_auto_with_a_precision(calibrated_model, tmp_path):
    query = sclabel.datasets.synthetic(300, 120, 4, 6, seed=3, cell_seed=5)
    calibration = calibrated_model.calibration
    strict = calibrated_model.predict(query, unknown_threshold="auto:0.999", progress=False)
    expected = calibration.auto_threshold(0.999)
    assert (strict.labels == "unknown").sum() == (strict.confidence < expected).sum()
    assert expected >= calibration.auto_threshold()
    calibrated_model.save(tmp_path / "m")
    loaded = sclabel.Model.load(tmp_path / "m")
    again = loaded.predict(query, unknown_threshold="auto:0.999", progress=False)
    assert (again.labels == strict.labels).all()
    with pytest.raises(InputError, match="'auto' or 'auto:P'"):
        calibrated_model.predict(query, unknown_threshold="auto:high", progress=False)


def test_the_shift_check_flags_a_query_less_confident_than_the_validation_cells():
    from sclabel.inference.calibration import Calibration

    rng = np.random.default_rng(0)
    validation = rng.beta(20, 1, 300)  # mostly confident, as on validation cells
    calibration = Calibration(scores=np.sort(1 - validation), confidence=validation,
                              correct=np.ones(300, bool))  # fmt: skip
    alike = calibration.shift_check(rng.beta(20, 1, 2000))
    assert not alike["flagged"] and 0.45 < alike["auc"] < 0.55 and "message" not in alike
    shifted = calibration.shift_check(rng.beta(8, 1, 2000))
    assert shifted["flagged"] and shifted["auc"] < 0.4 and shifted["p_value"] < 1e-3
    assert "less confident than the model's validation cells" in shifted["message"]
    more = calibration.shift_check(rng.beta(60, 1, 2000))  # more confident: nothing to fear
    assert not more["flagged"] and more["auc"] > 0.6
    assert calibration.shift_check(validation[:10]) is None  # too few query cells
    assert Calibration().shift_check(validation) is None  # nothing saved to compare with


def test_predict_checks_the_query_against_the_validation_cells(calibrated_model, tmp_path):
    """Cells drawn like the training cells pass; cells with weaker markers (a noisier
    protocol) are less confident and flagged, in the Prediction, uns, the log and the
    file written by the CLI."""
    alike = sclabel.datasets.synthetic(300, 120, 4, 6, seed=3, cell_seed=5)
    weaker = sclabel.datasets.synthetic(300, 120, 4, 6, seed=3, cell_seed=5, marker_fold=2.0)
    assert not calibrated_model.predict(alike, progress=False).shift["flagged"]
    prediction = calibrated_model.predict(weaker, progress=False)
    assert prediction.shift["flagged"]
    prediction.to_adata(weaker, key_added="s")
    assert weaker.uns["s_shift"]["flagged"] and weaker.uns["s_shift"]["auc"] < 0.3
    assert calibrated_model.predict(weaker, calibrated=False, progress=False).shift is None
    from conftest import run

    calibrated_model.save(tmp_path / "m")
    weaker.write_h5ad(tmp_path / "q.h5ad")
    result = run("predict", tmp_path / "q.h5ad", "--model", tmp_path / "m", "--out",
                 tmp_path / "p.h5ad", "--report", tmp_path / "r", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "less confident than the model's validation cells" in result.stderr
    report = tmp_path / "r"
    assert "**Note:** the query's cells are less confident" in (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    assert "Note: the query&#x27;s cells are less confident" in html  # HTML-escaped text
    import anndata as ad

    written = ad.read_h5ad(tmp_path / "p.h5ad").uns["sclabel_shift"]
    assert bool(written["flagged"]) and written["p_value"] == pytest.approx(
        prediction.shift["p_value"], rel=1e-3
    )


def test_models_without_validation_cells_say_what_they_cannot_do(calibrated_model, tmp_path):
    calibrated_model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["calibration"]
    config["extra_files"].pop("calibration.safetensors")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))  # as sclabel 0.1 saved it
    old = sclabel.Model.load(tmp_path / "m")
    assert old.calibration.temperature == 1.0 and not old.calibration.fitted
    query = sclabel.datasets.synthetic(50, 120, 4, 6, seed=3, cell_seed=6)
    with pytest.raises(InputError, match="no calibration data"):
        old.predict(query, coverage=0.9, progress=False)
    with pytest.raises(InputError, match="give a number"):
        old.predict(query, unknown_threshold="auto", progress=False)
    with pytest.raises(InputError, match="coverage must be between 0 and 1"):
        calibrated_model.predict(query, coverage=1.5, progress=False)


def test_cli_predict_with_sets_and_auto_threshold(calibrated_model, tmp_path):
    from conftest import run

    calibrated_model.save(tmp_path / "m")
    query = sclabel.datasets.synthetic(80, 120, 4, 6, seed=3, cell_seed=7)
    query.write_h5ad(tmp_path / "q.h5ad")
    result = run(
        "--quiet",
        "predict",
        tmp_path / "q.h5ad",
        "--model",
        tmp_path / "m",
        "--coverage",
        "0.9",
        "--unknown-threshold",
        "auto",
        "--out",
        tmp_path / "p.csv",
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "p.csv")
    assert {"prediction_set", "set_size"} <= set(table.columns)
    result = run("--quiet", "predict", tmp_path / "q.h5ad", "--model", tmp_path / "m",
                 "--coverage", "2", "--out", tmp_path / "bad.csv")  # fmt: skip
    assert result.returncode == 2 and "coverage must be between 0 and 1" in result.stderr
    assert not (tmp_path / "bad.csv").exists()
    result = run("--quiet", "predict", tmp_path / "q.h5ad", "--model", tmp_path / "m",
                 "--unknown-threshold", "auto:0.99", "--out", tmp_path / "p99.csv")  # fmt: skip
    assert result.returncode == 0, result.stderr
    strict = pd.read_csv(tmp_path / "p99.csv")
    threshold = calibrated_model.calibration.auto_threshold(0.99)
    assert ((strict["label"] == "unknown") == (strict["confidence"] < threshold)).all()
    result = run("--quiet", "predict", tmp_path / "q.h5ad", "--model", tmp_path / "m",
                 "--unknown-threshold", "auto:2", "--out", tmp_path / "bad.csv")  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("error:") == 1
    assert "precision of 'auto:P' must be between 0 and 1" in result.stderr
    assert not (tmp_path / "bad.csv").exists()


def test_validation_cells_that_are_all_right_give_a_finite_temperature():
    """Every cell right at 0.8: the likelihood alone runs T to its 0.05 bound (which made
    every later mistake look certain); the prior keeps T well inside, below 1."""
    from sclabel.inference.calibration import T_BOUNDS, Calibration

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    proba = np.full((200, 3), 0.1)
    proba[np.arange(200), y] = 0.8
    assert fit_temperature(proba, y, prior_sd=None) < T_BOUNDS[0] * 1.2  # at the bound
    fitted = Calibration.fit(proba, y)
    assert 0.2 < fitted.temperature < 0.9 and fitted.info["errors"] == 0
    assert "reject T = 1" in fitted.info["temperature"]
    # with real mistakes among them (0.8 confidence at ~60% right) softer probabilities
    wrong = rng.choice(200, 80, replace=False)
    proba[wrong] = np.roll(proba[wrong], 1, axis=1)
    assert Calibration.fit(proba, y).temperature > 1.0


@pytest.mark.parametrize("seed", range(6))
def test_a_temperature_is_applied_only_when_the_validation_cells_reject_t_1(seed):
    """Probabilities that are already calibrated (labels drawn from them): T = 1 is kept
    unless the likelihood ratio passes the 1% critical value; over-confident ones are fixed."""
    import math

    from sclabel.inference.calibration import LR_CRITICAL, Calibration, _log_loss

    rng = np.random.default_rng(seed)
    proba = softmax(rng.normal(size=(300, 4)) * 2)
    y = (rng.random((300, 1)) > proba.cumsum(axis=1)).sum(axis=1)
    fitted = Calibration.fit(proba, y)
    t = fit_temperature(proba, y)
    nll = _log_loss(proba, y)
    ratio = 2 * (nll(0.0) - nll(math.log(t)))
    assert (fitted.temperature == 1.0) == (ratio <= LR_CRITICAL)
    assert ("not applied" in fitted.info["temperature"]) == (ratio <= LR_CRITICAL)
    # over-confident probabilities (the truth is softmax(z / 2)) are tempered
    z = rng.normal(size=(300, 4)) * 2
    y_over = (rng.random((300, 1)) > softmax(z / 2).cumsum(axis=1)).sum(axis=1)
    assert Calibration.fit(softmax(z), y_over).temperature > 1.3


@pytest.mark.realdata
@pytest.mark.slow
def test_a_held_out_cellbench_plate_is_flagged_and_its_weighted_sets_reach_coverage():
    """Leave CEL-seq2 plate p1 out (the split where split-conformal 90% sets covered only
    0.83-0.86 of its cells, benchmarks/RESULTS.md): its cells are less confident than the
    validation cells and the check says so; the reference's own held-out cells pass."""
    from conftest import shared_file

    cells = sclabel.read(shared_file("cellbench_sc_celllines.h5ad"))
    plate = cells.obs["batch"].astype(str).to_numpy() == "sc_celseq2_5cl_p1"
    reference, query = cells[~plate].copy(), cells[plate].copy()
    model = sclabel.train(reference, label_key="cell_line", model="linear", progress=False)
    shifted = model.predict(query, coverage=0.9, progress=False)
    assert shifted.shift["flagged"] and shifted.shift["auc"] < 0.45
    own = reference[model.split.index[model.split["split"] == "test"]].copy()
    assert not model.predict(own, progress=False).shift["flagged"]
    # split sets fall short on the new plate; sets weighted to its confidences (the
    # default) reach the asked 90% within 3 points
    truth = query.obs["cell_line"].astype(str).to_numpy()
    split = model.predict(query, coverage=0.9, sets="split", progress=False)
    for prediction, method in ((split, "split"), (shifted, "weighted")):
        assert prediction.sets["method"] == method
    assert covered(split, truth) < 0.87 <= covered(shifted, truth) <= 0.93


def covered(prediction, truth) -> float:
    sets, _ = prediction.prediction_sets()
    return float(np.mean([t in s.split(";") for t, s in zip(truth, sets, strict=True)]))


def test_the_file_sink_gives_the_in_memory_sets_and_says_how_they_were_made(
    calibrated_model, tmp_path
):
    """Weighted sets need the whole query's confidences: the file sink adds them when it
    joins its parts, so chunking changes nothing; uns and the CLI say which rule ran."""
    import anndata as ad

    from conftest import run
    from sclabel.inference.engine import predict_to_file

    query = sclabel.datasets.synthetic(300, 120, 4, 6, seed=3, cell_seed=11)
    memory = calibrated_model.predict(query, coverage=0.9, progress=False)
    assert memory.sets["method"] == "weighted" and len(memory.sets["thresholds"]) > 1
    summary = predict_to_file(calibrated_model, query, tmp_path / "p.h5ad", coverage=0.9,
                              chunk_size=64, progress=False)  # fmt: skip
    written = ad.read_h5ad(tmp_path / "p.h5ad")
    sets, sizes = memory.prediction_sets()
    assert list(written.obs["sclabel_prediction_set"]) == list(sets)
    assert list(written.obs["sclabel_set_size"]) == list(sizes)
    stored = written.uns["sclabel_sets"]
    assert stored["method"] == "weighted" == summary.sets["method"]
    np.testing.assert_allclose(stored["thresholds"], memory.sets["thresholds"], rtol=1e-5)
    memory.to_adata(query)
    assert query.uns["sclabel_sets"]["note"] == memory.sets["note"]

    calibrated_model.save(tmp_path / "m")
    query.write_h5ad(tmp_path / "q.h5ad")
    result = run("predict", tmp_path / "q.h5ad", "--model", tmp_path / "m", "--coverage",
                 "0.9", "--sets", "split", "--out", tmp_path / "split.csv", "--report",
                 tmp_path / "r")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "90% prediction sets: split conformal on" in result.stdout
    table = pd.read_csv(tmp_path / "split.csv", keep_default_na=False)
    one = f"{(table['set_size'] == 1).mean():.1%} one label"
    assert (
        f"90% prediction sets (split conformal on {calibrated_model.calibration.scores.size}"
        f" validation cells): {one}" in (tmp_path / "r" / "report.md").read_text()
    )
    split, _ = calibrated_model.predict(query, coverage=0.9, sets="split",
                                        progress=False).prediction_sets()  # fmt: skip
    assert list(table["prediction_set"]) == list(split)
    assert list(table.columns[:5]) == ["cell", "label", "confidence", "uncertainty",
                                       "prediction_set"]  # fmt: skip
    result = run("--quiet", "predict", tmp_path / "q.h5ad", "--model", tmp_path / "m",
                 "--coverage", "0.9", "--sets", "aps", "--out", tmp_path / "bad.csv")  # fmt: skip
    assert result.returncode == 2 and "--sets" in result.stderr
    assert not (tmp_path / "bad.csv").exists()
    result = run("--quiet", "predict", tmp_path / "q.h5ad", "--model", tmp_path / "m",
                 "--sets", "split", "--out", tmp_path / "bad.csv")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "error: --sets split says how prediction sets are made: add --coverage (e.g. 0.9)"
    )
    assert not (tmp_path / "bad.csv").exists()


def test_cli_annotate_writes_sets_and_their_rule_into_the_file(calibrated_model, tmp_path):
    import anndata as ad

    from conftest import run

    calibrated_model.save(tmp_path / "m")
    query = sclabel.datasets.synthetic(200, 120, 4, 6, seed=3, cell_seed=13)
    query.write_h5ad(tmp_path / "q.h5ad")
    result = run("--quiet", "annotate", tmp_path / "q.h5ad", "--model", tmp_path / "m",
                 "--coverage", "0.8", "--out", tmp_path / "a.h5ad")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "80% prediction sets: weighted conformal" in result.stdout
    written = ad.read_h5ad(tmp_path / "a.h5ad")
    expected, _ = calibrated_model.predict(query, coverage=0.8, progress=False).prediction_sets()
    assert list(written.obs["sclabel_prediction_set"]) == list(expected)
    assert written.uns["sclabel_sets"]["coverage"] == 0.8
