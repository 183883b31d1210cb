import json
import logging
import math
import warnings

import numpy as np
import pandas as pd
import pytest

import sclabel
from sclabel.errors import InputError
from sclabel.evaluation import plots
from sclabel.evaluation.calibration import expected_calibration_error

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def small_prediction():
    """5 cells, 3 classes; predicted a, b, b, b, c with confidences .9 .6 .8 .7 1."""
    probabilities = np.array(
        [[0.9, 0.05, 0.05], [0.4, 0.6, 0.0], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.0, 0.0, 1.0]]
    )
    cells = pd.Index([f"c{i}" for i in range(5)])
    return sclabel.Prediction(cells, ["a", "b", "c"], probabilities)


TRUTH = ["a", "a", "b", "b", "c"]


def test_metrics_match_hand_computation(small_prediction):
    m = sclabel.evaluate(small_prediction, TRUTH).metrics
    # a: P=1 R=1/2 F1=2/3; b: P=2/3 R=1 F1=4/5; c: 1
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    assert m["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 * 4 / 5 + 1) / 5)
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["confusion"] == {
        "rows": ["a", "b", "c"],
        "columns": ["a", "b", "c"],
        "counts": [[1, 1, 0], [0, 2, 0], [0, 0, 1]],
    }
    # every confidence falls in its own 1/15-wide bin: ECE = mean |correct - confidence|
    assert m["ece"] == pytest.approx((0.1 + 0.6 + 0.2 + 0.3 + 0.0) / 5)


def test_uncertainty_auroc_and_rejection_curve(small_prediction):
    m = sclabel.evaluate(small_prediction, TRUTH).metrics
    # the only wrong cell (index 1) has the lowest confidence (0.6): perfectly ranked
    assert m["uncertainty_auroc"] == pytest.approx(1.0)
    by_fraction = {r["rejected_fraction"]: r for r in m["rejection"]}
    assert by_fraction[0.0] == {"rejected_fraction": 0.0, "n_kept": 5, "accuracy": 0.8}
    assert by_fraction[0.2] == {"rejected_fraction": 0.2, "n_kept": 4, "accuracy": 1.0}
    all_right = sclabel.evaluate(small_prediction, ["a", "b", "b", "b", "c"]).metrics
    assert all_right["uncertainty_auroc"] is None


def test_ece_is_zero_when_confidence_equals_accuracy():
    confidence = np.full(10, 0.7)
    correct = np.array([1] * 7 + [0] * 3, dtype=bool)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.0)


def test_ece_by_chance_tells_noise_from_miscalibration():
    from sclabel.evaluation.calibration import ece_by_chance

    # a calibrated model: each cell right with its own confidence; its ECE is not 0, and
    # its p-values spread over (0, 1): small ones are rare
    p_values, floors = [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        confidence = rng.uniform(0.5, 1.0, 300)
        correct = rng.random(300) < confidence
        chance = ece_by_chance(confidence, expected_calibration_error(confidence, correct),
                               draws=100, seed=seed)  # fmt: skip
        p_values.append(chance["p_value"])
        floors.append(chance["mean"])
    assert 0.03 < np.mean(floors) < 0.08  # 300 cells: a few points of ECE by chance alone
    assert np.mean(np.array(p_values) < 0.05) <= 0.15 and 0.3 < np.median(p_values) < 0.7
    # an overconfident one: right 10 points less often than it says
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 300)
    correct = rng.random(300) < confidence - 0.1
    observed = expected_calibration_error(confidence, correct)
    chance = ece_by_chance(confidence, observed)
    assert chance["p_value"] < 0.05 and observed > chance["p95"] > chance["mean"]
    # more cells, less noise: the chance part shrinks like 1 / sqrt(cells)
    big = ece_by_chance(rng.uniform(0.5, 1.0, 30_000))
    assert big["mean"] < np.mean(floors) / 5 and big["draws"].size == 200
    assert ece_by_chance(np.full(400_000, 0.9))["draws"].size == 50  # bounded work
    # p never 0 (draws + 1 in the denominator); nothing to say on no cells or NaN
    assert chance["p_value"] >= 1 / 201
    for bad in (np.array([]), np.array([0.9, np.nan])):
        assert np.isnan(ece_by_chance(bad, 0.1)["p_value"])


def test_ece_by_chance_counts_answers_that_cannot_be_right_as_wrong():
    from sclabel.evaluation.calibration import ece_by_chance
    from sclabel.evaluation.metrics import compute_metrics

    # a calibrated model whose cells below 0.6 are answered "unknown": those are wrong
    # whatever the confidence, in the ECE and in the chance that measures it
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1.0, 400)
    right = rng.random(400) < confidence
    predicted = np.where(confidence < 0.6, "unknown", "a")
    truth = np.where(right, "a", "b")
    m = compute_metrics(truth, predicted, confidence, ["a", "b"])
    ignoring = ece_by_chance(confidence, m["ece"])  # as if "unknown" cells could be right
    assert ignoring["p_value"] < 0.01  # would call the rejection miscalibration
    assert m["ece_p_value"] > 0.05 and m["ece_by_chance"] > ignoring["mean"]


def test_the_ece_is_the_reliability_table_weighted_by_cells():
    from sclabel.evaluation.calibration import reliability_table

    rng = np.random.default_rng(3)
    confidence = np.concatenate([rng.uniform(0, 1, 5000), np.linspace(0, 1, 16)])  # + edges
    correct = rng.random(confidence.size) < confidence**2
    table = reliability_table(confidence, correct).dropna()
    assert len(table) == 15 and table["n"].sum() == confidence.size
    weighted = (table["n"] * (table["accuracy"] - table["confidence"]).abs()).sum()
    assert expected_calibration_error(confidence, correct) == pytest.approx(
        weighted / confidence.size
    )
    assert expected_calibration_error(confidence.astype(np.float32), correct) == pytest.approx(
        weighted / confidence.size, abs=1e-6
    )


def test_reliability_plot_shows_the_range_chance_gives_a_calibrated_model(tmp_path):
    from sclabel.evaluation.metrics import compute_metrics
    from sclabel.evaluation.plots import chance_range, reliability_plot

    # 100 cells at confidence 0.9, 25 at 0.5 and 4 at 0.975; other bins empty
    confidence = np.array([0.9] * 100 + [0.5] * 25 + [0.975] * 4)
    truth = ["a"] * 90 + ["b"] * 10 + ["a"] * 25 + ["a"] * 3 + ["b"]
    metrics = compute_metrics(truth, ["a"] * 129, confidence, ["a", "b"])
    expected, low, high = chance_range(json.loads(json.dumps(metrics))["reliability"])
    filled = ~np.isnan(expected)
    assert filled.sum() == 3 and np.isnan(low[~filled]).all()
    assert expected[filled] == pytest.approx([0.5, 0.9, 0.975])

    def below(k, n, p):  # P(X < k), X ~ Binomial(n, p), by hand
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k))

    # each end is the binomial 2.5% quantile: at most 2.5% of chance falls outside it, and
    # one count further in would leave more than 2.5% outside
    for n, p, lo, hi in zip([25, 100, 4], [0.5, 0.9, 0.975], low[filled], high[filled],
                            strict=True):  # fmt: skip
        k_lo, k_hi = round(lo * n), round(hi * n)
        assert below(k_lo, n, p) <= 0.025 < below(k_lo + 1, n, p)
        assert 1 - below(k_hi + 1, n, p) <= 0.025 < 1 - below(k_hi, n, p)
    # 3 of 4 right at 0.975 happens 9% of the time by chance: inside the range
    assert low[filled][2] <= 0.75
    path = reliability_plot(metrics, tmp_path / "reliability.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_unknown_and_unseen_labels_are_reported(small_prediction):
    small_prediction.unknown_threshold = 0.65  # cell 1 (0.6) becomes unknown
    m = sclabel.evaluate(small_prediction, ["a", "a", "b", "b", "z"]).metrics
    assert m["n_unknown"] == 1
    assert m["unseen_labels"] == ["z"]
    assert m["confusion"]["columns"] == ["a", "b", "c", "unknown"]
    assert m["confusion"]["rows"] == ["a", "b", "z"]
    assert m["per_class"]["z"]["f1"] == 0.0


def test_cells_without_truth_are_skipped(small_prediction):
    m = sclabel.evaluate(small_prediction, ["a", None, "b", np.nan, "c"]).metrics
    assert m["n_cells"] == 3
    assert m["accuracy"] == 1.0


def test_report_folder(small_prediction, tmp_path):
    report = sclabel.evaluate(small_prediction, TRUTH, out_dir=tmp_path / "report")
    names = sorted(p.name for p in report.path.iterdir())
    assert names == [
        "confusion_matrix.png",
        "crosstab.csv",
        "metrics.json",
        "per_class_f1.png",
        "reliability.png",
        "report.html",
        "report.md",
    ]
    for png in report.path.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert (
        json.loads((report.path / "metrics.json").read_text())["macro_f1"]
        == report.metrics["macro_f1"]
    )
    text = (report.path / "report.md").read_text()
    assert f"| macro-F1 | {report.metrics['macro_f1']:.4f} |" in text
    assert "![confusion_matrix](confusion_matrix.png)" in text


def test_report_refuses_a_foreign_folder(small_prediction, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a sclabel report"):
        sclabel.evaluate(small_prediction, TRUTH, out_dir=tmp_path)
    assert (tmp_path / "notes.txt").exists()


def test_wrong_number_of_labels(small_prediction):
    with pytest.raises(InputError, match="4 true labels for 5 predicted cells"):
        sclabel.evaluate(small_prediction, TRUTH[:4])


def test_model_evaluate_on_its_test_split(trained_model):
    adata = sclabel.datasets.synthetic(600, 200, 4, 6, seed=1)
    report = trained_model.evaluate(adata, split="test", progress=False)
    assert report.metrics["n_cells"] == trained_model.metrics["n_cells"]["test"]
    assert report.metrics["macro_f1"] == pytest.approx(trained_model.metrics["test"]["macro_f1"])


def test_dropped_and_training_cells_are_counted_aloud(trained_model, caplog):
    adata = sclabel.datasets.synthetic(600, 200, 4, 6, seed=1)  # the model's own cells
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(object)
    adata.obs.iloc[:7, adata.obs.columns.get_loc("cell_type")] = None
    n_train = int((trained_model.split["split"] == "train").sum())
    with caplog.at_level(logging.WARNING, logger="sclabel"):
        report = trained_model.evaluate(adata, progress=False)
    assert "7 of 600 cells have no true label and are left out" in caplog.text
    assert (
        f"{n_train} of the 600 evaluated cells were in this model's training split" in caplog.text
    )
    assert report.metrics["n_unlabeled"] == 7 and report.metrics["n_cells"] == 593
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sclabel"):
        trained_model.evaluate(adata, split="test", progress=False)
    assert "training split" not in caplog.text  # held-out cells only: nothing to warn of


def test_report_tables_survive_labels_with_bars_and_line_breaks(tmp_path):
    names = ["T|NK cells", "B\ncells", "a " + "very long name " * 5]
    probabilities = np.eye(3)[[0, 0, 1, 2, 2, 2, 1, 0]] * 0.8 + 0.2 / 3
    truth = [names[i] for i in (0, 0, 1, 2, 2, 2, 1, 1)]
    prediction = sclabel.Prediction(pd.Index([f"c{i}" for i in range(8)]), names, probabilities)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no font or layout warnings either
        report = sclabel.evaluate(prediction, truth, out_dir=tmp_path / "r")
    text = (report.path / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| T")]
    assert rows and all(line.count("|") - line.count("\\|") == 6 for line in rows)
    assert "| T\\|NK cells †" in text and "| B cells" in text
    assert "Expected calibration error (ECE): the gap between confidence" in text
    assert "Uncertainty AUROC: how well 1 - confidence" in text
    assert "† 3 or fewer test cells" in text  # B cells and T|NK have 3 each


def test_a_refitted_auto_choice_names_the_cells_it_was_refitted_on():
    from sclabel.evaluation.report import _about

    auto = {"reason": "highest validation macro-F1 (0.900)",
            "candidates": {"linear": {"val_macro_f1": 0.9}, "mlp": {"val_macro_f1": 0.8}},
            "refit": {"done": True, "reason": "full-batch", "n_cells": 1500}}  # fmt: skip
    about = {"family": "linear", "n_train_cells": 1000, "n_classes": 4, "auto": auto}
    line = _about(about)
    assert "refitted on 1,500 training + validation cells" in line
    assert "trained on 1,000" not in line
    auto["refit"] = {"done": False, "reason": "early-stopped"}
    assert "trained on 1,000 cells" in _about(about) and "refitted" not in _about(about)


def test_report_names_the_model_and_its_training_cells(trained_model, tmp_path):
    adata = sclabel.datasets.synthetic(600, 200, 4, 6, seed=1)
    report = trained_model.evaluate(adata, split="test", out_dir=tmp_path / "r", progress=False)
    text = (tmp_path / "r" / "report.md").read_text()
    n_train = trained_model.metrics["n_cells"]["train"]
    assert f"Model: mlp; trained on {n_train:,} cells; labels from obs['cell_type']" in text
    assert report.metrics["model"]["family"] == "mlp"
    # the provenance: which cells (the test split's donors), what data, which version
    split = trained_model.split
    donors = sorted(set(split.loc[split["split"] == "test", "group"]))
    n_test = int((split["split"] == "test").sum())
    assert "## Provenance" in text
    assert (f"- Data: an AnnData in memory, {n_test} cells of the model's 'test' split "
            f"(matched by cell name); its groups: {', '.join(donors)}.") in text  # fmt: skip
    version = trained_model.metrics["trained_with"]["sclabel_version"]
    assert f"trained with sclabel {version}" in text
    assert "- Scored with sclabel " in text and "training split" not in text
    # temperature scaling: what was done and the ECE it gave, in report.md and report.html
    info = trained_model.calibration.info
    held_out = trained_model.metrics["calibration"]
    before, after = held_out["test_ece_before"], held_out["test_ece_after"]
    chance = held_out["test_ece_by_chance"]
    line = (f"- Calibration: temperature {info['temperature']}; ECE on the validation cells "
            f"{info['val_ece_before']:.3f} -> {info['val_ece_after']:.3f}; the training run's "
            f"test cells {before:.3f} -> {after:.3f}, where a perfectly calibrated model shows "
            f"{chance:.3f} by chance alone.")  # fmt: skip
    assert line in text
    # the evaluation's ECE row says what chance alone gives on as many cells: the same test
    # cells and tempered confidences as training's number, so the same value
    m = report.metrics
    assert m["n_cells"] == n_test and m["ece_by_chance"] == pytest.approx(chance, abs=1e-3)
    p = m["ece_p_value"]
    assert (f"| expected calibration error | {m['ece']:.4f} (a perfectly calibrated model "
            f"shows {m['ece_by_chance']:.4f} on {m['n_cells']} cells by chance; "
            f"{'p < 0.01' if p < 0.01 else f'p = {p:.2f}'}) |") in text  # fmt: skip
    assert "Calibration: temperature " in (tmp_path / "r" / "report.html").read_text()
    whole = trained_model.evaluate(adata, progress=False).to_markdown()
    assert f"- {n_train:,} of these cells were in the model's training split" in whole


@pytest.mark.slow  # full suite only: keeps the fast tier under 2 min
def test_labels_the_model_does_not_have_get_a_cross_tab(trained_model, tmp_path):
    adata = sclabel.datasets.synthetic(600, 200, 4, 6, seed=1)
    lineage = {"type_0": "lymphoid", "type_1": "lymphoid", "type_2": "myeloid", "type_3": "myeloid"}
    adata.obs["lineage"] = adata.obs["cell_type"].astype(str).map(lineage)
    drawn = {}
    save = plots.save_figure

    def keep(fig, path):
        ax = fig.axes[0]
        drawn[path.name] = (ax.get_title(), ax.get_ylabel(),
                            [t.get_text() for t in ax.get_xticklabels()])  # fmt: skip
        return save(fig, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "save_figure", keep)
        report = trained_model.evaluate(adata, label_key="lineage", out_dir=tmp_path / "r",
                                        progress=False)  # fmt: skip
    predicted = trained_model.predict(adata, progress=False).labels
    expected = pd.crosstab(adata.obs["lineage"].to_numpy(), predicted)
    table = pd.read_csv(tmp_path / "r" / "crosstab.csv", index_col=0)
    assert table.loc[expected.index, expected.columns].equals(expected.rename_axis("given label"))
    assert report.metrics["label_overlap"] == {"true": 2, "classes": 4, "shared": 0}
    text = (tmp_path / "r" / "report.md").read_text()
    assert "**None of the 2 true labels is one of the model's 4 classes**" in text
    share = expected.loc["lymphoid"].max() / expected.loc["lymphoid"].sum()
    top = expected.loc["lymphoid"].idxmax()
    assert f"| lymphoid | {expected.loc['lymphoid'].sum()} | {top} {share:.0%}" in text
    title, ylabel, columns = drawn["confusion_matrix.png"]
    assert title.startswith("given vs predicted labels") and ylabel == "given"
    assert sorted(columns) == sorted(set(predicted))  # only the predicted labels used
    assert "None of the 2 true labels" in (tmp_path / "r" / "report.html").read_text()
    # the same labels as the model's: no cross-tab section, a confusion matrix
    plain = trained_model.evaluate(adata, progress=False).to_markdown()
    assert "Given vs predicted" not in plain and "None of" not in plain


def test_non_ascii_and_long_labels_plot_without_warnings(tmp_path):
    from sclabel.evaluation.plots import tick_label

    assert tick_label("x" * 80).count("\n") == 1 and tick_label("x" * 80).endswith("…")
    names = ["Zellen ä", "細胞 A", "клетки"]
    prediction = sclabel.Prediction(pd.Index(["a", "b", "c"]), names, np.eye(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sclabel.evaluate(prediction, names, out_dir=tmp_path / "r")
    assert (tmp_path / "r" / "confusion_matrix.png").read_bytes()[:8] == PNG_MAGIC
