"""TileDB-SOMA input: a filtered selection reads the same cells, values and genes as AnnData."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sclabel
from conftest import shared_file
from sclabel.errors import InputError
from sclabel.io.soma import is_soma, open_soma

tiledbsoma = pytest.importorskip("tiledbsoma")
from tiledbsoma.io import from_anndata  # noqa: E402

FILTER = "cell_type == 'type_1' and donor in ['donor_0', 'donor_3']"


@pytest.fixture(scope="module")
def synthetic_soma(tmp_path_factory):
    """The conftest synthetic data written as a SOMA experiment with X layer 'raw'."""
    adata = sclabel.datasets.synthetic(600, 200, 4, 6, seed=1)
    uri = str(tmp_path_factory.mktemp("soma") / "synthetic")
    from_anndata(uri, adata, "RNA", X_layer_name="raw")
    return uri, adata


@pytest.fixture(scope="module")
def cellbench_soma(tmp_path_factory):
    """The real CellBench cell lines (obs cell_line, batch; raw counts) as a SOMA experiment."""
    adata = sclabel.read(shared_file("cellbench_sc_celllines.h5ad"))
    adata = adata[:, ::5].copy()  # every 5th gene: ingesting all 7.5M values takes ~10 s
    adata.obs = adata.obs[["cell_line", "batch"]]
    uri = str(tmp_path_factory.mktemp("soma") / "cellbench")
    from_anndata(uri, adata, "RNA", X_layer_name="raw")
    return uri, adata


def assert_same_selection(result, expected):
    """Same cells in the same order, same values, same genes; categories may be a superset."""
    expected = expected.copy()  # a view's obs and var are not plain DataFrames
    assert list(result.obs_names) == list(expected.obs_names)
    assert list(result.obs.columns) == list(expected.obs.columns)
    for column in expected.obs:
        assert (result.obs[column].astype(str) == expected.obs[column].astype(str)).all()
    pd.testing.assert_frame_equal(result.var, expected.var, check_index_type=False)
    assert isinstance(result.X, sp.csr_matrix) and result.X.dtype == np.float32
    np.testing.assert_array_equal(result.X.toarray(), expected.X.toarray())


def test_filter_matches_pandas_on_synthetic(synthetic_soma):
    uri, adata = synthetic_soma
    mask = (adata.obs["cell_type"] == "type_1") & adata.obs["donor"].isin(["donor_0", "donor_3"])
    with open_soma(uri, obs_filter=FILTER) as source:
        assert source.n_cells == mask.sum() > 0
        assert_same_selection(source.to_anndata(), adata[mask.to_numpy()])


@pytest.mark.slow
@pytest.mark.realdata
def test_filter_matches_pandas_on_cellbench(cellbench_soma):
    uri, adata = cellbench_soma
    flt = "batch == 'sc_dropseq' and cell_line != 'H1975'"
    mask = (adata.obs["batch"] == "sc_dropseq") & (adata.obs["cell_line"] != "H1975")
    with open_soma(uri, obs_filter=flt) as source:
        assert source.var.index[0].startswith("ENSG")
        assert_same_selection(source.to_anndata(), adata[mask.to_numpy()])


def test_chunks_concatenate_to_the_selection(synthetic_soma):
    uri, adata = synthetic_soma
    with open_soma(uri, obs_filter="condition == 'condition_0'") as source:
        whole = source.to_anndata()
        chunks = list(source.iter_chunks(chunk_size=100))
    assert whole.n_obs % 100 != 0 and len(chunks) == -(-whole.n_obs // 100)
    assert all(X.shape == (len(obs), whole.n_vars) for X, obs in chunks)
    assert all(isinstance(X, sp.csr_matrix) and X.dtype == np.float32 for X, _ in chunks)
    np.testing.assert_array_equal(sp.vstack([X for X, _ in chunks]).toarray(), whole.X.toarray())
    pd.testing.assert_frame_equal(pd.concat([obs for _, obs in chunks]), whole.obs)


def test_no_filter_reads_everything_and_obs_columns_restrict(synthetic_soma):
    uri, adata = synthetic_soma
    with open_soma(uri, obs_columns=["donor"]) as source:
        assert list(source.obs.columns) == ["donor"]
        assert list(source.obs.index) == list(adata.obs_names)
    with open_soma(uri, obs_filter="cell_type == 'type_2'", obs_columns=["condition"]) as source:
        assert list(source.obs.columns) == ["condition"]  # not the filter's own column


def test_var_key_picks_the_gene_index(synthetic_soma):
    uri, adata = synthetic_soma
    with open_soma(uri, var_key="gene_symbols") as source:
        assert list(source.var.index) == list(adata.var["gene_symbols"])
        assert list(source.var.columns) == ["var_id"]


def test_without_id_columns_the_index_is_soma_joinid(tmp_path):
    adata = sclabel.datasets.synthetic(50, 20, 2, 2, seed=1)
    uri = str(tmp_path / "plain")
    from_anndata(uri, adata, "RNA", X_layer_name="raw", obs_id_name="cell", var_id_name="gene")
    with open_soma(uri, obs_filter="donor == 'donor_1'") as source:
        expected = np.flatnonzero(adata.obs["donor"] == "donor_1").astype(str)
        assert list(source.obs.index) == list(expected)
        assert list(source.obs.columns) == ["cell", "cell_type", "donor", "condition"]
        assert list(source.var.index) == [str(i) for i in range(20)]
        assert list(source.var["gene"]) == list(adata.var_names)


def test_is_soma(synthetic_soma, tmp_path):
    uri, _ = synthetic_soma
    h5ad = tmp_path / "cells.h5ad"
    h5ad.write_bytes(b"")
    assert is_soma(uri) and is_soma(f"file://{uri}")
    assert is_soma("tiledb://cellxgene/census") and is_soma("s3://bucket/experiment")
    assert not is_soma(h5ad) and not is_soma(tmp_path) and not is_soma(tmp_path / "absent")
    assert not is_soma(f"{uri}/obs")  # a SOMA DataFrame, not an Experiment


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"measurement": "ATAC"}, ["measurement 'ATAC' not found", "available: ['RNA']"]),
        ({"layer": "data"}, ["X layer 'data'", "available: ['raw']"]),
        ({"obs_filter": "cell_type = 'type_1'"}, ["invalid obs filter", "tissue == 'blood'"]),
        ({"obs_filter": "tissue == 'blood'"}, ["invalid obs filter", "cell_type"]),
        ({"obs_filter": "cell_type == 'type_9'"}, ["selects no cells"]),
        ({"obs_columns": ["donor", "age"]}, ["obs columns ['age'] not found", "donor"]),
        ({"var_key": "symbol"}, ["var_key 'symbol'", "gene_symbols"]),
    ],
)
def test_bad_input_says_what_to_do(synthetic_soma, options, words):
    uri, _ = synthetic_soma
    with pytest.raises(InputError) as info:
        open_soma(uri, **options)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_missing_experiment_and_not_an_experiment(synthetic_soma, tmp_path):
    uri, _ = synthetic_soma
    for bad in (tmp_path / "absent", f"{uri}/ms", f"{uri}/obs"):
        with pytest.raises(InputError, match="could not open SOMA experiment"):
            open_soma(bad)
    h5ad = tmp_path / "cells.h5ad"
    h5ad.write_bytes(b"")
    with pytest.raises(InputError, match="read .h5ad and other files with sclabel.read"):
        open_soma(h5ad)


def test_missing_tiledbsoma_says_how_to_install(synthetic_soma, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiledbsoma", None)  # makes `import tiledbsoma` fail
    with pytest.raises(InputError, match=r"pip install 'sclabel\[soma\]'"):
        open_soma(synthetic_soma[0])
    assert is_soma(synthetic_soma[0])  # still recognised, so the user gets the hint above


def test_the_layer_tiledbsoma_writes_by_default_is_read_and_named(tmp_path):
    """`tiledbsoma.io.from_anndata`, which our own messages recommend, names X "data"; only
    a layer named "raw" used to work."""
    from conftest import run

    adata = sclabel.datasets.synthetic(300, 50, 3, 3, seed=1)
    uri = str(tmp_path / "exp")
    from_anndata(uri, adata, "RNA")  # X_layer_name defaults to "data"
    with open_soma(uri) as source:
        assert source.layer == "data"
        np.testing.assert_array_equal(source.to_anndata().X.toarray(), adata.X.toarray())
    for extra in ([], ["--layer", "data"]):
        out = tmp_path / f"m{len(extra)}"
        result = run("train", uri, "--label-key", "cell_type", "--model", "linear", *extra,
                     "--out", out)  # fmt: skip
        assert result.returncode == 0, result.stderr
    missing = run("train", "--model", "mlp", uri, "--label-key", "cell_type", "--layer",
                  "counts", "--out", tmp_path / "m9")  # fmt: skip
    assert missing.returncode == 2 and "X layer 'counts' not in measurement" in missing.stderr
    assert "['data']" in missing.stderr
