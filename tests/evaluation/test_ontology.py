"""Ontology-aware scoring on real Cell Ontology terms (bundled with cellxgene-ontology-guide)."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from sclabel.evaluation.ontology import CellOntology, ontology_adjusted


@pytest.fixture(scope="module")
def cl():
    return CellOntology()


def test_names_synonyms_and_ids_map_to_terms(cl):
    assert cl.term_id("T cell") == "CL:0000084"
    assert cl.term_id("t lymphocyte") == "CL:0000084"  # a synonym, any case
    assert cl.term_id("CL:0000624") == "CL:0000624"
    assert cl.label("CL:0000624") == "CD4-positive, alpha-beta T cell"
    assert cl.term_id("not a cell type") is None
    assert cl.term_id("CL:9999999") is None


def test_descendants_and_ancestor_counts(cl):
    t_cell, cd4 = "CL:0000084", "CL:0000624"
    assert cd4 in cl.descendants_or_self(t_cell)
    assert t_cell not in cl.descendants_or_self(cd4)
    assert cl.n_ancestors(cd4) > cl.n_ancestors(t_cell)


def test_more_specific_prediction_is_right_and_less_specific_is_wrong(cl):
    labels = ["T cell", "CD4-positive, alpha-beta T cell", "B cell"]
    mapping = cl.map_labels(labels)
    y_true = np.array(
        ["T cell", "CD4-positive, alpha-beta T cell", "T cell", "B cell"], dtype=object
    )
    y_pred = np.array(
        ["CD4-positive, alpha-beta T cell", "T cell", "B cell", "B cell"], dtype=object
    )
    adjusted = ontology_adjusted(y_true, y_pred, mapping, cl)
    # cell 0: CD4 T predicted for a T cell -> right; cell 1: T cell predicted for CD4 T -> wrong
    assert list(adjusted == y_true) == [True, False, False, True]
    flat = f1_score(y_true, y_pred, average="macro")
    aware = f1_score(y_true, adjusted, average="macro")
    assert aware > flat


def test_an_id_column_takes_precedence_over_names(cl):
    mapping = cl.map_labels(["my T cells", "B"], ids=["CL:0000084", "CL:0000236"])
    assert mapping == {"my T cells": "CL:0000084", "B": "CL:0000236"}
    unmapped = cl.map_labels(["my T cells", "nonsense"])
    assert unmapped == {}


def test_evaluate_reports_flat_and_ontology_aware_scores_and_groups(tmp_path):
    import pandas as pd

    import sclabel

    classes = ["B cell", "CD4-positive, alpha-beta T cell", "T cell"]
    # predicted: CD4 T, T, B, B  (probabilities put the max on those classes)
    picks = [1, 2, 0, 0]
    probabilities = np.full((4, 3), 0.1)
    probabilities[np.arange(4), picks] = 0.8
    prediction = sclabel.Prediction(pd.Index(list("abcd")), classes, probabilities)
    truth = ["T cell", "CD4-positive, alpha-beta T cell", "T cell", "B cell"]
    report = sclabel.evaluate(
        prediction, truth, ontology=True, groups=["lung", "lung", "blood", "blood"],
        out_dir=tmp_path / "report",
    )  # fmt: skip
    m = report.metrics
    assert m["accuracy"] == pytest.approx(1 / 4)
    assert m["ontology"]["accuracy"] == pytest.approx(2 / 4)  # cell a becomes right
    # adjusted predictions T, T, B, B: T cell P=1/2 R=1/2; B cell P=1/2 R=1; CD4 T none right
    assert m["ontology"]["per_class_f1"] == pytest.approx(
        {"B cell": 2 / 3, "CD4-positive, alpha-beta T cell": 0.0, "T cell": 1 / 2}
    )
    assert m["ontology"]["macro_f1"] == pytest.approx((2 / 3 + 0 + 1 / 2) / 3)
    assert m["ontology"]["terms"]["T cell"] == "CL:0000084"
    assert m["by_group"]["lung"] == pytest.approx(
        {"n_cells": 2, "accuracy": 0.0, "macro_f1": 0.0, "accuracy_ontology": 0.5,
         "macro_f1_ontology": (2 / 3 + 0) / 2}
    )  # fmt: skip
    text = (report.path / "report.md").read_text()
    assert "| macro-F1, Cell Ontology-aware |" in text and "## By group" in text
