"""Shared fixtures: small synthetic data, a trained model, and the real files in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

import sclabel

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FAST = {"max_epochs": 8, "batch_size": 128, "progress": False}


def shared_file(name: str) -> Path:
    """Path to a real dataset, or skip the test with the reason when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {name} not found in {SHARED_DATA} (see ../shared/data/README.md)")
    return path


@pytest.fixture
def synthetic():
    """600 cells x 200 genes, 4 types, 6 donors, raw counts (a fresh copy per test)."""
    return sclabel.datasets.synthetic(600, 200, 4, 6, seed=1)


@pytest.fixture(scope="session")
def trained_model():
    """An mlp trained once per session on donor-split synthetic data; do not mutate it."""
    adata = sclabel.datasets.synthetic(600, 200, 4, 6, seed=1)
    return sclabel.train(adata, label_key="cell_type", split_by="donor", model="mlp", **FAST)


@pytest.fixture(scope="session")
def saved_model(trained_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "mlp"
    trained_model.save(path)
    return path
