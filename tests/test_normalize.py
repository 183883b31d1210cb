"""sclabel.data.normalize: size factors + log1p fused with gene alignment, chunk by chunk."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from sclabel.data import genes
from sclabel.data.genes import Vocabulary
from sclabel.data.normalize import iter_prepared, prepare_rows
from sclabel.errors import InputError

N_CELLS, N_GENES = 40, 12
GENE_NAMES = [f"GENE{j}" for j in range(N_GENES)]


def counts(n_cells: int = N_CELLS, n_genes: int = N_GENES, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.poisson(3.0, size=(n_cells, n_genes)).astype(np.float32)
    values[rng.random((n_cells, n_genes)) < 0.5] = 0
    values[:, 0] += 1  # no zero-count cell
    return values


def identity_alignment(names=GENE_NAMES) -> genes.GeneAlignment:
    var = pd.DataFrame(index=names)
    return genes.align(var, Vocabulary(tuple(names)))


def test_counts_match_scanpy_normalize_total_log1p():
    values = counts()
    out = prepare_rows(sp.csr_matrix(values), kind="counts", alignment=identity_alignment())
    reference = ad.AnnData(X=sp.csr_matrix(values.astype(np.float64)))
    sc.pp.normalize_total(reference, target_sum=1e4)
    sc.pp.log1p(reference)
    np.testing.assert_allclose(out.toarray(), reference.X.toarray(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target_sum", [1e4, 1e6, 50.0])
def test_counts_rows_sum_to_target_after_expm1(target_sum):
    values = counts(seed=1)
    out = prepare_rows(
        sp.csr_matrix(values), kind="counts", alignment=identity_alignment(), target_sum=target_sum
    )
    sums = np.expm1(out.toarray().astype(np.float64)).sum(axis=1)
    np.testing.assert_allclose(sums, target_sum, rtol=1e-4)


def test_counts_by_hand_on_tiny_matrix():
    X = np.array([[1, 3, 0], [2, 2, 4]], dtype=np.float32)
    out = prepare_rows(
        X, kind="counts", alignment=identity_alignment(["a", "b", "c"]), target_sum=100
    )
    expected = np.log1p([[25.0, 75.0, 0.0], [25.0, 25.0, 50.0]])
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-6)


def test_library_size_uses_all_query_genes():
    # query has genes a, b, c; the model only knows c and a (in that order)
    X = np.array([[1, 3, 6], [5, 0, 5]], dtype=np.float32)
    var = pd.DataFrame(index=["a", "b", "c"])
    alignment = genes.align(var, Vocabulary(("c", "a")))
    out = prepare_rows(X, kind="counts", alignment=alignment, target_sum=100)
    # totals are 10 and 10 (b counts although the model lacks it)
    expected = np.log1p([[60.0, 10.0], [50.0, 50.0]])
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-6)


def test_missing_model_gene_is_zero_and_duplicates_sum_after_scaling():
    X = np.array([[2, 2, 4]], dtype=np.float32)
    var = pd.DataFrame({"symbol": ["A", "A", "B"]}, index=["a1", "a2", "b"])
    alignment = genes.align(var, Vocabulary(("B", "A", "Z")), gene_key="symbol")
    out = prepare_rows(X, kind="counts", alignment=alignment, target_sum=8)
    np.testing.assert_allclose(out.toarray(), np.log1p([[4.0, 4.0, 0.0]]), rtol=1e-6)


def test_log1p_input_passes_through_unchanged_with_identity_alignment():
    values = counts(seed=2).astype(np.float64)
    logged = np.log1p(values / values.sum(axis=1, keepdims=True) * 1e4).astype(np.float32)
    out = prepare_rows(sp.csr_matrix(logged), kind="log1p", alignment=identity_alignment())
    np.testing.assert_allclose(out.toarray(), logged, rtol=1e-5, atol=1e-6)


def test_log1p_duplicates_sum_in_count_space():
    logged = np.log1p(np.array([[3.0, 5.0, 1.0]], dtype=np.float32))
    var = pd.DataFrame({"symbol": ["A", "A", "B"]}, index=["a1", "a2", "b"])
    alignment = genes.align(var, Vocabulary(("A", "B")), gene_key="symbol")
    out = prepare_rows(logged, kind="log1p", alignment=alignment)
    np.testing.assert_allclose(out.toarray(), np.log1p([[8.0, 1.0]]), rtol=1e-6)


@pytest.mark.parametrize("kind", ["counts", "log1p"])
def test_output_is_sparse_csr_float32_and_input_untouched(kind):
    values = counts(seed=3)
    if kind == "log1p":
        values = np.log1p(values)
    X = sp.csr_matrix(values, dtype=np.float32)
    before = X.copy()
    out = prepare_rows(X, kind=kind, alignment=identity_alignment())
    assert sp.issparse(out) and out.format == "csr"
    assert out.dtype == np.float32
    assert out.nnz == np.count_nonzero(values)  # zeros stay implicit
    np.testing.assert_array_equal(X.toarray(), before.toarray())


def test_zero_count_cell_is_refused_with_its_row():
    values = counts()
    values[5] = 0
    with pytest.raises(InputError, match=r"first at row 105\).*filter_cells"):
        prepare_rows(values, kind="counts", alignment=identity_alignment(), first_row=100)


# --- iter_prepared ---------------------------------------------------------------------------


def _stack(chunks) -> np.ndarray:
    return sp.vstack(list(chunks), format="csr").toarray()


@pytest.mark.parametrize("sparse", [True, False])
def test_iter_prepared_backed_equals_in_memory(tmp_path, sparse):
    values = counts(seed=4)
    adata = ad.AnnData(
        X=sp.csr_matrix(values) if sparse else values,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(N_CELLS)]),
        var=pd.DataFrame(index=GENE_NAMES),
    )
    path = tmp_path / "q.h5ad"
    adata.write_h5ad(path)
    alignment = identity_alignment()
    in_memory = prepare_rows(sp.csr_matrix(values), kind="counts", alignment=alignment)
    backed = ad.read_h5ad(path, backed="r")
    try:
        chunks = list(iter_prepared(backed.X, kind="counts", alignment=alignment, chunk_size=7))
        assert len(chunks) == 6  # ceil(40 / 7)
        assert all(sp.issparse(c) and c.dtype == np.float32 for c in chunks)
        np.testing.assert_array_equal(_stack(chunks), in_memory.toarray())
    finally:
        backed.file.close()


def test_iter_prepared_rows_subset():
    values = counts(seed=5)
    rows = np.array([0, 3, 4, 10, 11, 12, 25, 39])
    alignment = identity_alignment()
    out = _stack(
        iter_prepared(
            sp.csr_matrix(values), kind="counts", alignment=alignment, rows=rows, chunk_size=3
        )
    )
    expected = prepare_rows(values[rows], kind="counts", alignment=alignment)
    assert out.shape == (rows.size, N_GENES)
    np.testing.assert_array_equal(out, expected.toarray())


def test_iter_prepared_rows_subset_reports_original_row_of_empty_cell():
    values = counts(seed=6)
    values[25] = 0
    rows = np.array([0, 3, 4, 10, 11, 12, 25, 39])  # row 25 is the 7th selected row
    with pytest.raises(InputError, match=r"first at row 25\)"):
        list(
            iter_prepared(
                sp.csr_matrix(values),
                kind="counts",
                alignment=identity_alignment(),
                rows=rows,
                chunk_size=4,
            )
        )


def test_iter_prepared_reports_absolute_row_across_chunks():
    values = counts(seed=7)
    values[17] = 0
    with pytest.raises(InputError, match=r"first at row 17\)"):
        list(iter_prepared(values, kind="counts", alignment=identity_alignment(), chunk_size=5))
