"""Seeded synthetic data for tests and examples, plus the PBMC demo data that ships with scanpy."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.errors import InputError


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


SEVERITIES = ("control", "mild", "severe")
STATES = ("control", "progression", "convalescence")
STATE_DIRECTION = {"control": 0, "progression": 1, "convalescence": -1}  # state-gene exponent


def synthetic_cohort(
    n_patients: int = 24,
    n_types: int = 6,
    cells_per_patient: int = 150,
    n_genes: int = 300,
    *,
    n_signal_types: int = 2,
    signal_genes: int = 15,
    severity_fold: float = 1.6,
    state_fold: float = 1.6,
    patient_sd: float = 0.35,
    proportion_concentration: float = 8.0,
    markers_per_type: int = 20,
    marker_fold: float = 4.0,
    dispersion: float = 0.5,
    mean_library_size: float = 2000.0,
    seed: int = 0,
) -> ad.AnnData:
    """A patient cohort like GSE158055: sample-level severity and state on every cell.

    Why: disease labels belong to patients, not cells. Every patient multiplies every gene
    by its own log-normal factor (s.d. `patient_sd`), so cells of one patient resemble each
    other and a classifier scored on a random-cell split can recognise the patient instead of
    the disease. Only the first `n_signal_types` cell types (listed in
    `uns["signal_cell_types"]`) respond to the condition, each on its own `signal_genes`
    genes: severity scales them by `severity_fold` ** (0 control, 1 mild, 2 severe) and state
    scales a second gene set by `state_fold` (progression) or its inverse (convalescence).
    The other types carry no condition signal, so per-cell-type scores differ by design.

    Patients are dealt evenly to control / mild / severe; non-control patients alternate
    progression / convalescence, and controls are "control" in both columns. Each patient
    has Dirichlet cell-type proportions (higher `proportion_concentration`: more alike) and
    about `cells_per_patient` cells. Counts are Gamma-Poisson as in `synthetic`; returns raw
    counts (CSR float32) with obs patient, cell_type, severity, state.
    """
    if n_patients < 3 or n_types < 1 or not 0 <= n_signal_types <= n_types:
        msg = (
            f"need n_patients >= 3 (one per severity) and 0 <= n_signal_types <= n_types; got "
            f"n_patients={n_patients}, n_types={n_types}, n_signal_types={n_signal_types}"
        )
        raise InputError(msg)
    rng = np.random.default_rng(seed)
    base = rng.lognormal(0.0, 1.0, size=n_genes)
    programs = np.ones((n_types, n_genes))
    for t in range(n_types):
        programs[t, rng.choice(n_genes, size=min(markers_per_type, n_genes), replace=False)] *= (
            marker_fold
        )
    size = min(signal_genes, n_genes)
    severity_sets = [rng.choice(n_genes, size=size, replace=False) for _ in range(n_signal_types)]
    state_sets = [rng.choice(n_genes, size=size, replace=False) for _ in range(n_signal_types)]

    severity = np.array(SEVERITIES)[rng.permutation(np.arange(n_patients) % 3)]
    state = np.full(n_patients, "control", dtype=object)
    for grade in SEVERITIES[1:]:
        sick = np.flatnonzero(severity == grade)
        state[sick] = np.array(STATES[1:])[rng.permutation(np.arange(sick.size) % 2)]
    patient_effect = rng.lognormal(0.0, patient_sd, size=(n_patients, n_genes))
    proportions = rng.dirichlet(np.full(n_types, proportion_concentration), size=n_patients)
    n_cells = np.maximum(20, np.round(cells_per_patient * rng.lognormal(0, 0.25, n_patients)))

    patient = np.repeat(np.arange(n_patients), n_cells.astype(int))
    cell_type = np.concatenate(
        [rng.choice(n_types, size=int(n), p=p) for n, p in zip(n_cells, proportions, strict=True)]
    )
    rate = base * programs[cell_type] * patient_effect[patient]
    level = np.array([SEVERITIES.index(s) for s in severity])[patient]
    direction = np.array([STATE_DIRECTION[s] for s in state])[patient]
    for t in range(n_signal_types):
        cells = np.flatnonzero(cell_type == t)
        rate[np.ix_(cells, severity_sets[t])] *= float(severity_fold) ** level[cells, None]
        rate[np.ix_(cells, state_sets[t])] *= float(state_fold) ** direction[cells, None]
    rate /= rate.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(mean_library_size), 0.3, size=(patient.size, 1))
    shape = 1.0 / dispersion
    counts = rng.poisson(rng.gamma(shape, rate * library / shape)).astype(np.float32)
    empty = counts.sum(axis=1) == 0
    counts[empty, rng.integers(0, n_genes, size=int(empty.sum()))] = 1

    names = [f"patient_{p:03d}" for p in range(n_patients)]
    obs = pd.DataFrame(
        {
            "patient": pd.Categorical(np.array(names)[patient], categories=names),
            "cell_type": pd.Categorical([f"type_{t}" for t in cell_type]),
            "severity": pd.Categorical(severity[patient], categories=SEVERITIES),
            "state": pd.Categorical(state[patient], categories=STATES),
        },
        index=[f"cell_{i}" for i in range(patient.size)],
    )
    var = pd.DataFrame(
        {"gene_symbols": [f"GENE{i}" for i in range(n_genes)]},
        index=[f"ENSG{i:011d}" for i in range(n_genes)],
    )
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    adata.uns["signal_cell_types"] = [f"type_{t}" for t in range(n_signal_types)]
    adata.uns["severity_genes"] = {
        f"type_{t}": var.index[g].tolist() for t, g in enumerate(severity_sets)
    }
    adata.uns["state_genes"] = {
        f"type_{t}": var.index[g].tolist() for t, g in enumerate(state_sets)
    }
    return adata
