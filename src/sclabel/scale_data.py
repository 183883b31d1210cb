"""Realistic data at scale: fit count statistics to a real dataset, then stream millions of cells.

Benchmarks of an on-disk store need tens of GB of cells that look like real data (sparsity,
library sizes, over-dispersion, donor effects), which no shared file provides. `fit_profile`
learns per cell type the gene proportions, negative-binomial dispersions, type frequencies and
library sizes of a real AnnData; `generate` streams chunks of raw counts from that profile with
memory that does not grow with the number of cells.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from sclabel._atomic import atomic_dir
from sclabel.errors import InputError

log = logging.getLogger("sclabel")

DEFAULT_DONOR_SD = 0.2  # per-gene log-scale donor spread when the data has no donors
DONOR_CONCENTRATION = 50.0  # Dirichlet concentration of a donor's cell-type composition
DISPERSION_RANGE = (0.01, 20.0)  # NB phi (var = mu + phi mu^2) seen in UMI data, with margin
MIN_COUNTS = 20  # counts a gene needs in a type (or donor) before its own estimate is trusted
BLOCK = 8192  # cells per random stream: output does not depend on chunk_size
MAX_CANDIDATES = 2_000_000  # candidate counts sampled at once (bounds temporary memory)
DENSE_CLUMPS = 1.0  # genes with more expected clumps per cell are drawn directly, per cell
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


def generate(
    profile: ScaleProfile,
    n_cells: int,
    *,
    n_donors: int = 100,
    chunk_size: int = 50_000,
    seed: int = 0,
) -> Iterator[tuple[sp.csr_matrix, pd.DataFrame]]:
    """Yield (counts, obs) chunks of `chunk_size` cells (the last may be smaller).

    Counts are CSR float32 integers (cells x profile genes), no cell all-zero; obs has
    categorical `cell_type` and `donor` and unique `cell_id` (also the index). Donors own
    contiguous runs of cells (sizes log-normal, s.d. 0.5) with their own type composition
    (Dirichlet around `type_freq`) and per-gene factors exp(N(0, donor_sd)), drawn once per
    donor (proportions renormalized, so library sizes keep their fitted law). Each count is
    NB(proportion x library x donor factor, dispersion), sampled exactly at a cost that follows
    the non-zeros rather than cells x genes (see `_sample`). Randomness is keyed by `seed` and
    fixed blocks of BLOCK cells, so the concatenated output is the same for any `chunk_size`
    (but not a prefix of a run with more cells: donor boundaries scale with `n_cells`).
    Memory: one block plus about two chunks at 8 bytes per non-zero (Kang: ~570 non-zeros
    per cell, so a 50,000-cell chunk is ~230 MB; deeper data costs more).
    """
    if min(n_cells, n_donors, chunk_size) < 1 or seed < 0:
        raise InputError("n_cells, n_donors and chunk_size must be positive and seed >= 0")
    sizes = np.random.default_rng([seed, 0]).lognormal(0.0, 0.5, n_donors)
    bounds = np.round(np.concatenate([[0], np.cumsum(sizes)]) / sizes.sum() * n_cells)
    bounds[-1] = n_cells
    donor_names = [f"donor_{d}" for d in range(n_donors)]

    @functools.lru_cache(maxsize=8)
    def donor(d: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, 1, d])
        freq = rng.dirichlet(profile.type_freq.astype(np.float64) * DONOR_CONCENTRATION)
        sd = profile.donor_sd.astype(np.float64)
        rates = profile.means * np.exp(sd * rng.standard_normal(sd.size) - sd**2 / 2)
        return freq, rates / rates.sum(axis=1, keepdims=True)

    parts, have = [], 0
    for start in range(0, n_cells, BLOCK):
        n = min(BLOCK, n_cells - start)
        parts.append(_block(profile, start, n, bounds, donor, donor_names, seed))
        have += n
        while have >= chunk_size or (have and start + n == n_cells):
            take = _take(parts, min(chunk_size, have))
            have -= sum(X.shape[0] for X, _ in take)
            X = take[0][0] if len(take) == 1 else sp.vstack([X for X, _ in take], format="csr")
            obs = pd.concat([obs for _, obs in take])
            del take  # hold one copy of the chunk while the caller works
            yield X, obs


def _take(parts: list, k: int) -> list:
    """Pop the first `k` cells off a list of (X, obs) blocks, splitting at most one block."""
    out = []
    while k:
        X, obs = parts.pop(0)
        if X.shape[0] > k:
            parts.insert(0, (X[k:], obs.iloc[k:]))
            X, obs = X[:k], obs.iloc[:k]
        out.append((X, obs))
        k -= X.shape[0]
    return out


def _block(profile, start, n, bounds, donor, donor_names, seed):
    rng = np.random.default_rng([seed, 2, start // BLOCK])
    ids = np.arange(start, start + n)
    donors = np.searchsorted(bounds, ids, side="right") - 1
    types = np.empty(n, dtype=np.int64)
    for d in np.unique(donors):
        rows = donors == d
        types[rows] = rng.choice(len(profile.cell_types), size=rows.sum(), p=donor(int(d))[0])
    lib = np.exp(rng.normal(profile.log_lib_mean[types], profile.log_lib_sd[types]))
    groups = np.stack([donors, types, np.floor(np.log2(lib) * 2)], axis=1)
    keys, group_of = np.unique(groups, axis=0, return_inverse=True)
    pieces, dense = [], []
    for g, (d, t, _) in enumerate(keys.astype(np.int64)):
        idx = np.flatnonzero(group_of.ravel() == g).astype(np.int32)
        phi = profile.dispersion[t].astype(np.float64)
        _sample(rng, donor(d)[1][t], phi, idx, lib[idx], pieces, dense)
    empty = np.ones(n, dtype=bool)
    for rows, _, _ in pieces + dense:
        empty[rows] = False
    for i in np.flatnonzero(empty):  # rare: a cell drew no counts; give it one
        gene = rng.choice(len(profile.genes), p=donor(int(donors[i]))[1][types[i]])
        pieces.append((np.array([i], np.int32), np.array([gene], np.int32), np.ones(1)))
    X = _csr(pieces, (n, len(profile.genes))) + _csr(dense, (n, len(profile.genes)))
    obs = pd.DataFrame(index=[f"cell_{i:07d}" for i in ids])
    obs["cell_type"] = pd.Categorical.from_codes(types, categories=profile.cell_types)
    obs["donor"] = pd.Categorical.from_codes(donors, categories=donor_names)
    obs["cell_id"] = obs.index
    return X, obs


def _csr(triplets: list, shape: tuple[int, int]) -> sp.csr_matrix:
    rows, cols, vals = (np.concatenate(v) for v in zip(*triplets, strict=True))
    return sp.csr_matrix((vals, (rows, cols)), shape=shape, dtype=np.float32)


def _sample(rng, rate, phi, idx, lib, out: list, dense_out: list) -> None:
    """Append NB counts of cells `idx` (libraries `lib` within a factor sqrt(2)) as COO triplets.

    Genes likely to be non-zero get a direct Gamma-Poisson draw per cell ("dense"). The rest,
    where most draws would be zero, use NB(mu, phi) = a Poisson(log1p(phi mu) / phi) number of
    clumps of log-series(phi mu / (1 + phi mu)) counts: the clump rate at the group's largest
    library bounds every cell's, so each gene gets a Poisson number of candidates at that rate,
    each lands on a random cell and is kept with probability true rate / bound (>= 1/sqrt(2)).
    Cost follows the non-zeros, and genes come out sorted per cell, so the CSR needs no sort.
    """
    a = phi * rate
    clumps = np.log1p(a * lib.max()) / phi  # expected clumps per cell at the largest library
    dense = np.flatnonzero(clumps > DENSE_CLUMPS).astype(np.int32)
    clumps[dense] = 0
    step = max(1, int(MAX_CANDIDATES // (clumps.sum() + dense.size)))
    for s in range(0, idx.size, step):
        cells, libs = idx[s : s + step], lib[s : s + step]
        genes = np.repeat(np.arange(rate.size, dtype=np.int32), rng.poisson(clumps * cells.size))
        pick = rng.integers(0, cells.size, genes.size)
        x = a[genes] * libs[pick]
        keep = rng.random(genes.size) * clumps[genes] * phi[genes] < np.log1p(x)
        x = x[keep]
        out.append((cells[pick[keep]], genes[keep], rng.logseries(x / (1 + x)).astype(np.float32)))
        mean = rate[dense] * libs[:, None]
        counts = rng.poisson(rng.gamma(1 / phi[dense], phi[dense] * mean)).astype(np.float32)
        row, col = np.nonzero(counts)
        dense_out.append((cells[row], dense[col], counts[row, col]))


def to_anndata(profile: ScaleProfile, n_cells: int, **kwargs) -> ad.AnnData:
    """All of `generate(profile, n_cells, **kwargs)` in one AnnData, for tests and demos."""
    chunks = list(generate(profile, n_cells, **kwargs))
    X = sp.vstack([c[0] for c in chunks], format="csr")
    return ad.AnnData(X=X, obs=pd.concat([c[1] for c in chunks]), var=profile.var)


class GeneratedSource:
    """`generate` as a source for `build_store`: millions of cells go straight to disk."""

    obs_columns = ["cell_type", "donor"]

    def __init__(self, profile: ScaleProfile, n_cells: int, *, n_donors: int = 100, seed: int = 0):
        self.profile, self.n_cells, self.n_donors, self.seed = profile, n_cells, n_donors, seed
        self.var = profile.var
        self.name = f"generated ({n_cells} cells, {n_donors} donors, seed {seed})"

    def iter_chunks(self, chunk_size: int):
        chunks = generate(
            self.profile,
            self.n_cells,
            n_donors=self.n_donors,
            chunk_size=chunk_size,
            seed=self.seed,
        )
        for X, obs in chunks:
            yield X, obs[self.obs_columns]
