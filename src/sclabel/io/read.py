"""Read single-cell matrices and find out what their values are.

Supported: `.h5ad` (in memory or backed), a 10x directory, a 10x `.h5`, `.csv`/`.tsv`
(optionally gzipped). `matrix(adata, layer)` picks X, a layer or `.raw` in one place so
every caller treats them alike.
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.errors import InputError

log = logging.getLogger("sclabel")

ValueKind = Literal["counts", "log1p", "log1p_rescaled", "log2", "normalized"]
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
_HOUSEKEEPING = {"ACTB", "GAPDH", "B2M", "MALAT1", "EEF1A1", "TMSB4X", "FTL", "RPL13A", "RPS27A"}


def read(path: str | Path, *, backed: bool = False) -> ad.AnnData:
    """Read a single-cell matrix from any supported format.

    `backed=True` opens an `.h5ad` read-only without loading X, so prediction can stream it.
    """
    path = Path(path)
    if not path.exists():
        supported = "supported: .h5ad, 10x dir, .h5, .csv, .tsv"
        raise InputError(f"input not found: {path}; check the path ({supported})")
    name = path.name.lower()
    try:
        if path.is_dir():
            adata = _read_10x_dir(path)
        elif name.endswith(".h5ad"):
            adata = ad.read_h5ad(path, backed="r" if backed else None)
        elif name.endswith(".h5"):
            adata = _read_10x_h5(path)
        elif re.search(r"\.(csv|tsv|txt)(\.gz)?$", name):
            adata = _read_table(path)
        else:
            msg = f"unsupported input {path}: expected .h5ad, .h5, .csv, .tsv or a 10x directory"
            raise InputError(msg)
    except InputError:
        raise
    except (OSError, KeyError, ValueError) as err:
        hint = "is it a valid, complete file?"
        if "must match dimensions" in str(err):  # anndata: an obsm/obsp/varm of other cells
            hint = "an obsm/obsp/varm entry belongs to other cells or genes; drop or recompute it"
        raise InputError(f"could not read {path} ({type(err).__name__}: {err}); {hint}") from err
    if backed and not name.endswith(".h5ad"):
        log.info("backed mode applies to .h5ad only; %s was read into memory", path.name)
    check_cells(adata, genes=not len(adata.obsm))  # embeddings alone (sclabel embed) are input
    return adata


def _read_10x_h5(path: Path) -> ad.AnnData:
    import scanpy as sc

    try:
        return sc.read_10x_h5(path)
    except (OSError, KeyError, ValueError):
        raise
    except Exception as err:  # scanpy raises a bare Exception for missing datasets
        msg = f"could not read {path} ({err}); is it a valid, complete 10x .h5 file?"
        raise InputError(msg) from err


def _read_10x_dir(path: Path) -> ad.AnnData:
    import scanpy as sc

    files = {p.name for p in path.iterdir()}
    if not files & {"matrix.mtx", "matrix.mtx.gz"}:
        msg = f"{path} is a directory without matrix.mtx[.gz]; is it a 10x output folder?"
        raise InputError(msg)
    compressed = "matrix.mtx.gz" in files
    options = {}
    if "compressed" in inspect.signature(sc.read_10x_mtx).parameters:  # scanpy >= 1.12
        options["compressed"] = compressed
    elif not compressed and "genes.tsv" not in files:
        msg = (
            f"{path} holds uncompressed Cell Ranger v3 files, which this scanpy version cannot "
            "read; gzip matrix.mtx, features.tsv and barcodes.tsv (or upgrade scanpy)"
        )
        raise InputError(msg)
    adata = sc.read_10x_mtx(path, var_names="gene_symbols", make_unique=True, **options)
    return adata


def _looks_like_genes(labels: pd.Index) -> bool:
    values = pd.Index(labels).astype(str)
    if len(values) == 0:
        return False
    if values.str.match(_ENSEMBL.pattern).mean() > 0.5:
        return True
    upper = set(values.str.upper())
    return bool(upper & _HOUSEKEEPING) or values.str.upper().str.startswith("MT-").sum() >= 3


def _read_table(path: Path) -> ad.AnnData:
    sep = "\t" if re.search(r"\.(tsv|txt)(\.gz)?$", path.name.lower()) else ","
    frame = pd.read_csv(path, sep=sep, index_col=0)
    if frame.empty:
        raise InputError(f"{path} holds no values; expected a table of cells x genes with a header")
    rows_are_genes = _looks_like_genes(frame.index)
    cols_are_genes = _looks_like_genes(frame.columns)
    if rows_are_genes and not cols_are_genes:
        transpose = True
    elif cols_are_genes and not rows_are_genes:
        transpose = False
    else:  # no gene names recognised: expression tables usually have more genes than cells
        transpose = frame.shape[0] > frame.shape[1]
        log.info(
            "could not tell genes from cells by name in %s; assuming %s",
            path.name,
            "genes x cells (rows are genes)" if transpose else "cells x genes",
        )
    if transpose:
        frame = frame.T
    non_numeric = [c for c, t in frame.dtypes.items() if not np.issubdtype(t, np.number)]
    if non_numeric:
        msg = f"{path} has non-numeric columns {non_numeric[:5]}; expected a numeric matrix"
        raise InputError(msg)
    X = sp.csr_matrix(frame.to_numpy(dtype=np.float32))
    return ad.AnnData(
        X=X,
        obs=pd.DataFrame(index=frame.index.astype(str)),
        var=pd.DataFrame(index=frame.columns.astype(str)),
    )


def open_input(
    path: str | Path,
    *,
    backed: bool = False,
    obs_filter: str | None = None,
    layer: str | None = None,
):
    """What the CLI's INPUT names: a `Store` folder, a SOMA experiment (its cells selected by
    `obs_filter`, X from its `layer`: by default raw, counts or data, read into memory) or
    any file `read` takes."""
    from sclabel.io.soma import is_soma, open_soma
    from sclabel.store.format import Store, is_store

    if is_store(path):
        if obs_filter:
            raise InputError("--obs-filter applies to SOMA experiments, not to a store")
        return Store.open(path)
    if is_soma(path):
        soma_layer = None if layer in (None, "X") else layer
        with open_soma(path, obs_filter=obs_filter, layer=soma_layer) as source:
            return source.to_anndata()
    if obs_filter:
        raise InputError("--obs-filter applies to SOMA experiments only")
    return read(path, backed=backed)


def as_strings(values: pd.Series) -> pd.Series:
    """An obs column as str values (categories and numbers alike), missing values kept as NaN."""
    values = values.astype(object)
    return values.where(values.isna(), values.astype(str))


def check_cells(adata: ad.AnnData, *, genes: bool = True) -> None:
    """Refuse an AnnData with no cells, no genes (when `genes`: an embedding-only AnnData
    has none) or duplicate cell names."""
    if adata.n_obs == 0 or (genes and adata.n_vars == 0):
        msg = (
            f"the matrix is empty ({adata.n_obs} cells x {adata.n_vars} genes); "
            "check that this is the right file and that filtering kept some cells"
        )
        raise InputError(msg)
    if not adata.obs_names.is_unique:
        dups = adata.obs_names[adata.obs_names.duplicated()].unique()
        msg = (
            f"{len(dups)} duplicate cell names (e.g. {list(dups[:3])}); "
            "make them unique first, e.g. adata.obs_names_make_unique()"
        )
        raise InputError(msg)


def matrix(adata: ad.AnnData, layer: str | None):
    """Return (X, var) for `layer`: None for X, "raw" for `.raw`, else `adata.layers[layer]`."""
    if layer is None or layer == "X":
        return adata.X, adata.var
    available = ["X"] + (["raw"] if adata.raw is not None else []) + list(adata.layers)
    if layer == "raw":
        if adata.raw is None:
            msg = f"layer 'raw' requested but this AnnData has no .raw; available: {available}"
            raise InputError(msg)
        return adata.raw.X, adata.raw.var
    if layer not in adata.layers:
        msg = f"layer {layer!r} not found; available: {available}"
        raise InputError(msg)
    return adata.layers[layer], adata.var


@dataclass(frozen=True)
class ValueReport:
    """What a matrix holds, judged from a sample of its rows."""

    kind: ValueKind
    max_value: float
    detail: str


# log1p of values normalized to 10,000 per cell cannot exceed log1p(10,000) = 9.21; above
# this, natural-log input normalized to 10,000 is ruled out
LOG1P_CEILING = 9.8
CONSTANT = 0.05  # row sums whose coefficient of variation is below this are "constant"
MIN_ROWS_TO_JUDGE = 20  # fewer sampled rows: log input is taken as log1p, as given
TYPICAL_TOTAL = 1e4  # log1p input normalized to this needs no rescaling
INPUT_KINDS = ("auto", "counts", "log1p", "log2", "normalized")


def _spread(sums: np.ndarray) -> float:
    return float(sums.std() / max(sums.mean(), 1e-12))


def _row_sums(sample, transform) -> np.ndarray:
    rows = sp.csr_matrix(sample, dtype=np.float64)
    rows.data = transform(rows.data)
    return np.asarray(rows.sum(axis=1)).ravel()


def detect_values(X, *, n_rows: int = 2000, seed: int = 0, declared: str | None = None):
    """Tell raw counts from log-scaled values, and the log's base; refuse scaled matrices.

    Counts are integers. Non-integer values are read as log1p when expm1 of each row sums
    to the same total (rescaled to the target sum if that total is another, e.g. CPM), as
    log2(x+1) when 2^x - 1 of each row does (converted: "log2"), and as log1p as given
    otherwise, with a warning when their maximum is above what log1p of values normalized
    to 10,000 can reach. `declared` (--input) overrides the guess; "normalized" takes
    per-cell-scaled values that are not logged (CPM, TPM, FPKM) and rescales them.

    Works on a sample of rows (contiguous for backed data, random otherwise) so it is cheap
    on any size; `check_chunk` then validates every row as it is processed.
    """
    n = X.shape[0]
    if n == 0 or X.shape[1] == 0:
        raise InputError(f"the matrix is empty ({X.shape[0]} cells x {X.shape[1]} genes)")
    if declared not in (None, *INPUT_KINDS):
        raise InputError(f"input kind must be one of {INPUT_KINDS}, not {declared!r}")
    if isinstance(X, np.ndarray | sp.spmatrix | sp.sparray):
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, n_rows), replace=False))
        sample = X[rows]
    else:  # backed dataset: contiguous reads are the cheap ones
        sample = X[: min(n, n_rows)]
    values = sample.data if sp.issparse(sample) else np.asarray(sample).ravel()
    values = np.asarray(values, dtype=np.float64)
    _check_finite(values)
    if values.size == 0 or not values.any():
        raise InputError("the sampled cells hold only zeros; is this the right matrix or layer?")
    vmin, vmax = float(values.min()), float(values.max())
    if vmin < 0:
        msg = (
            f"X holds negative values (min {vmin:.3g}): it looks scaled or batch-corrected. "
            "sclabel needs raw counts, log-normalized or per-cell-normalized values; pass "
            "--layer with the counts (e.g. --layer raw or --layer counts)"
        )
        raise InputError(msg)
    if declared == "normalized":
        return ValueReport("normalized", vmax, f"per-cell-normalized values (max {vmax:.3g})")
    nonzero = values[values != 0]
    integers = np.allclose(nonzero, np.round(nonzero), atol=1e-4)
    if declared == "counts" or (declared in (None, "auto") and integers):
        if declared != "counts":
            _warn_if_rounded_log(sample, vmax)
        return ValueReport("counts", vmax, f"raw counts (integers, max {vmax:.0f})")
    if vmax > 20 and declared in (None, "auto"):
        msg = (
            f"X holds non-integer values up to {vmax:.3g}: normalized (CPM, TPM, FPKM) but "
            "not log-transformed? Pass --input normalized to rescale each cell and log1p "
            "them, or --layer with the raw counts"
        )
        raise InputError(msg)
    if sample.shape[0] < MIN_ROWS_TO_JUDGE:  # too few rows to tell a total from chance
        return ValueReport("log1p", vmax, f"log1p-normalized values (max {vmax:.2f})")
    totals = _row_sums(sample, np.expm1)
    natural = _spread(totals)
    base2 = _spread(_row_sums(sample, lambda v: np.exp2(v) - 1))
    if declared == "log2" or (declared in (None, "auto") and base2 < CONSTANT <= natural):
        detail = f"log2(x+1) values (max {vmax:.2f}; 2^x - 1 of every row sums to one total)"
        return ValueReport("log2", vmax, detail + ": converted to log1p")
    if natural < CONSTANT:
        total = float(np.median(totals))
        if abs(total / TYPICAL_TOTAL - 1) < 0.01:  # normalized to 10,000 already
            return ValueReport("log1p", vmax, f"log1p-normalized values (max {vmax:.2f})")
        detail = f"log1p values of rows normalized to {total:,.0f} (max {vmax:.2f})"
        return ValueReport("log1p_rescaled", vmax, detail + ": rescaled to the target sum")
    if vmax > LOG1P_CEILING:
        log.warning(
            "X holds non-integer values up to %.2f, more than log1p of values normalized to "
            "10,000 reaches (9.2), and neither expm1 nor 2^x - 1 of the rows sums to one total "
            "(spread %.0f%% and %.0f%%); they are read as log1p values as given. If they are "
            "log2(x+1) pass --input log2; if they are not logged, --input normalized",
            vmax, 100 * natural, 100 * base2,
        )  # fmt: skip
    return ValueReport("log1p", vmax, f"log1p-normalized values (max {vmax:.2f})")


def _warn_if_rounded_log(sample, vmax: float) -> None:
    """Integers that are not counts: log-normalized values rounded (or truncated) to whole
    numbers pass every check for counts and would be normalized a second time. Two signs:
    the expm1 of each row sums to about the same total (normalized rows), or no value above
    10 in cells deep enough that real counts would have some."""
    if vmax > 20:  # log1p of values normalized to 10,000 (or log2 of them) stays below 20
        return
    rows = sp.csr_matrix(sample, dtype=np.float64)
    if rows.shape[0] < 20:
        return
    genes_per_cell = float(np.diff(rows.indptr).mean())
    expm1 = rows.copy()
    np.expm1(expm1.data, out=expm1.data)
    normalized_sums, raw_sums = (np.asarray(m.sum(axis=1)).ravel() for m in (expm1, rows))

    constant = _spread(normalized_sums) < CONSTANT and _spread(raw_sums) > 0.1
    shallow = vmax <= 10 and genes_per_cell >= 200
    if constant or shallow:
        why = (
            "expm1 of every row sums to the same total"
            if constant
            else f"no value above {vmax:.0f} in cells with {genes_per_cell:.0f} genes each"
        )
        log.warning(
            "X holds integers, but they look like rounded log-normalized values, not raw "
            "counts (%s); they will be treated as counts and normalized again. Pass the raw "
            "counts with --layer (e.g. --layer raw or --layer counts) if the file has them",
            why,
        )


def _check_finite(values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        msg = f"the matrix holds {n_bad} NaN or infinite values; remove or fix those cells first"
        raise InputError(msg)


def check_chunk(chunk: sp.csr_matrix, kind: ValueKind, first_row: int | np.ndarray = 0) -> None:
    """Validate every value of a row chunk: finite, non-negative, no all-zero cells.

    `first_row` is the row number of the chunk's first row, or (for a non-contiguous chunk)
    the row numbers of all its rows; messages name the offending row by it.
    """
    row_ids = np.asarray(first_row)

    def row(i: int) -> int:
        return int(row_ids[i]) if row_ids.ndim else int(row_ids) + int(i)

    _check_finite(chunk.data)
    if chunk.data.size and chunk.data.min() < 0:
        first_value = np.flatnonzero(chunk.data < 0)[0]
        first_bad = int(np.searchsorted(chunk.indptr, first_value, side="right")) - 1
        msg = (
            f"negative values found (first at row {row(first_bad)}); expected {kind} "
            "(non-negative): pass --layer with the raw counts"
        )
        raise InputError(msg)
    empty = np.flatnonzero(np.asarray(chunk.sum(axis=1)).ravel() == 0)
    if empty.size:
        msg = (
            f"{empty.size} cell(s) have zero counts (first at row {row(empty[0])}); "
            "filter them first, e.g. sc.pp.filter_cells(adata, min_counts=1)"
        )
        raise InputError(msg)


def check_all_rows(X, *, chunk_size: int = 16384) -> None:
    """Every row of X checked once, before any work: non-finite and negative values, and
    all the cells with zero counts counted (not only the first chunk's)."""
    from sclabel.data.normalize import row_block, to_csr

    empty: list[int] = []
    n_empty = 0
    for start in range(0, X.shape[0], chunk_size):
        block = to_csr(row_block(X, start, start + chunk_size))
        _check_finite(block.data)
        if block.data.size and block.data.min() < 0:
            check_chunk(block, "counts", start)  # names the first negative row
        zero = np.flatnonzero(np.asarray(block.sum(axis=1)).ravel() == 0)
        n_empty += zero.size
        empty.extend((zero[: max(0, 5 - len(empty))] + start).tolist())
    if n_empty:
        rows = ", ".join(map(str, empty)) + (", ..." if n_empty > len(empty) else "")
        msg = (
            f"{n_empty} cell(s) have zero counts (rows {rows}); filter them first, e.g. "
            "sc.pp.filter_cells(adata, min_counts=1)"
        )
        raise InputError(msg)
