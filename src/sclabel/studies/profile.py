"""Count statistics of a real dataset, to simulate realistic cells at scale (`simulate.py`).

`fit_profile` learns per cell type the gene proportions, negative-binomial dispersions, type
frequencies and library sizes of a real AnnData, and donor effects when it has donors; a
`ScaleProfile` is saved as JSON + safetensors and generates any number of cells.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from sclabel.errors import InputError
from sclabel.io.atomic import atomic_dir

log = logging.getLogger("sclabel")

DEFAULT_DONOR_SD = 0.2  # per-gene log-scale donor spread when the data has no donors
DISPERSION_RANGE = (0.01, 20.0)  # NB phi (var = mu + phi mu^2) seen in UMI data, with margin
MIN_COUNTS = 20  # counts a gene needs in a type (or donor) before its own estimate is trusted
NAMES = ("genes", "cell_types", "gene_symbols")
ARRAYS = ("type_freq", "means", "dispersion", "log_lib_mean", "log_lib_sd", "donor_sd")
SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "feature_name", "gene_name", "symbol")
FORMAT = "sclabel-scale-profile"


@dataclass
class ScaleProfile:
    """Per-type count statistics of a real dataset; T types, G genes, arrays float32.

    `means` (T, G) are expected proportions of a cell's counts (rows sum to 1), `dispersion`
    (T, G) the NB phi, `log_lib_mean`/`log_lib_sd` (T,) a log-normal of total counts,
    `type_freq` (T,) the type fractions and `donor_sd` (G,) the s.d. of a donor's log-fold
    change per gene.
    """

    genes: list[str]
    cell_types: list[str]
    type_freq: np.ndarray
    means: np.ndarray
    dispersion: np.ndarray
    log_lib_mean: np.ndarray
    log_lib_sd: np.ndarray
    donor_sd: np.ndarray
    gene_symbols: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        for key in ARRAYS:
            setattr(self, key, np.asarray(getattr(self, key), dtype=np.float32))

    @property
    def var(self) -> pd.DataFrame:
        """The `var` of generated data: gene names, plus `gene_symbols` when fitted with them."""
        var = pd.DataFrame(index=pd.Index(self.genes))
        if self.gene_symbols is not None:
            var["gene_symbols"] = self.gene_symbols
        return var

    def save(self, path: str | Path) -> Path:
        """Write `profile.json` (names, metadata) and `profile.safetensors` (arrays), no pickle."""
        info = {"format": FORMAT, "version": 1, "meta": self.meta}
        info.update({k: getattr(self, k) for k in NAMES})
        with atomic_dir(path, marker="profile.json", what="scale profile") as tmp:
            arrays = {k: np.ascontiguousarray(getattr(self, k)) for k in ARRAYS}
            save_file(arrays, str(tmp / "profile.safetensors"))
            (tmp / "profile.json").write_text(json.dumps(info) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ScaleProfile:
        path = Path(path)
        try:
            info = json.loads((path / "profile.json").read_text())
            arrays = load_file(str(path / "profile.safetensors"))
        except (OSError, ValueError, SafetensorError) as err:
            raise InputError(f"cannot read scale profile {path}: {err}; fit it again") from err
        if info.get("format") != FORMAT or set(arrays) != set(ARRAYS):
            raise InputError(f"{path} is not a sclabel scale profile (format {FORMAT} v1)")
        return cls(**{k: info[k] for k in NAMES}, meta=info["meta"], **arrays)


def fit_profile(
    adata: ad.AnnData,
    *,
    cell_type_key: str | None = None,
    donor_key: str | None = None,
    n_clusters: int = 8,
    min_cells: int = 20,
    seed: int = 0,
) -> ScaleProfile:
    """Fit a ScaleProfile to the raw counts in `adata.X`.

    Without `cell_type_key`, types are k-means clusters (`cluster_0` the largest) of the
    log1p-normalized top-1000-variance genes on 30 principal components. Per type:
    proportions are the mean of counts / library size, shrunk by one pseudo-cell towards the
    overall mean so a gene unseen in a small type is rare rather than impossible; dispersion is
    the method of moments on size-normalized counts, clipped to DISPERSION_RANGE and, for genes
    with few counts, shrunk (on the log scale) towards the type's median; library sizes are a
    log-normal. With `donor_key`, `donor_sd` per gene is the spread of donor-vs-type log-fold
    changes minus their expected sampling noise; without it every gene gets DEFAULT_DONOR_SD so
    generated donors still differ. Types with fewer than `min_cells` cells are dropped.
    """
    for key in (cell_type_key, donor_key):
        if key is not None and key not in adata.obs:
            raise InputError(f"obs has no column {key!r}; columns are {list(adata.obs.columns)}")
    X = _raw_counts(adata)
    lib = np.asarray(X.sum(axis=1)).ravel()
    given = None if cell_type_key is None else adata.obs[cell_type_key].to_numpy()
    labels = pd.Series(_cluster(X, lib, n_clusters, seed) if given is None else given, dtype=object)
    valid = labels.notna().to_numpy() & (lib > 0)
    labels = labels.astype(str).to_numpy()
    sizes = pd.Series(labels[valid]).value_counts()
    types = sorted(sizes.index[sizes >= min_cells])
    if (sizes < min_cells).any():
        small = sizes[sizes < min_cells].to_dict()
        log.warning("fit_profile: dropping types with fewer than %d cells: %s", min_cells, small)
    if not types:
        raise InputError(f"no cell type has {min_cells} cells; lower min_cells")
    keep = valid & np.isin(labels, types)  # cells with no label or no counts are ignored
    X, lib, labels = X[keep], lib[keep], labels[keep]
    overall = (sp.diags(1 / lib) @ X).mean(axis=0).A1
    fits = [_fit_type(X[labels == t], lib[labels == t], overall) for t in types]
    means, dispersion, lib_mean, lib_sd = (np.array(v) for v in zip(*fits, strict=True))
    if donor_key is None:
        donor_sd = np.full(X.shape[1], DEFAULT_DONOR_SD)
    else:
        donors = adata.obs[donor_key].astype(str).to_numpy()[keep]
        donor_sd = _donor_sd(X, lib, labels, donors, types, dispersion)
    symbols = next(
        (adata.var[c].astype(str).tolist() for c in SYMBOL_COLUMNS if c in adata.var), None
    )
    meta = {"n_cells": int(keep.sum()), "cell_type_key": cell_type_key, "donor_key": donor_key}
    freq = sizes[types].to_numpy() / keep.sum()
    arrays = (freq, means, dispersion, lib_mean, lib_sd, donor_sd)
    return ScaleProfile(list(map(str, adata.var_names)), types, *arrays, symbols, meta)


def _raw_counts(adata: ad.AnnData) -> sp.csr_matrix:
    if adata.X is None:
        raise InputError("adata.X is empty; fit_profile needs raw counts in X")
    X = sp.csr_matrix(adata.X, dtype=np.float64)
    if not (np.isfinite(X.data).all() and (X.data >= 0).all() and (X.data % 1 == 0).all()):
        msg = "fit_profile needs raw counts (non-negative integers) in adata.X; pass the raw layer"
        raise InputError(msg)
    return X


def _cluster(X: sp.csr_matrix, lib: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    if not 1 <= n_clusters <= X.shape[0]:
        raise InputError(f"n_clusters must be between 1 and the {X.shape[0]} cells")
    norm = sp.diags(1e4 / np.maximum(lib, 1)) @ X
    norm.data = np.log1p(norm.data)
    variance = np.asarray(norm.power(2).mean(axis=0)).ravel() - np.square(norm.mean(axis=0).A1)
    dense = norm[:, np.argsort(-variance)[:1000]].toarray()
    pcs = PCA(min(30, min(dense.shape) - 1), svd_solver="arpack", random_state=seed)
    pcs = pcs.fit_transform(dense)
    codes = KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(pcs)
    rank = np.argsort(np.argsort(-np.bincount(codes, minlength=n_clusters), kind="stable"))
    width = len(str(n_clusters - 1))  # cluster_02 sorts before cluster_10
    return np.array([f"cluster_{r:0{width}d}" for r in rank[codes]], dtype=object)


def _fit_type(X: sp.csr_matrix, lib: np.ndarray, overall: np.ndarray):
    n = X.shape[0]
    scale = lib / lib.mean()
    y = sp.diags(1 / scale) @ X  # counts at the type's mean library size
    mu = y.mean(axis=0).A1
    var = y.power(2).mean(axis=0).A1 - mu**2
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.clip((var - mu * np.mean(1 / scale)) / mu**2, *DISPERSION_RANGE)
    total = X.sum(axis=0).A1
    trusted = total >= MIN_COUNTS
    shared = np.median(phi[trusted]) if trusted.any() else 1.0
    weight = total / (total + MIN_COUNTS)
    phi = np.exp(weight * np.log(np.where(mu > 0, phi, shared)) + (1 - weight) * np.log(shared))
    means = (mu / lib.mean() * n + overall) / (n + 1)
    log_lib = np.log(lib)
    return means / means.sum(), phi, log_lib.mean(), max(log_lib.std(), 1e-3)


def _donor_sd(X, lib, labels, donors, types, dispersion) -> np.ndarray:
    """Per-gene s.d. of donor log-fold changes within types, net of Poisson/NB sampling noise."""
    excess, used = np.zeros(X.shape[1]), np.zeros(X.shape[1])
    for t, name in enumerate(types):
        in_type = labels == name
        present = np.unique(donors[in_type])
        if present.size < 2:
            continue
        p = (X[in_type].sum(axis=0).A1 + 0.5) / lib[in_type].sum()
        for donor in present:
            rows = in_type & (donors == donor)
            total = lib[rows].sum()
            lfc = np.log((X[rows].sum(axis=0).A1 + 0.5) / total / p)
            noise = 1 / (p * total) + dispersion[t] * np.square(lib[rows]).sum() / total**2
            ok = p * total >= MIN_COUNTS
            # a donor is part of the type mean it is compared to: E[lfc^2] ~ (1 - 1/k) sd^2
            excess += np.where(ok, lfc**2 / (1 - 1 / present.size) - noise, 0)
            used += ok
    if not used.any():
        log.warning("fit_profile: too few donors per type; using donor_sd %s", DEFAULT_DONOR_SD)
        return np.full(X.shape[1], DEFAULT_DONOR_SD)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(np.clip(excess / used, 0, 4))
    fitted = used >= 2
    return np.where(fitted, sd, np.median(sd[fitted]) if fitted.any() else DEFAULT_DONOR_SD)
