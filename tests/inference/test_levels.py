"""Answers at the Cell Ontology depth the probabilities support."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sclabel
from conftest import run
from sclabel.errors import InputError
from sclabel.inference.levels import OntologyLevels

CLASSES = [
    "CD4-positive, alpha-beta T cell",
    "CD8-positive, alpha-beta T cell",
    "B cell",
    "natural killer cell",
]


@pytest.fixture(scope="module")
def levels():
    return OntologyLevels(CLASSES)


def test_unsure_between_t_cell_subsets_answers_their_common_parent(levels):
    probabilities = np.array(
        [
            [0.95, 0.03, 0.01, 0.01],  # sure: the class itself
            [0.50, 0.45, 0.03, 0.02],  # CD4 or CD8: a T cell of that kind
            [0.40, 0.05, 0.30, 0.25],  # nothing below "lymphocyte" reaches 0.8
        ]
    )
    answer = levels.answer(probabilities, threshold=0.8)
    assert answer["ontology_label"][0] == CLASSES[0]
    assert answer["ontology_label"][1] == "mature alpha-beta T cell"
    assert answer["ontology_probability"][1] == pytest.approx(0.95)
    assert answer["ontology_label"][2] == "lymphocyte"
    assert all(t.startswith("CL:") for t in answer["ontology_term"])


def test_coarse_levels_name_the_groups_that_split_the_classes(levels):
    coarse = levels.coarse(np.array(CLASSES, dtype=object), 2)
    assert coarse["level_1"].tolist()[:2] == [coarse["level_1"][0]] * 2  # one T-cell group
    assert coarse["level_1"][0] != CLASSES[0] and "T cell" in coarse["level_1"][0]
    assert coarse["level_2"].tolist()[:2] == CLASSES[:2]
    assert coarse["level_1"][2] == "B cell"  # a class in no group is its own level


def test_classes_outside_the_ontology_are_named():
    with pytest.raises(InputError, match=r"2 of the model's 3 classes have no Cell Ontology term"):
        OntologyLevels(["B cell", "type_7", "my cluster"])
    with pytest.raises(InputError, match="ontology threshold"):
        OntologyLevels(["B cell", "T cell"]).answer(np.ones((1, 2)) / 2, threshold=1.5)


def test_cli_predict_with_ontology_levels(tmp_path):
    cells = sclabel.datasets.synthetic(500, 80, 4, 4, seed=6)
    names = dict(zip([f"type_{i}" for i in range(4)], CLASSES, strict=True))
    cells.obs["cell_type"] = cells.obs["cell_type"].map(names).astype("category")
    model = sclabel.train(cells, label_key="cell_type", max_epochs=4, progress=False, model="mlp")
    model.save(tmp_path / "m")
    cells.write_h5ad(tmp_path / "q.h5ad")
    result = run(
        "--quiet",
        "predict",
        tmp_path / "q.h5ad",
        "--model",
        tmp_path / "m",
        "--ontology-threshold",
        "0.8",
        "--levels",
        "2",
        "--out",
        tmp_path / "p.csv",
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "p.csv")
    assert {"ontology_label", "ontology_term", "level_1", "level_2"} <= set(table.columns)
    sure = table["confidence"] >= 0.8
    assert (table.loc[sure, "ontology_label"] == table.loc[sure, "label"]).all()
