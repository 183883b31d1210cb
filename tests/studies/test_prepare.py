"""`sclabel prepare`: scTab's corpus filters, the donor-grouped split, the CLI and its errors."""

from __future__ import annotations

import json
import logging
import re

import anndata
import numpy as np
import pandas as pd
import pytest

import sclabel
from sclabel.cli import main
from sclabel.evaluation.ontology import CellOntology
from sclabel.studies.prepare import prepare

TENX = "10x 3' v3"
NAMES = [
    "T cell",
    "B cell",
    "CD4-positive, alpha-beta T cell",
    "cell",  # the root: too few ancestors
    "natural killer cell",  # made rare: too few cells
    "classical monocyte",  # kept in two donors only: too few donors
    "my fancy cluster",  # no Cell Ontology term
]
SMALL = {"min_cells": 20, "min_donors": 3}
CLI_SMALL = ["--min-cells", "20", "--min-donors", "3"]


def corpus() -> anndata.AnnData:
    """~900 cells, 8 donors, 7 types designed so that each filter has a known victim."""
    adata = sclabel.datasets.synthetic(1200, 40, len(NAMES), 8, seed=3)
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.rename_categories(NAMES)
    types, donors = adata.obs["cell_type"].to_numpy(), adata.obs["donor"].to_numpy()
    drop = np.zeros(adata.n_obs, dtype=bool)
    drop[np.flatnonzero(types == "natural killer cell")[10:]] = True
    drop |= (types == "classical monocyte") & ~np.isin(donors, ["donor_0", "donor_1"])
    adata = adata[~drop].copy()
    adata.obs["is_primary_data"] = np.arange(adata.n_obs) % 10 != 0
    adata.obs["assay"] = np.where(np.arange(adata.n_obs) % 7 == 0, "Smart-seq2", TENX)
    adata.layers["counts"] = adata.X.copy()
    adata.raw = adata
    return adata


@pytest.fixture(scope="module")
def ontology():
    return CellOntology()


@pytest.fixture(scope="module")
def prepared():
    return prepare(corpus(), label_key="cell_type", donor_key="donor", assays=[TENX], **SMALL)


@pytest.fixture(scope="module")
def expected(ontology) -> dict[str, pd.DataFrame]:
    """The obs left after each step, computed directly with pandas."""
    obs = corpus().obs.astype({"cell_type": str, "donor": str})
    primary = obs[obs["is_primary_data"]]
    assays = primary[primary["assay"] == TENX]
    sizes = assays["cell_type"].value_counts()
    cells = assays[assays["cell_type"].map(sizes) >= 20]
    reach = cells.groupby("cell_type")["donor"].nunique()
    donors = cells[cells["cell_type"].map(reach) >= 3]
    deep = [n for n in NAMES if (t := ontology.term_id(n)) and ontology.n_ancestors(t) >= 7]
    ancestors = donors[donors["cell_type"].isin(deep)]
    return {
        "has label and donor": obs,
        "primary data": primary,
        "assays": assays,
        "min cells per type": cells,
        "min donors per type": donors,
        "min ancestors per type": ancestors,
    }


@pytest.fixture
def cli_logging():
    """main() installs its own handler on the 'sclabel' logger; undo it for later tests."""
    log = logging.getLogger("sclabel")
    state = (log.handlers[:], log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = state


def test_the_corpus_gives_each_filter_a_known_victim(ontology):
    ancestors = {n: ontology.n_ancestors(t) for n in NAMES if (t := ontology.term_id(n))}
    assert ancestors["cell"] < 7  # the root has none
    assert "my fancy cluster" not in ancestors
    assert all(n >= 7 for name, n in ancestors.items() if name != "cell")


def test_each_step_removes_exactly_its_cells(prepared, expected):
    out, report = prepared
    steps = {row["step"]: row for row in report.steps}
    assert list(steps) == list(expected)
    before = len(expected["has label and donor"])
    for name, obs in expected.items():
        row = steps[name]
        assert row["cells_before"] == before
        after = (len(obs), obs["cell_type"].nunique(), obs["donor"].nunique())
        assert (row["cells_after"], row["types_after"], row["donors_after"]) == after, name
        before = len(obs)
    assert steps["min cells per type"]["removed_types"] == ["natural killer cell"]
    assert steps["min donors per type"]["removed_types"] == ["classical monocyte"]
    assert steps["min ancestors per type"]["removed_types"] == ["cell", "my fancy cluster"]
    assert steps["min ancestors per type"]["unmapped_types"] == ["my fancy cluster"]
    assert list(out.obs_names) == list(expected["min ancestors per type"].index)


def test_output_keeps_matrices_and_annotations(prepared):
    out, _ = prepared
    source = corpus()[out.obs_names]
    assert (out.X != source.X).nnz == 0
    assert (out.layers["counts"] != source.layers["counts"]).nnz == 0
    assert out.raw.shape == (out.n_obs, source.raw.n_vars)
    assert {"assay", "is_primary_data", "condition"} <= set(out.obs.columns)


def test_split_is_by_donor_and_trains_every_class(prepared):
    out, report = prepared
    obs = out.obs
    assert set(obs["split"]) == {"train", "val", "test"}
    assert (obs.groupby("donor", observed=True)["split"].nunique() == 1).all()
    assert set(obs.loc[obs["split"] == "train", "cell_type"]) == set(obs["cell_type"])
    for part, counts in report.split.items():
        cells = obs[obs["split"] == part]
        assert counts == {
            "cells": len(cells),
            "types": cells["cell_type"].nunique(),
            "donors": cells["donor"].nunique(),
        }


def test_primary_flags_as_strings_absent_or_disabled(prepared):
    adata = corpus()
    adata.obs["is_primary_data"] = adata.obs["is_primary_data"].map({True: "True", False: "False"})
    out, _ = prepare(adata, label_key="cell_type", donor_key="donor", assays=[TENX], **SMALL)
    assert list(out.obs_names) == list(prepared[0].obs_names)
    for options in ({"primary_key": "absent"}, {"primary_filter": False}):
        _, report = prepare(corpus(), label_key="cell_type", donor_key="donor", **options, **SMALL)
        primary = report.steps[1]
        assert "skipped" in primary and primary["cells_after"] == primary["cells_before"]
    adata.obs["is_primary_data"] = "maybe"
    with pytest.raises(sclabel.InputError, match="no-primary-filter"):
        prepare(adata, label_key="cell_type", donor_key="donor", **SMALL)


def test_ontology_ids_map_unnamed_labels_and_zero_disables(ontology):
    adata = corpus()
    ids = {"my fancy cluster": "CL:0000624"}  # CD4-positive, alpha-beta T cell
    assert ontology.n_ancestors(ids["my fancy cluster"]) >= 7
    adata.obs["cl_id"] = adata.obs["cell_type"].map(ids).astype(object)
    out, _ = prepare(adata, label_key="cell_type", donor_key="donor", ontology_key="cl_id", **SMALL)
    assert "my fancy cluster" in set(out.obs["cell_type"])
    out, report = prepare(
        corpus(), label_key="cell_type", donor_key="donor", min_ancestors=0, **SMALL
    )
    assert {"cell", "my fancy cluster"} <= set(out.obs["cell_type"])
    assert "skipped" in report.steps[-1]


def test_cli_writes_h5ad_and_reports_and_the_result_trains(prepared, tmp_path, capsys, cli_logging):
    corpus().write_h5ad(tmp_path / "atlas.h5ad")
    out = tmp_path / "prepared.h5ad"
    args = ["prepare", str(tmp_path / "atlas.h5ad"), "--out", str(out), "--backed", "--quiet"]
    args += ["--label-key", "cell_type", "--donor-key", "donor", "--assays", TENX, *CLI_SMALL]
    assert main(args) == 0
    assert "written to" in capsys.readouterr().out
    adata = anndata.read_h5ad(out)
    api = prepared[0]  # the same settings through the Python API, in memory
    assert list(adata.obs_names) == list(api.obs_names)
    assert (adata.obs["split"] == api.obs["split"]).all()
    report = json.loads((tmp_path / "prepared.prepare.json").read_text())
    assert report["steps"][-1]["cells_after"] == adata.n_obs
    assert "| min donors per type |" in (tmp_path / "prepared.prepare.md").read_text()
    model = sclabel.train(
        adata,
        label_key="cell_type",
        split_by="donor",
        max_epochs=2,
        progress=False,
        model="mlp",
    )
    assert set(model.classes) == set(adata.obs["cell_type"])


def test_cli_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--help"])
    assert exit_info.value.code == 0
    assert "Example: sclabel prepare" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--label-key", "nope"], r"--label-key 'nope' is not an obs column"),
        (["--donor-key", "nope"], r"--donor-key 'nope' is not an obs column"),
        (["--assays", TENX, "--assay-key", "nope"], r"--assay-key 'nope'"),
        (["--assays", "Drop-seq"], r"step 'assays'.*Smart-seq2"),
        (["--min-cells", "100000"], r"step 'min cells per type'.*lower --min-cells"),
        (["--donor-key", "condition", "--min-donors", "1"], r"only 2 donor\(s\) left"),
        (["--out", "{out}/prepared.csv"], r"--out must end in \.h5ad"),
    ],
)
def test_cli_bad_inputs_exit_2_without_output(tmp_path, capsys, cli_logging, options, message):
    source = tmp_path / "atlas.h5ad"
    corpus().write_h5ad(source)
    out = tmp_path / "out"
    args = ["prepare", str(source), "--out", str(out / "prepared.h5ad"), "--quiet"]
    args += ["--label-key", "cell_type", "--donor-key", "donor", *CLI_SMALL, "--min-ancestors", "0"]
    args += [option.format(out=out) for option in options]  # a repeated option: the last wins
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    assert re.search(message, error), error
    assert [p.name for p in tmp_path.iterdir()] == ["atlas.h5ad"]  # no output, no temp file
