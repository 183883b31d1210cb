"""sclabel.io.read: reading every supported format, picking layers, judging values."""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from sclabel.errors import InputError
from sclabel.io import read as io

N_CELLS, N_GENES = 7, 5
ENSEMBL = [f"ENSG{i:011d}" for i in range(1, N_GENES + 1)]
SYMBOLS = ["ACTB", "GAPDH", "CD3E", "MS4A1", "LYZ"]
BARCODES = [f"AAACCTGAGC{i:06d}-1" for i in range(N_CELLS)]


def counts(n_cells: int = N_CELLS, n_genes: int = N_GENES, seed: int = 0) -> np.ndarray:
    """Integer counts (cells x genes) with zeros and no all-zero cell."""
    rng = np.random.default_rng(seed)
    values = rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)
    values[rng.random((n_cells, n_genes)) < 0.4] = 0
    values[:, 0] += 1  # every cell has at least one count
    return values


def adata_from(values: np.ndarray, **kwargs) -> ad.AnnData:
    return ad.AnnData(
        X=sp.csr_matrix(values),
        obs=pd.DataFrame(index=[f"cell{i}" for i in range(values.shape[0])]),
        var=pd.DataFrame(index=[f"gene{j}" for j in range(values.shape[1])]),
        **kwargs,
    )


def dense(X) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X)


# --- .h5ad -------------------------------------------------------------------------------


def test_read_h5ad_in_memory_round_trips(tmp_path):
    values = counts()
    path = tmp_path / "data.h5ad"
    adata_from(values).write_h5ad(path)
    adata = io.read(path)
    assert not adata.isbacked
    np.testing.assert_array_equal(dense(adata.X), values)
    assert list(adata.obs_names) == [f"cell{i}" for i in range(N_CELLS)]
    assert list(adata.var_names) == [f"gene{j}" for j in range(N_GENES)]


@pytest.mark.parametrize("sparse", [True, False])
def test_read_h5ad_backed_reads_row_slices(tmp_path, sparse):
    values = counts(20, 6, seed=3)
    path = tmp_path / "data.h5ad"
    source = adata_from(values)
    if not sparse:
        source.X = values
    source.write_h5ad(path)
    adata = io.read(path, backed=True)
    try:
        assert adata.isbacked
        np.testing.assert_array_equal(dense(adata.X[4:9]), values[4:9])
        np.testing.assert_array_equal(dense(adata.X[15:]), values[15:])
    finally:
        adata.file.close()


# --- 10x directories and .h5 -------------------------------------------------------------


def _write_gz(path: Path, text: str) -> None:
    with gzip.open(path, "wt") as handle:
        handle.write(text)


def write_10x_v3_dir(folder: Path, values: np.ndarray) -> None:
    """Cell Ranger >= 3 layout: gzipped matrix (genes x cells), features and barcodes."""
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", sp.coo_matrix(values.T.astype(np.int64)))
    with open(folder / "matrix.mtx", "rb") as src, gzip.open(folder / "matrix.mtx.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (folder / "matrix.mtx").unlink()
    features = "".join(
        f"{i}\t{s}\tGene Expression\n" for i, s in zip(ENSEMBL, SYMBOLS, strict=True)
    )
    _write_gz(folder / "features.tsv.gz", features)
    _write_gz(folder / "barcodes.tsv.gz", "".join(f"{b}\n" for b in BARCODES))


def write_10x_legacy_dir(folder: Path, values: np.ndarray) -> None:
    """Cell Ranger 2 layout: plain matrix.mtx (genes x cells), genes.tsv, barcodes.tsv."""
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", sp.coo_matrix(values.T.astype(np.int64)))
    genes = "".join(f"{i}\t{s}\n" for i, s in zip(ENSEMBL, SYMBOLS, strict=True))
    (folder / "genes.tsv").write_text(genes)
    (folder / "barcodes.tsv").write_text("".join(f"{b}\n" for b in BARCODES))


@pytest.mark.parametrize("writer", [write_10x_v3_dir, write_10x_legacy_dir], ids=["v3", "legacy"])
def test_read_10x_directory(tmp_path, writer):
    values = counts()
    folder = tmp_path / "filtered_feature_bc_matrix"
    writer(folder, values)
    adata = io.read(folder)
    assert adata.shape == (N_CELLS, N_GENES)  # cells x genes although the file is genes x cells
    np.testing.assert_array_equal(dense(adata.X), values)
    assert list(adata.obs_names) == BARCODES
    assert list(adata.var_names) == SYMBOLS
    assert list(adata.var["gene_ids"]) == ENSEMBL


def test_read_uncompressed_v3_directory(tmp_path):
    """STARsolo-style v3 files without .gz: read when scanpy can, else a clear InputError."""
    import inspect

    import scanpy as sc

    values = counts()
    folder = tmp_path / "solo"
    write_10x_v3_dir(folder, values)
    for name in ("matrix.mtx", "features.tsv", "barcodes.tsv"):
        with gzip.open(folder / f"{name}.gz", "rb") as src, open(folder / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
        (folder / f"{name}.gz").unlink()
    if "compressed" in inspect.signature(sc.read_10x_mtx).parameters:
        adata = io.read(folder)
        np.testing.assert_array_equal(dense(adata.X), values)
        assert list(adata.obs_names) == BARCODES
    else:
        with pytest.raises(
            InputError, match=r"uncompressed Cell Ranger v3 files.*gzip matrix\.mtx"
        ):
            io.read(folder)


def write_10x_h5(path: Path, values: np.ndarray, feature_types: list[str]) -> None:
    """Cell Ranger >= 3 HDF5: /matrix holds a genes x cells CSC (= cells x genes CSR)."""
    csr = sp.csr_matrix(values)
    n_cells, n_genes = values.shape
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m.create_dataset("data", data=csr.data.astype(np.int32))
        m.create_dataset("indices", data=csr.indices.astype(np.int64))
        m.create_dataset("indptr", data=csr.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([n_genes, n_cells], dtype=np.int32))
        m.create_dataset("barcodes", data=np.array(BARCODES[:n_cells], dtype="S"))
        feats = m.create_group("features")
        feats.create_dataset("id", data=np.array(ENSEMBL[:n_genes], dtype="S"))
        feats.create_dataset("name", data=np.array(SYMBOLS[:n_genes], dtype="S"))
        feats.create_dataset("feature_type", data=np.array(feature_types, dtype="S"))
        feats.create_dataset("genome", data=np.array(["GRCh38"] * n_genes, dtype="S"))


def test_read_10x_h5(tmp_path):
    values = counts()
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    write_10x_h5(path, values, ["Gene Expression"] * N_GENES)
    adata = io.read(path)
    assert adata.shape == (N_CELLS, N_GENES)
    np.testing.assert_array_equal(dense(adata.X), values)
    assert list(adata.obs_names) == BARCODES
    assert list(adata.var_names) == SYMBOLS
    assert list(adata.var["gene_ids"]) == ENSEMBL


def test_read_10x_h5_keeps_gene_expression_only(tmp_path):
    values = counts()
    types = ["Gene Expression"] * (N_GENES - 1) + ["Antibody Capture"]
    path = tmp_path / "multi.h5"
    write_10x_h5(path, values, types)
    adata = io.read(path)
    assert list(adata.var_names) == SYMBOLS[:-1]
    np.testing.assert_array_equal(dense(adata.X), values[:, :-1])


def test_read_10x_h5_missing_datasets_is_input_error(tmp_path):
    path = tmp_path / "broken.h5"
    with h5py.File(path, "w") as f:
        f.create_group("matrix").create_dataset("data", data=np.ones(3))
    with pytest.raises(InputError, match=r"could not read .*broken\.h5.*valid"):
        io.read(path)


# --- text tables -------------------------------------------------------------------------


def test_csv_genes_by_cells_with_ensembl_ids_is_transposed(tmp_path):
    values = counts(6, 4)  # fewer genes than cells: shape alone would not transpose
    frame = pd.DataFrame(values.T, index=ENSEMBL[:4], columns=BARCODES[:6])
    path = tmp_path / "genes_by_cells.csv"
    frame.to_csv(path)
    adata = io.read(path)
    assert adata.shape == (6, 4)
    assert list(adata.obs_names) == BARCODES[:6]
    assert list(adata.var_names) == ENSEMBL[:4]
    np.testing.assert_array_equal(dense(adata.X), values)


def test_tsv_genes_by_cells_with_housekeeping_symbols_is_transposed(tmp_path):
    values = counts(6, 4)
    frame = pd.DataFrame(values.T, index=SYMBOLS[:4], columns=[f"c{i}" for i in range(6)])
    path = tmp_path / "genes_by_cells.tsv"
    frame.to_csv(path, sep="\t")
    adata = io.read(path)
    assert list(adata.obs_names) == [f"c{i}" for i in range(6)]
    assert list(adata.var_names) == SYMBOLS[:4]
    np.testing.assert_array_equal(dense(adata.X), values)


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t"), (".csv.gz", ",")])
def test_table_cells_by_genes_is_not_transposed(tmp_path, suffix, sep):
    values = counts(6, 4)  # more cells than genes: shape alone would transpose
    values[2, 1] = 0.5  # a non-integer value must round-trip too
    frame = pd.DataFrame(values, index=[f"c{i}" for i in range(6)], columns=SYMBOLS[:4])
    path = tmp_path / f"cells_by_genes{suffix}"
    frame.to_csv(path, sep=sep)
    adata = io.read(path)
    assert list(adata.obs_names) == [f"c{i}" for i in range(6)]
    assert list(adata.var_names) == SYMBOLS[:4]
    np.testing.assert_array_equal(dense(adata.X), values)


def test_table_with_unrecognised_names_assumes_more_genes_than_cells(tmp_path):
    values = counts(3, 8)
    frame = pd.DataFrame(values.T, index=[f"g{j}" for j in range(8)], columns=["a", "b", "c"])
    path = tmp_path / "anon.csv"
    frame.to_csv(path)
    adata = io.read(path)
    assert list(adata.obs_names) == ["a", "b", "c"]
    np.testing.assert_array_equal(dense(adata.X), values)


def test_table_with_text_column_is_refused(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("cell,ACTB,GAPDH,note\nc1,1,2,x\nc2,3,4,y\n")
    with pytest.raises(InputError, match=r"non-numeric columns \['note'\].*numeric matrix"):
        io.read(path)


def test_table_with_header_only_is_refused(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("cell,ACTB,GAPDH\n")
    with pytest.raises(
        InputError, match=r"empty\.csv holds no values; expected a table of cells x genes"
    ):
        io.read(path)


# --- read errors -------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"input not found: .*nope\.h5ad; check the path"):
        io.read(tmp_path / "nope.h5ad")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "data.loom"
    path.write_bytes(b"\x00")
    with pytest.raises(InputError, match=r"unsupported input .*data\.loom: expected \.h5ad, \.h5"):
        io.read(path)


def test_directory_without_matrix(tmp_path):
    folder = tmp_path / "not10x"
    folder.mkdir()
    (folder / "barcodes.tsv").write_text("A\n")
    with pytest.raises(InputError, match=r"without matrix\.mtx\[\.gz\]; is it a 10x output folder"):
        io.read(folder)


def test_corrupt_h5ad(tmp_path):
    path = tmp_path / "corrupt.h5ad"
    path.write_bytes(b"this is not an HDF5 file" * 40)
    with pytest.raises(InputError, match=r"could not read .*corrupt\.h5ad.*valid, complete file"):
        io.read(path)


def test_truncated_h5ad(tmp_path):
    good = tmp_path / "good.h5ad"
    adata_from(counts()).write_h5ad(good)
    path = tmp_path / "truncated.h5ad"
    path.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(InputError, match=r"could not read .*truncated\.h5ad.*valid, complete file"):
        io.read(path)


def test_empty_matrix_zero_cells(tmp_path):
    path = tmp_path / "empty.h5ad"
    ad.AnnData(
        X=sp.csr_matrix((0, 3), dtype=np.float32),
        var=pd.DataFrame(index=["g0", "g1", "g2"]),
    ).write_h5ad(path)
    with pytest.raises(InputError, match=r"the matrix is empty \(0 cells x 3 genes\).*check"):
        io.read(path)


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
def test_duplicate_cell_names(tmp_path):
    path = tmp_path / "dups.csv"
    path.write_text("cell,ACTB,GAPDH\nc1,1,2\nc1,3,4\nc2,5,6\n")
    with pytest.raises(InputError, match=r"1 duplicate cell names.*'c1'.*obs_names_make_unique"):
        io.read(path)


# --- matrix(): which values to use -------------------------------------------------------


@pytest.fixture
def layered():
    values = counts()
    adata = adata_from(np.log1p(values))
    adata.layers["counts"] = sp.csr_matrix(values)
    raw = adata_from(np.hstack([values, values[:, :1]]))  # raw keeps one more gene
    raw.var_names = [*adata.var_names, "extra"]
    adata.raw = raw
    return adata, values


def test_matrix_x(layered):
    adata, values = layered
    for layer in (None, "X"):
        X, var = io.matrix(adata, layer)
        np.testing.assert_allclose(dense(X), np.log1p(values))
        assert var is adata.var


def test_matrix_named_layer(layered):
    adata, values = layered
    X, var = io.matrix(adata, "counts")
    np.testing.assert_array_equal(dense(X), values)
    assert list(var.index) == list(adata.var_names)


def test_matrix_raw_uses_raw_var(layered):
    adata, values = layered
    X, var = io.matrix(adata, "raw")
    assert X.shape == (N_CELLS, N_GENES + 1)
    assert list(var.index) == [*adata.var_names, "extra"]
    np.testing.assert_array_equal(dense(X)[:, :N_GENES], values)


def test_matrix_unknown_layer_lists_available(layered):
    adata, _ = layered
    with pytest.raises(
        InputError, match=r"layer 'spliced' not found; available: \['X', 'raw', 'counts'\]"
    ):
        io.matrix(adata, "spliced")


def test_matrix_raw_absent():
    adata = adata_from(counts())
    adata.layers["counts"] = adata.X.copy()
    with pytest.raises(InputError, match=r"no \.raw.*available: \['X', 'counts'\]"):
        io.matrix(adata, "raw")


# --- detect_values -----------------------------------------------------------------------


def test_detect_integer_counts():
    values = counts(50, 30, seed=1)
    report = io.detect_values(sp.csr_matrix(values))
    assert report.kind == "counts"
    assert report.max_value == values.max()


def test_detect_counts_dense():
    values = counts(50, 30, seed=2)
    assert io.detect_values(values).kind == "counts"


def test_detect_log1p_of_normalized_counts():
    values = counts(50, 30, seed=1).astype(np.float64)
    normalized = values / values.sum(axis=1, keepdims=True) * 1e4
    logged = np.log1p(normalized)
    report = io.detect_values(sp.csr_matrix(logged))
    assert report.kind == "log1p"
    assert report.max_value == pytest.approx(logged.max())


def test_detect_backed_sparse(tmp_path):
    path = tmp_path / "b.h5ad"
    values = counts(30, 6)
    adata_from(values).write_h5ad(path)
    adata = io.read(path, backed=True)
    try:
        assert io.detect_values(adata.X).kind == "counts"
    finally:
        adata.file.close()


def test_detect_refuses_negative_values():
    values = counts(20, 10) - 1.5  # like scaled (z-scored) data
    with pytest.raises(InputError, match=r"negative values.*scaled.*--layer"):
        io.detect_values(sp.csr_matrix(values))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_detect_refuses_nan_and_inf(bad):
    values = counts(20, 10)
    values[3, 2] = bad
    with pytest.raises(InputError, match=r"1 NaN or infinite values; remove or fix"):
        io.detect_values(values)


def test_detect_refuses_normalized_not_logged():
    values = counts(50, 30, seed=1).astype(np.float64)
    normalized = values / values.sum(axis=1, keepdims=True) * 1e4  # non-integer, max >> 20
    with pytest.raises(InputError, match=r"not log-transformed\? Pass --input normalized.*--layer"):
        io.detect_values(sp.csr_matrix(normalized))


def test_detect_refuses_all_zero_sample():
    with pytest.raises(InputError, match=r"only zeros; is this the right matrix or layer"):
        io.detect_values(sp.csr_matrix((10, 5), dtype=np.float32))


def test_detect_refuses_explicit_zeros_only():
    X = sp.csr_matrix((np.zeros(3), ([0, 1, 2], [0, 1, 2])), shape=(3, 3))
    assert X.nnz == 3
    with pytest.raises(InputError, match=r"only zeros"):
        io.detect_values(X)


def test_detect_refuses_empty_matrix():
    with pytest.raises(InputError, match=r"empty \(0 cells x 4 genes\)"):
        io.detect_values(sp.csr_matrix((0, 4)))


# --- check_chunk -------------------------------------------------------------------------


def test_check_chunk_accepts_good_rows():
    io.check_chunk(sp.csr_matrix(counts()), "counts")


def test_check_chunk_refuses_zero_count_cell():
    values = counts()
    values[4] = 0
    with pytest.raises(
        InputError, match=r"1 cell\(s\) have zero counts \(first at row 104\).*filter_cells"
    ):
        io.check_chunk(sp.csr_matrix(values), "counts", first_row=100)


def test_check_chunk_refuses_row_of_explicit_zeros():
    values = sp.csr_matrix(counts(3, 4))
    # row 1 stores two explicit zeros, so it is not structurally empty
    data = np.concatenate([values[0].data, [0.0, 0.0], values[2].data]).astype(np.float32)
    indices = np.concatenate([values[0].indices, [0, 2], values[2].indices])
    indptr = np.array([0, values[0].nnz, values[0].nnz + 2, values[0].nnz + 2 + values[2].nnz])
    chunk = sp.csr_matrix((data, indices, indptr), shape=(3, 4))
    assert chunk.getrow(1).nnz == 2
    with pytest.raises(InputError, match=r"first at row 1\).*sc\.pp\.filter_cells"):
        io.check_chunk(chunk, "counts")


def test_check_chunk_refuses_negative():
    values = counts()
    values[2, 2] = -1
    with pytest.raises(InputError, match=r"negative values found \(first at row 2\).*--layer"):
        io.check_chunk(sp.csr_matrix(values), "counts")


def test_check_chunk_refuses_nan():
    values = counts()
    values[2, 2] = np.nan
    with pytest.raises(InputError, match=r"NaN or infinite"):
        io.check_chunk(sp.csr_matrix(values), "log1p")


def test_check_chunk_names_negative_row_with_offset():
    values = counts()
    values[4, 3] = -2
    with pytest.raises(InputError, match=r"negative values found \(first at row 14\)"):
        io.check_chunk(sp.csr_matrix(values), "log1p", first_row=10)


def test_check_chunk_with_row_numbers_of_a_non_contiguous_chunk():
    values = counts(3, 4)
    values[2] = 0
    with pytest.raises(InputError, match=r"first at row 20\)"):
        io.check_chunk(sp.csr_matrix(values), "counts", first_row=np.array([3, 8, 20]))


@pytest.mark.parametrize("how", ["rounded", "truncated"])
def test_rounded_log_normalized_values_are_not_taken_for_counts_silently(how, caplog):
    rng = np.random.default_rng(0)
    raw = rng.poisson(rng.gamma(0.3, 4, size=(300, 1500))).astype(np.float64)
    raw[:, 0] += 1
    logged = np.log1p(raw / raw.sum(axis=1, keepdims=True) * 1e4)
    values = np.round(logged) if how == "rounded" else np.floor(logged)
    with caplog.at_level(logging.WARNING, logger="sclabel"):
        report = io.detect_values(sp.csr_matrix(values.astype(np.float32)))
    assert report.kind == "counts"  # still integers: the user decides, but is told
    assert "look like rounded log-normalized values" in caplog.text and "--layer" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sclabel"):
        io.detect_values(sp.csr_matrix(raw.astype(np.float32)))  # real counts: no warning
    assert caplog.text == ""
