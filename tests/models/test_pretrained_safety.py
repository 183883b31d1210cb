"""Pretrained folders are loaded without running any of their code."""

from __future__ import annotations

import json
import pickle

import pytest

import sclabel
from conftest import run
from sclabel.models.foundation import TINY_BERT


class _Payload:
    """Unpickling this runs `open(marker, "w")`: what a hostile weights file would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def hostile_bert(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    config = {**TINY_BERT, "model_type": "bert", "vocab_size": 64, "architectures": ["BertModel"]}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "pwned"
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"weight": _Payload(str(marker))}, handle)
    return folder, marker


def test_a_pickle_that_would_run_code_is_refused_in_one_line(hostile_bert, tmp_path):
    folder, marker = hostile_bert
    sclabel.datasets.synthetic(200, 40, 2, 2, seed=0).write_h5ad(tmp_path / "cells.h5ad")
    result = run("train", tmp_path / "cells.h5ad", "--label-key", "cell_type", "--model", "bert",
                 "--from", folder, "--out", tmp_path / "tuned")  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "pickle that would run code" in errors[0] and "safetensors" in errors[0]
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / "tuned").exists() and not (tmp_path / ".tuned.training").exists()
