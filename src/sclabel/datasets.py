"""Seeded synthetic data for tests and examples, plus the PBMC demo data that ships with scanpy."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def synthetic(
    n_cells: int = 2000,
    n_genes: int = 500,
    n_types: int = 5,
    n_donors: int = 6,
    *,
    markers_per_type: int = 20,
    marker_fold: float = 4.0,
    donor_sd: float = 0.3,
    dispersion: float = 0.5,
    mean_library_size: float = 2000.0,
    n_conditions: int = 2,
    n_lineages: int | None = None,
    subtype_markers: int = 5,
    subtype_fold: float = 1.5,
    seed: int = 0,
    cell_seed: int | None = None,
) -> ad.AnnData:
    """Negative-binomial counts with cell-type marker programs and donor effects.

    Each gene has a log-normal base rate; each type multiplies its own `markers_per_type`
    genes by `marker_fold`; each donor multiplies every gene by a log-normal factor with
    s.d. `donor_sd` (a batch effect a donor-held-out split must survive). Counts are
    Gamma-Poisson with inverse dispersion 1/`dispersion`. Returns raw counts (CSR float32),
    `obs` with cell_type, donor and condition, Ensembl-like `var_names` and
    `var["gene_symbols"]`.

    With `n_lineages`, types are hard to tell apart: type t shares the marker program of
    lineage t % n_lineages with its sibling types and has only `subtype_markers` weak
    markers (`subtype_fold`) of its own, like subtypes of one cell type.

    `seed` fixes the biology (gene rates, marker programs, donor effects); `cell_seed` draws
    other cells from that same biology, e.g. a query set for a model trained on `seed`.
    """
    rng = np.random.default_rng(seed)
    base = rng.lognormal(mean=0.0, sigma=1.0, size=n_genes)
    programs = np.ones((n_types, n_genes))
    for t in range(n_types):
        markers = rng.choice(n_genes, size=min(markers_per_type, n_genes), replace=False)
        programs[t, markers] *= marker_fold
    if n_lineages is not None:
        programs = programs[np.arange(n_types) % n_lineages]  # siblings share markers
        for t in range(n_types):
            own = rng.choice(n_genes, size=min(subtype_markers, n_genes), replace=False)
            programs[t, own] *= subtype_fold
    donor_effect = rng.lognormal(mean=0.0, sigma=donor_sd, size=(n_donors, n_genes))
    if cell_seed is not None:
        rng = np.random.default_rng([seed, cell_seed])
    cell_type = rng.integers(0, n_types, size=n_cells)
    donor = rng.integers(0, n_donors, size=n_cells)
    rate = base * programs[cell_type] * donor_effect[donor]
    rate /= rate.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(mean_library_size), 0.3, size=(n_cells, 1))
    mean = rate * library
    shape = 1.0 / dispersion
    counts = rng.poisson(rng.gamma(shape, mean / shape)).astype(np.float32)
    empty = counts.sum(axis=1) == 0
    counts[empty, rng.integers(0, n_genes, size=int(empty.sum()))] = 1  # no zero-count cells
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type_{t}" for t in cell_type]),
            "donor": pd.Categorical([f"donor_{d}" for d in donor]),
            "condition": pd.Categorical(
                [f"condition_{c}" for c in rng.integers(0, n_conditions, size=n_cells)]
            ),
        },
        index=[
            f"cell_{i}" if cell_seed is None else f"cell_{cell_seed}_{i}" for i in range(n_cells)
        ],
    )
    var = pd.DataFrame(
        {"gene_symbols": [f"GENE{i}" for i in range(n_genes)]},
        index=[f"ENSG{i:011d}" for i in range(n_genes)],
    )
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)


def pbmc_demo() -> ad.AnnData:
    """scanpy's pbmc68k_reduced (700 PBMCs, 10 `bulk_labels`); `.raw` is log-normalized.

    It ships inside the scanpy package, so the demo needs no download.
    """
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()
