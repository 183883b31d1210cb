"""Realistic data at scale: stream millions of cells from a fitted `ScaleProfile`.

Benchmarks of an on-disk store need tens of GB of cells that look like real data (sparsity,
library sizes, over-dispersion, donor effects), which no shared file provides. `profile.py`
fits the statistics of a real AnnData; `generate` streams chunks of raw counts from them
with memory that does not grow with the number of cells, and `simulate` writes them into a
store or an `.h5ad`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.errors import InputError
from sclabel.studies.profile import ScaleProfile, fit_profile

__all__ = ["GeneratedSource", "ScaleProfile", "fit_profile", "generate", "simulate", "to_anndata"]
log = logging.getLogger("sclabel")

DONOR_CONCENTRATION = 50.0  # Dirichlet concentration of a donor's cell-type composition
BLOCK = 8192  # cells per random stream: output does not depend on chunk_size
MAX_CANDIDATES = 2_000_000  # candidate counts sampled at once (bounds temporary memory)
DENSE_CLUMPS = 1.0  # genes with more expected clumps per cell are drawn directly, per cell


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


def simulate(
    reference: str | Path | ad.AnnData | ScaleProfile,
    out: str | Path,
    *,
    cells: int,
    donors: int = 100,
    cell_type_key: str | None = None,
    donor_key: str | None = None,
    split_by: str | None = None,
    save_profile: str | Path | None = None,
    chunk_size: int = 50_000,
    seed: int = 0,
    progress: bool = True,
) -> ScaleProfile:
    """Write `cells` cells fitted to `reference` (a real dataset with raw counts, or a saved
    profile folder) to `out`: a store folder, or an `.h5ad` written chunk by chunk. With
    `split_by="donor"` the store records a donor-grouped split."""
    from tqdm.auto import tqdm

    from sclabel.io.h5ad_writer import write_h5ad_chunks
    from sclabel.io.read import read
    from sclabel.store.build import build_store

    if cells < 1:
        raise InputError("--cells must be at least 1")
    to_h5ad = str(out).lower().endswith(".h5ad")
    if to_h5ad and split_by:
        raise InputError("--split-by records a split in a store; drop it for .h5ad output")
    if isinstance(reference, ScaleProfile):
        profile = reference
    elif not isinstance(reference, ad.AnnData) and (Path(reference) / "profile.json").exists():
        profile = ScaleProfile.load(reference)
    else:
        adata = reference if isinstance(reference, ad.AnnData) else read(reference)
        profile = fit_profile(adata, cell_type_key=cell_type_key, donor_key=donor_key, seed=seed)
    if save_profile:
        profile.save(save_profile)
    if to_h5ad:
        chunks = generate(profile, cells, n_donors=donors, chunk_size=chunk_size, seed=seed)
        with tqdm(total=cells, unit="cell", desc="simulating", disable=not progress) as bar:
            columns = GeneratedSource.obs_columns
            write_h5ad_chunks(
                ((X, obs[columns]) for X, obs in chunks if bar.update(X.shape[0]) or True),
                profile.var,
                out,
            )
    else:
        build_store(
            [GeneratedSource(profile, cells, n_donors=donors, seed=seed)],
            out,
            label_key="cell_type" if split_by else None,
            split_by=split_by,
            seed=seed,
            chunk_size=chunk_size,
            progress=progress,
        )
    return profile
