"""Normalization through the one input pipeline: size factors + log1p fused with gene
alignment, chunk by chunk, the same for in-memory and backed AnnData."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from conftest import normalized
from sclabel.data.genes import Vocabulary
from sclabel.data.inputs import InputSpec
from sclabel.errors import InputError

N_CELLS, N_GENES = 40, 12
GENE_NAMES = [f"GENE{j}" for j in range(N_GENES)]


def counts(n_cells: int = N_CELLS, n_genes: int = N_GENES, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.poisson(3.0, size=(n_cells, n_genes)).astype(np.float32)
    values[rng.random((n_cells, n_genes)) < 0.5] = 0
    values[:, 0] += 1  # no zero-count cell
    return values


def cells(X, names=GENE_NAMES, var=None) -> ad.AnnData:
    var = pd.DataFrame(index=names) if var is None else var
    return ad.AnnData(X=X, var=var, obs=pd.DataFrame(index=[f"c{i}" for i in range(X.shape[0])]))


def prepared(X, vocabulary=GENE_NAMES, *, names=None, var=None, gene_key=None, **options):
    """X (a matrix over `names`) normalized onto `vocabulary` by the input pipeline."""
    adata = cells(X, names or list(vocabulary), var)
    return normalized(adata, Vocabulary(tuple(vocabulary)), gene_key=gene_key, **options)


def test_counts_match_scanpy_normalize_total_log1p():
    values = counts()
    out = prepared(sp.csr_matrix(values))
    reference = ad.AnnData(X=sp.csr_matrix(values.astype(np.float64)))
    sc.pp.normalize_total(reference, target_sum=1e4)
    sc.pp.log1p(reference)
    np.testing.assert_allclose(out.toarray(), reference.X.toarray(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target_sum", [1e4, 1e6, 50.0])
def test_counts_rows_sum_to_target_after_expm1(target_sum):
    values = counts(seed=1)
    out = prepared(sp.csr_matrix(values), target_sum=target_sum)
    sums = np.expm1(out.toarray().astype(np.float64)).sum(axis=1)
    np.testing.assert_allclose(sums, target_sum, rtol=1e-4)


def test_counts_by_hand_on_tiny_matrix():
    X = np.array([[1, 3, 0], [2, 2, 4]], dtype=np.float32)
    out = prepared(X, ["a", "b", "c"], target_sum=100)
    expected = np.log1p([[25.0, 75.0, 0.0], [25.0, 25.0, 50.0]])
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-6)


def test_library_size_uses_all_query_genes():
    # query has genes a, b, c; the model only knows c and a (in that order)
    X = np.array([[1, 3, 6], [5, 0, 5]], dtype=np.float32)
    out = prepared(X, ["c", "a"], names=["a", "b", "c"], target_sum=100)
    # totals are 10 and 10 (b counts although the model lacks it)
    expected = np.log1p([[60.0, 10.0], [50.0, 50.0]])
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-6)


def test_missing_model_gene_is_zero_and_duplicates_sum_after_scaling():
    X = np.array([[2, 2, 4]], dtype=np.float32)
    var = pd.DataFrame({"symbol": ["A", "A", "B"]}, index=["a1", "a2", "b"])
    out = prepared(X, ["B", "A", "Z"], var=var, gene_key="symbol", target_sum=8)
    np.testing.assert_allclose(out.toarray(), np.log1p([[4.0, 4.0, 0.0]]), rtol=1e-6)


def test_log1p_input_passes_through_unchanged_with_identity_alignment():
    values = counts(seed=2).astype(np.float64)
    logged = np.log1p(values / values.sum(axis=1, keepdims=True) * 1e4).astype(np.float32)
    out = prepared(sp.csr_matrix(logged))
    np.testing.assert_allclose(out.toarray(), logged, rtol=1e-5, atol=1e-6)


def test_log1p_duplicates_sum_in_count_space():
    logged = np.log1p(np.array([[3.0, 5.0, 1.0]], dtype=np.float32))
    var = pd.DataFrame({"symbol": ["A", "A", "B"]}, index=["a1", "a2", "b"])
    out = prepared(logged, ["A", "B"], var=var, gene_key="symbol")
    np.testing.assert_allclose(out.toarray(), np.log1p([[8.0, 1.0]]), rtol=1e-6)


@pytest.mark.parametrize("kind", ["counts", "log1p"])
def test_output_is_sparse_csr_float32_and_input_untouched(kind):
    values = counts(seed=3)
    if kind == "log1p":
        values = np.log1p(values)
    X = sp.csr_matrix(values, dtype=np.float32)
    before = X.copy()
    out = prepared(X)
    assert sp.issparse(out) and out.format == "csr"
    assert out.dtype == np.float32
    assert out.nnz == np.count_nonzero(values)  # zeros stay implicit
    np.testing.assert_array_equal(X.toarray(), before.toarray())


def test_zero_count_cell_is_refused_with_its_row():
    values = counts(n_cells=140)
    values[105] = 0
    bound = InputSpec(Vocabulary(tuple(GENE_NAMES))).bind(cells(values))
    with pytest.raises(InputError, match=r"first at row 105\).*filter_cells"):
        bound.normalized(slice(100, 140))


# --- chunks of rows ------------------------------------------------------------------------


def _stack(chunks) -> np.ndarray:
    return sp.vstack(list(chunks), format="csr").toarray()


@pytest.mark.parametrize("sparse", [True, False])
def test_backed_chunks_equal_in_memory(tmp_path, sparse):
    values = counts(seed=4)
    adata = cells(sp.csr_matrix(values) if sparse else values)
    path = tmp_path / "q.h5ad"
    adata.write_h5ad(path)
    in_memory = prepared(sp.csr_matrix(values))
    backed = ad.read_h5ad(path, backed="r")
    try:
        bound = InputSpec(Vocabulary(tuple(GENE_NAMES))).bind(backed)
        chunks = list(bound.chunks(7))
        assert len(chunks) == 6  # ceil(40 / 7)
        assert all(sp.issparse(c) and c.dtype == np.float32 for c in chunks)
        np.testing.assert_array_equal(_stack(chunks), in_memory.toarray())
    finally:
        backed.file.close()


def test_rows_subset_in_chunks():
    values = counts(seed=5)
    rows = np.array([0, 3, 4, 10, 11, 12, 25, 39])
    out = prepared(sp.csr_matrix(values), rows=rows, chunk_size=3).toarray()
    expected = prepared(values[rows])
    assert out.shape == (rows.size, N_GENES)
    np.testing.assert_array_equal(out, expected.toarray())


def test_rows_subset_reports_original_row_of_empty_cell():
    values = counts(seed=6)
    values[25] = 0
    rows = np.array([0, 3, 4, 10, 11, 12, 25, 39])  # row 25 is the 7th selected row
    with pytest.raises(InputError, match=r"first at row 25\)"):
        prepared(sp.csr_matrix(values), rows=rows, chunk_size=4)


def test_chunks_report_absolute_row_across_chunks():
    values = counts(seed=7)
    values[17] = 0
    with pytest.raises(InputError, match=r"first at row 17\)"):
        prepared(values, chunk_size=5)
