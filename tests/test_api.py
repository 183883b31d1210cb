"""House conventions of the public API (as scanpy checks its own)."""

import inspect

import pytest

import sclabel


def test_public_names_are_explicit():
    assert sorted(sclabel.__all__) == sorted(
        [
            "InputError",
            "Model",
            "Prediction",
            "Report",
            "annotate",
            "build_store",
            "cross_validate",
            "datasets",
            "embed",
            "evaluate",
            "import_celltypist",
            "import_sctab",
            "predict",
            "predict_to_file",
            "pretrain",
            "read",
            "run_disease_experiment",
            "tokenize",
            "train",
        ]
    )


def test_functions_take_data_first_and_options_by_keyword():
    for function in (sclabel.train, sclabel.predict, sclabel.evaluate, sclabel.read):
        params = list(inspect.signature(function).parameters.values())
        positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert len(positional) <= 2, function.__name__
        assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params[len(positional) :]), (
            function.__name__
        )
    assert list(inspect.signature(sclabel.train).parameters)[0] == "adata"


def test_import_has_no_side_effects(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "import sclabel"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_import_and_cli_help_load_no_heavy_library():
    """`sclabel --help` answered in 7 s when the package imported torch and scikit-learn."""
    import subprocess
    import sys

    code = (
        "import sys, sclabel; from sclabel.cli import build_parser; build_parser(); "
        "print(sorted({'torch', 'sklearn', 'anndata', 'lightning'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert sclabel.train.__module__ == "sclabel.training.train"  # names resolve when used
    assert "datasets" in dir(sclabel) and sclabel.datasets.__name__ == "sclabel.datasets"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sclabel.nope  # noqa: B018
    # the module sclabel.predict, imported first, must not hide the function
    code = "import sclabel.predict, sclabel; print(type(sclabel.predict).__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "function", result.stderr


def test_messages_list_numpy_values_as_plain_python():
    import numpy as np

    from sclabel.errors import listing

    names = np.array(["A549", "H1975", "HCC827"])
    assert listing(names) == "['A549', 'H1975', 'HCC827']"
    assert listing(names, 2) == "['A549', 'H1975', ...]"
    assert listing(np.arange(3)) == "[0, 1, 2]"
