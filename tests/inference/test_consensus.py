"""A consensus of several models (and a reference mapping), with an agreement score."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sclabel
from conftest import run
from sclabel.errors import InputError
from sclabel.inference.members import Member


@pytest.fixture(scope="module")
def members():
    cells = sclabel.datasets.synthetic(700, 120, 4, 6, seed=4)
    mlp = sclabel.train(cells, label_key="cell_type", max_epochs=5, progress=False, model="mlp")
    linear = sclabel.train(cells, label_key="cell_type", model="linear", max_epochs=5,
                           progress=False)  # fmt: skip
    three = cells[cells.obs["cell_type"] != "type_3"].copy()  # knows three of the four types
    small = sclabel.train(three, label_key="cell_type", max_epochs=5, progress=False, model="mlp")
    mlp.build_reference(cells)
    return cells, mlp, linear, small


def test_consensus_averages_members_over_the_union_of_classes(members):
    cells, mlp, linear, small = members
    query = sclabel.datasets.synthetic(200, 120, 4, 6, seed=4, cell_seed=2)
    voices = [Member("mlp", mlp), Member("linear", linear), Member("small", small),
              Member("mapped", mlp, kind="map")]  # fmt: skip
    consensus = sclabel.predict(voices, query, progress=False)
    assert consensus.classes == ["type_0", "type_1", "type_2", "type_3"]
    each = {
        "mlp": mlp.predict(query, progress=False).probabilities,
        "linear": linear.predict(query, progress=False).probabilities,
        "small": np.column_stack(
            [small.predict(query, progress=False).probabilities, np.zeros(200)]
        ),
        "mapped": mlp.map(query).probabilities,
    }
    np.testing.assert_allclose(consensus.probabilities, np.mean(list(each.values()), axis=0),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    frame = consensus.to_frame()
    labels = frame[[f"label_{name}" for name in each]].to_numpy()
    agreement = (labels == frame["label"].to_numpy()[:, None]).mean(axis=1)
    np.testing.assert_allclose(frame["agreement"], agreement, rtol=1e-6)
    assert set(np.round(frame["agreement"] * 4)) <= {0, 1, 2, 3, 4}
    truth = query.obs["cell_type"].astype(str).to_numpy()
    assert (consensus.labels == truth).mean() > 0.9


def test_members_need_distinct_names_and_a_reference_to_map(members):
    _, mlp, linear, _ = members
    with pytest.raises(InputError, match="distinct names"):
        sclabel.predict([Member("a", mlp), Member("a", linear)], members[0], progress=False)
    with pytest.raises(InputError, match="no reference index to map with"):
        Member("linear_map", linear, kind="map")
    with pytest.raises(InputError, match="auto needs one calibrated model"):
        sclabel.predict([mlp, linear], members[0], unknown_threshold="auto", progress=False)
    with pytest.raises(InputError, match="prediction sets need one calibrated model"):
        sclabel.predict([mlp, linear], members[0], coverage=0.9, progress=False)
    with pytest.raises(InputError, match="coverage must be between 0 and 1"):  # named first
        sclabel.predict([mlp, linear], members[0], coverage=1.5, progress=False)


def test_cli_consensus_of_folders_and_a_mapping(members, tmp_path):
    cells, mlp, linear, _ = members
    mlp.save(tmp_path / "mlp")
    linear.save(tmp_path / "linear")
    cells.write_h5ad(tmp_path / "q.h5ad")
    result = run("--quiet", "predict", tmp_path / "q.h5ad", "--model",
                 f"{tmp_path / 'mlp'},{tmp_path / 'linear'}", "--model",
                 f"map:{tmp_path / 'mlp'}", "--out", tmp_path / "c.csv")  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "c.csv")
    assert {"agreement", "label_mlp", "label_linear", "label_mlp_map"} <= set(table.columns)
    # --models (popV's spelling) is the same option
    result = run("--quiet", "predict", tmp_path / "q.h5ad", "--models",
                 f"{tmp_path / 'mlp'},{tmp_path / 'linear'},map:{tmp_path / 'mlp'}",
                 "--out", tmp_path / "d.csv")  # fmt: skip
    assert result.returncode == 0, result.stderr
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "d.csv"), table)
