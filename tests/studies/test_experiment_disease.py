"""The disease experiment runner (`sclabel experiment disease`) on a small synthetic cohort.

One full run (module fixture) serves most tests; the others train one or a few tiny heads.
Warnings are errors here (pyproject): the leaky cell-level split's warning is asserted.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from sclabel.cli import main
from sclabel.datasets import synthetic_cohort
from sclabel.errors import InputError
from sclabel.studies.disease import SECTIONS, run_disease_experiment

# two of four cell types carry a strong signal; every patient has its own expression
# offset (the cohort's default patient effect), which a cell-level split lets a model learn
COHORT = {"n_patients": 30, "n_types": 4, "cells_per_patient": 80, "n_genes": 200, "seed": 1}
SIGNAL = {"severity_fold": 4.0, "state_fold": 4.0}
FAST = {
    "max_epochs": 15,
    "batch_size": 128,
    "lr": 3e-3,
    "model_params": {"hidden": (64,)},
    "pca": 30,
    "quick": True,
}
KEYS = {"patient_key": "patient", "cell_type_key": "cell_type"}


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(**COHORT, **SIGNAL)


@pytest.fixture(scope="module")
def full(cohort, tmp_path_factory):
    """Every section, both labels, with the leaky split shown: (result, out_dir)."""
    out = tmp_path_factory.mktemp("disease") / "report"
    with pytest.warns(UserWarning, match="patients leak"):
        result = run_disease_experiment(
            cohort,
            labels=["severity", "state"],
            **KEYS,
            caps=(30, 120),
            deep_types=2,
            show_leak=True,
            out_dir=out,
            **FAST,
        )
    return result, out


@pytest.mark.slow
def test_report_has_every_section_table_and_plot(full):
    result, out = full
    assert list(result.sections) == list(SECTIONS)
    report = (out / "report.md").read_text()
    for section in result.sections.values():
        assert f"## {section.title}" in report
        for path in section.plots.values():
            assert (out / path).stat().st_size > 0 and f"]({path})" in report
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["sections"]) == set(SECTIONS)
    assert saved["records"] and all("fold" in r for r in saved["records"])
    arch = result.sections["architecture"].tables["runs"]
    assert set(zip(arch["model"], arch["label"], strict=True)) == {
        ("severity-only", "severity"),
        ("state-only", "state"),
        ("multi-head", "severity"),
        ("multi-head", "state"),
    }
    assert "kmeans_elbow.png" in " ".join(result.sections["kmeans"].plots.values())


def test_patient_level_metrics_sit_next_to_cell_level(full, cohort):
    result, _ = full
    arch = result.sections["architecture"].tables["runs"]
    split = result.splits[0]
    test_patients = cohort.obs.loc[split.to_numpy() == "test", "patient"].nunique()
    assert (arch["n_test_units"] == test_patients).all()
    for method in ("mean", "vote", "weighted"):
        values = arch[f"patient_{method}_macro_f1"]
        assert values.between(0, 1).all()
    # the signal is strong: the severity heads beat chance (1/3) per cell and per patient
    severity = arch[arch["label"] == "severity"]
    assert (severity["cell_macro_f1"] > 0.4).all()
    assert (severity["patient_mean_accuracy"] > 0.5).all()


def test_no_patient_is_on_both_sides(full, cohort):
    result, _ = full
    patients = cohort.obs["patient"].astype(str).to_numpy()
    for split in result.splits:
        parts = {p: set(patients[split.to_numpy() == p]) for p in ("train", "val", "test")}
        assert parts["test"] and not parts["train"] & parts["test"]
        assert not parts["train"] & parts["val"] and not parts["val"] & parts["test"]
    for record in result.records:  # every trained model, as trained
        leaky = record.get("split") == "cell-level (leaky)"
        assert (record["patients_shared"] > 0) == leaky


def test_cell_level_split_inflates_the_score(full):
    leak = full[0].sections["leakage"].tables["runs"].set_index("split")
    honest, leaky = leak.loc["patient-level"], leak.loc["cell-level (leaky)"]
    assert leaky["cell_macro_f1"] > honest["cell_macro_f1"] + 0.1
    assert leaky["patients_shared"] == COHORT["n_patients"]
    assert full[0].sections["leakage"].data["cell_macro_f1_inflation"] > 0.1


def test_per_cell_type_ranks_signal_types_first(full, cohort):
    section = full[0].sections["per_cell_type"]
    signal = set(cohort.uns["signal_cell_types"])
    for label in ("severity", "state"):
        table = section.tables[label]
        assert set(table["cell_type"].head(len(signal))) == signal, table
        others = table[~table["cell_type"].isin(signal)]
        assert (
            table.loc[table["cell_type"].isin(signal), "macro_f1"].min() > others["macro_f1"].max()
        )


def test_sizes_train_balanced_capped_subsets(full):
    table = full[0].sections["sizes"].tables["runs"]
    n_types = COHORT["n_types"]
    for _, row in table.iterrows():
        assert row["n_train_cells"] <= row["cap_per_type"] * n_types
        assert row["n_train_cells"] % 3 == 0  # 1:1:1 per label within every type
    for _, rows in table.groupby("label"):
        assert rows.sort_values("cap_per_type")["n_train_cells"].is_monotonic_increasing


def test_wide_uses_more_types_than_deep_at_the_same_total(full):
    table = full[0].sections["wide_deep"].tables["runs"]
    assert len(table) == 4  # one auto total x two labels x wide/deep
    for _, rows in table.groupby(["total", "label"]):
        wide, deep = (rows[rows["design"] == d].iloc[0] for d in ("wide", "deep"))
        assert wide["n_types"] > deep["n_types"]
        for row in (wide, deep):
            assert row["total"] - 3 < row["n_train_cells"] <= row["total"]
            assert len(row["cell_types"].split(", ")) == row["n_types"]


def test_kmeans_follows_cell_type_not_severity(full):
    scores = full[0].sections["kmeans"].tables["scores"].set_index("label")["ARI"]
    assert scores["cell_type"] > 0.3 > abs(scores["severity"])
    assert "patient" in scores.index


@pytest.mark.slow
def test_patient_kfold_tests_every_patient_once(cohort, caplog):
    with caplog.at_level(logging.INFO, logger="sclabel"):
        result = run_disease_experiment(
            cohort, labels=["severity"], **KEYS, folds=3, sections=["architecture"], **FAST
        )
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("disease experiment: section 1/1, architecture (3 fold(s)")
               for line in lines)  # fmt: skip
    runs = [line for line in lines if line.startswith("run ")]
    assert [r.split(":")[0] for r in runs] == ["run 1", "run 2", "run 3"]  # one per fold
    patients = cohort.obs["patient"].astype(str).to_numpy()
    tested = [set(patients[s.to_numpy() == "test"]) for s in result.splits]
    assert sum(len(t) for t in tested) == len(set.union(*tested)) == COHORT["n_patients"]
    table = result.sections["architecture"].tables["runs"]
    assert table["folds"].tolist() == [3] and "cell_macro_f1_sd" in table


def test_no_patient_column_needs_an_explicit_cell_split(cohort):
    adata = cohort.copy()
    del adata.obs["patient"]
    options = {"labels": ["severity"], "patient_key": None, "cell_type_key": "cell_type"}
    with pytest.raises(InputError, match="cell_split"):
        run_disease_experiment(adata, **options, sections=["architecture"], **FAST)
    with pytest.warns(UserWarning, match="patients leak"):
        result = run_disease_experiment(
            adata, **options, cell_split=True, sections=["architecture"], **FAST
        )
    table = result.sections["architecture"].tables["runs"]
    assert not any(c.startswith("patient_") for c in table.columns)
    assert any("unavailable" in note for note in result.notes)
    assert result.settings["patient-level unit"] is None


def test_samples_are_the_patient_level_unit(cohort):
    adata = cohort.copy()
    # two samples per patient; labels are constant within each (as within the patient)
    halves = np.arange(adata.n_obs) % 2
    adata.obs["sample"] = (
        adata.obs["patient"].astype(str) + pd.Series(halves).map({0: "-a", 1: "-b"}).to_numpy()
    )
    result = run_disease_experiment(
        adata, labels=["severity"], **KEYS, sample_key="sample", sections=["architecture"], **FAST
    )
    split = result.splits[0].to_numpy()
    n_test_samples = adata.obs.loc[split == "test", "sample"].nunique()
    assert result.sections["architecture"].tables["runs"]["n_test_units"].iloc[0] == n_test_samples
    mixed = adata.copy()
    mixed.obs["sample"] = "one"  # a single sample holding every severity
    with pytest.raises(InputError, match="more than one label"):
        run_disease_experiment(mixed, labels=["severity"], **KEYS, sample_key="sample", **FAST)


@pytest.fixture(scope="module")
def cohort_file(cohort, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "cohort.h5ad"
    cohort.write_h5ad(path)
    return path


def _cli(path, out, *extra: str) -> list[str]:
    return [
        "--quiet",
        "experiment",
        "disease",
        str(path),
        "--labels",
        "severity",
        "--patient-key",
        "patient",
        "--cell-type-key",
        "cell_type",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.slow
def test_cli_end_to_end(cohort_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--model", "linear", "--pca", "20", "--max-epochs", "5", "--quick"]
    args += ["--labels", "severity", "state", "--sections", "architecture", "per_cell_type"]
    assert main(_cli(cohort_file, out, *args)) == 0, capsys.readouterr().err
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["sections"]) == ["architecture", "per_cell_type"]
    assert saved["settings"]["model"] == "linear" and saved["settings"]["patients"] == 30
    # a linear model has no shared encoder: the multi-head row is skipped with a reason
    assert any("multi-head model skipped" in note for note in saved["notes"])
    models = {row["model"] for row in saved["sections"]["architecture"]["tables"]["runs"]}
    assert models == {"severity-only", "state-only"}
    assert "## Per-cell-type performance" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cell-type-key", "nope"], "no column"),
        (["--obsm-key", "X_missing"], "obsm key"),
        (["--labels", "one_class"], "distinct value"),
        (["--patient-key", "missing_patient"], "no column"),
        (["--caps", "0"], "caps"),
        (["--sections", "everything"], "unknown section"),
        (["--param", "hidden"], "NAME=VALUE"),
    ],
)
def test_cli_bad_input_exits_cleanly_and_writes_nothing(cohort, tmp_path, capsys, extra, message):
    adata = cohort.copy()
    adata.obs["one_class"] = "x"
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "run"
    assert main(_cli(path, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert not out.exists()


def test_cli_refuses_a_file_as_out_and_data_without_patients(cohort_file, tmp_path, capsys):
    out = tmp_path / "a_file"
    out.write_text("keep me")
    assert main(_cli(cohort_file, out)) == 2
    assert "is a file" in capsys.readouterr().err and out.read_text() == "keep me"
    args = _cli(cohort_file, tmp_path / "run")
    args[args.index("--patient-key") : args.index("--patient-key") + 2] = []
    assert main(args) == 2
    assert "--cell-split" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_report_header_gives_the_split_as_made(cohort):
    """Nine patients split 0.7/0.15/0.15 cannot be 70/15/15: the header said "fractions
    (0.7, 0.15, 0.15)"; it now says how many patients and cells each part got."""
    few = cohort[cohort.obs["patient"].astype(str).isin(
        sorted(cohort.obs["patient"].astype(str).unique())[:9])].copy()  # fmt: skip
    result = run_disease_experiment(few, labels=["severity"], **KEYS, sections=["architecture"],
                                    **{**FAST, "max_epochs": 2})  # fmt: skip
    split = result.settings["split"]
    counts = [int(part.split()[1]) for part in split.split(": ", 1)[1].split(", ")]
    assert "fractions" not in split and sum(counts) == 9, split
    assert "patients /" in split and "cells" in split


def test_few_test_patients_are_warned_about_with_an_interval():
    from sclabel.studies.disease.report import few_patients_notes

    records = [
        {"section": "architecture", "model": "severity-only", "label": "severity", "fold": f,
         "n_test_units": 3, "patient_vote_accuracy": acc}
        for f, acc in enumerate([2 / 3, 1.0])
    ] + [{"section": "architecture", "model": "state-only", "label": "state", "fold": 0,
          "n_test_units": 8, "patient_vote_accuracy": 0.5}]  # fmt: skip
    (note,) = few_patients_notes(records)  # state rests on 8 patients: no warning
    # Wilson 95% interval of 5 right of 6, computed here from its formula
    z, n, p = 1.959964, 6, 5 / 6
    centre, half = (p + z * z / (2 * n)), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)
    assert note.startswith("severity (severity-only): patient-level scores rest on 3 test")
    assert "5 of 6 test patients were right by majority vote: 0.83" in note
    assert f"95% interval {low:.2f}-{high:.2f} (Wilson)" in note


@pytest.mark.slow
def test_the_report_of_a_small_cohort_carries_the_warning(tmp_path):
    cohort = synthetic_cohort(**{**COHORT, "n_patients": 12}, **SIGNAL)
    result = run_disease_experiment(cohort, labels=["severity"], **KEYS, sections=["architecture"],
                                    out_dir=tmp_path / "r", **FAST)  # fmt: skip
    assert any("patient-level scores rest on" in note for note in result.notes)
    assert "95% interval" in (tmp_path / "r" / "report.md").read_text()
