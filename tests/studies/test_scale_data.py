"""The scale-data generator: fitted to real data, generated counts look like that data."""

from __future__ import annotations

import dataclasses
import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats
from threadpoolctl import threadpool_limits

import sclabel
from conftest import shared_file
from sclabel.errors import InputError
from sclabel.studies import profile as profile_module
from sclabel.studies import simulate as scale_data
from sclabel.studies.simulate import ScaleProfile, fit_profile, generate, to_anndata


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """BLAS/OpenMP threads in PCA and k-means slow these small fits 5-10x on a busy machine."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def synthetic_profile() -> ScaleProfile:
    """Fitted to sclabel's synthetic data: donor s.d. 0.3, dispersion 0.5, 4 types."""
    adata = sclabel.datasets.synthetic(600, 200, 4, 6, seed=1)
    return fit_profile(adata, cell_type_key="cell_type", donor_key="donor")


@pytest.fixture(scope="module")
def kang():
    adata = ad.read_h5ad(shared_file("kang_pbmc_stim.h5ad"))
    return adata, fit_profile(adata, n_clusters=8)


def _proportions(X: sp.csr_matrix) -> np.ndarray:
    """Mean over cells of counts / library size, per gene."""
    lib = np.asarray(X.sum(axis=1)).ravel()
    return np.asarray((sp.diags(1 / lib) @ X).mean(axis=0)).ravel()


@pytest.mark.slow
@pytest.mark.realdata
def test_kang_generated_cells_match_the_real_data(kang):
    real, profile = kang
    assert profile.cell_types == [f"cluster_{i}" for i in range(8)]
    assert profile.genes == list(real.var_names)
    cells = to_anndata(profile, 6000, n_donors=30, seed=0)
    assert cells.shape == (6000, real.n_vars)
    for t, name in enumerate(profile.cell_types):
        generated = _proportions(cells[cells.obs["cell_type"] == name].X)
        r = stats.pearsonr(np.log1p(1e4 * generated), np.log1p(1e4 * profile.means[t]))[0]
        assert r > 0.9, (name, r)
    lib = np.asarray(cells.X.sum(axis=1)).ravel()
    real_lib = np.asarray(real.X.sum(axis=1)).ravel()
    assert abs(np.median(lib) / np.median(real_lib) - 1) < 0.2
    # sparsity: overall and gene by gene, as in the real data
    real_zeros = 1 - np.asarray((real.X > 0).mean(axis=0)).ravel()
    zeros = 1 - np.asarray((cells.X > 0).mean(axis=0)).ravel()
    assert abs(zeros.mean() - real_zeros.mean()) < 0.02
    assert stats.pearsonr(zeros, real_zeros)[0] > 0.95
    freq = cells.obs["cell_type"].value_counts(normalize=True)[profile.cell_types]
    np.testing.assert_allclose(freq.to_numpy(), profile.type_freq, atol=0.05)


@pytest.mark.slow
@pytest.mark.realdata
def test_cellbench_batches_give_a_fitted_per_gene_donor_spread():
    real = ad.read_h5ad(shared_file("cellbench_sc_celllines.h5ad"))
    profile = fit_profile(real, cell_type_key="cell_line", donor_key="batch")
    assert sorted(profile.cell_types) == sorted(real.obs["cell_line"].unique())
    # CEL-seq2 plates vs Drop-seq differ gene by gene, more than the no-donor default
    assert np.median(profile.donor_sd) > profile_module.DEFAULT_DONOR_SD
    assert np.percentile(profile.donor_sd, 90) > 2 * np.percentile(profile.donor_sd, 10)
    assert profile.meta["donor_key"] == "batch"


def test_fit_recovers_the_donor_spread_of_synthetic_data(synthetic_profile):
    assert synthetic_profile.cell_types == [f"type_{t}" for t in range(4)]
    assert 0.2 < np.median(synthetic_profile.donor_sd) < 0.4  # generated with s.d. 0.3
    assert 0.3 < np.median(synthetic_profile.dispersion) < 1.0  # 0.5, plus donor variation
    np.testing.assert_allclose(synthetic_profile.means.sum(axis=1), 1, rtol=1e-4)
    assert synthetic_profile.gene_symbols[:2] == ["GENE0", "GENE1"]
    no_donors = sclabel.datasets.synthetic(600, 200, 4, 6, seed=1, donor_sd=0.0)
    fitted = fit_profile(no_donors, cell_type_key="cell_type", donor_key="donor")
    assert np.median(fitted.donor_sd) < 0.1


def _donor_spread(profile: ScaleProfile) -> float:
    """s.d. of log gene means between two donors' cells of one type (well-expressed genes)."""
    cells = to_anndata(profile, 4000, n_donors=2, seed=3)
    cells = cells[cells.obs["cell_type"] == profile.cell_types[0]]
    a, b = (_proportions(cells[cells.obs["donor"] == d].X) for d in ("donor_0", "donor_1"))
    top = profile.means[0] > np.quantile(profile.means[0], 0.5)
    return float(np.std(np.log(a[top] / b[top])))


def test_generated_donors_differ_by_the_fitted_spread(synthetic_profile):
    spread = _donor_spread(synthetic_profile)
    still = dataclasses.replace(synthetic_profile, donor_sd=np.zeros(200, np.float32))
    assert spread > 0.3  # ~0.3 * sqrt(2) between two donors
    assert spread > 2 * _donor_spread(still)  # what remains is sampling noise


def test_chunks_are_valid_counts_grouped_by_donor(synthetic_profile):
    chunks = list(generate(synthetic_profile, 10_000, n_donors=7, chunk_size=3000, seed=0))
    assert [c[0].shape for c in chunks] == [(3000, 200)] * 3 + [(1000, 200)]
    ids = pd.concat([obs for _, obs in chunks])["cell_id"]
    assert ids.iloc[0] == "cell_0000000" and ids.is_unique and len(ids) == 10_000
    for X, obs in chunks:
        assert isinstance(X, sp.csr_matrix) and X.dtype == np.float32 and X.has_canonical_format
        assert (X.data >= 1).all() and (X.data == np.round(X.data)).all()
        assert (np.asarray(X.sum(axis=1)).ravel() > 0).all()
        assert list(obs.columns) == ["cell_type", "donor", "cell_id"]
        assert list(obs["cell_type"].cat.categories) == synthetic_profile.cell_types
        assert list(obs["donor"].cat.categories) == [f"donor_{d}" for d in range(7)]
        runs = (obs["donor"] != obs["donor"].shift()).sum()
        assert runs == obs["donor"].nunique()  # each donor's cells are contiguous


def test_generation_is_deterministic_and_independent_of_chunk_size(synthetic_profile):
    n = scale_data.BLOCK + 500  # spans two random blocks
    whole = to_anndata(synthetic_profile, n, n_donors=5, seed=4, chunk_size=n)
    small = to_anndata(synthetic_profile, n, n_donors=5, seed=4, chunk_size=777)
    assert (whole.X != small.X).nnz == 0
    pd.testing.assert_frame_equal(whole.obs, small.obs)
    other = to_anndata(synthetic_profile, n, n_donors=5, seed=5, chunk_size=n)
    assert (whole.X != other.X).nnz > 0


def test_profile_save_load_round_trip(synthetic_profile, tmp_path):
    synthetic_profile.save(tmp_path / "profile")
    loaded = ScaleProfile.load(tmp_path / "profile")
    assert loaded.genes == synthetic_profile.genes and loaded.meta == synthetic_profile.meta
    before = to_anndata(synthetic_profile, 2000, n_donors=3, seed=2)
    after = to_anndata(loaded, 2000, n_donors=3, seed=2)
    assert (before.X != after.X).nnz == 0
    pd.testing.assert_frame_equal(before.obs, after.obs)
    pd.testing.assert_frame_equal(before.var, after.var)
    (tmp_path / "junk").mkdir()
    with pytest.raises(InputError, match="cannot read scale profile"):
        ScaleProfile.load(tmp_path / "junk")


@pytest.mark.parametrize("bad", ["negative", "fractional", "key", "donor_key"])
def test_bad_input_raises_input_error(bad):
    adata = sclabel.datasets.synthetic(100, 50, 2, 2, seed=0)
    keys = {"cell_type_key": "cell_type"}
    if bad == "negative":
        adata.X.data[0] = -1
    elif bad == "fractional":
        adata.X = adata.X.multiply(0.5).tocsr()
    elif bad == "key":
        keys["cell_type_key"] = "celltype"
    else:
        keys["donor_key"] = "patient"
    with pytest.raises(InputError):
        fit_profile(adata, **keys, min_cells=5)


def test_types_under_min_cells_are_dropped(caplog):
    adata = sclabel.datasets.synthetic(300, 50, 3, 2, seed=0)
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.add_categories("rare")
    adata.obs.iloc[:5, adata.obs.columns.get_loc("cell_type")] = "rare"
    profile = fit_profile(adata, cell_type_key="cell_type", min_cells=20)
    assert "rare" not in profile.cell_types and len(profile.cell_types) == 3
    assert "rare" in caplog.text
    with pytest.raises(InputError, match="min_cells"):
        fit_profile(adata, cell_type_key="cell_type", min_cells=10_000)


def test_sampler_matches_the_negative_binomial():
    """Mean and P(0) of each gene against NB(mu, phi), sparse and dense paths alike."""
    rng = np.random.default_rng(0)
    rate = np.array([1e-4, 1e-3, 1e-2, 0.1, 0.889])
    phi = np.array([0.05, 2.0, 0.5, 5.0, 0.2])
    lib = np.full(40_000, 1000.0)
    pieces, dense = [], []
    scale_data._sample(rng, rate, phi, np.arange(lib.size, dtype=np.int32), lib, pieces, dense)
    X = (scale_data._csr(pieces, (lib.size, 5)) + scale_data._csr(dense, (lib.size, 5))).toarray()
    mu = rate * 1000
    np.testing.assert_allclose(X.mean(axis=0), mu, rtol=0.05)
    p_zero = (1 + phi * mu) ** (-1 / phi)
    np.testing.assert_allclose((X == 0).mean(axis=0), p_zero, atol=0.01)


@pytest.mark.slow
def test_memory_does_not_grow_with_cells(synthetic_profile):
    lib = synthetic_profile.log_lib_mean - 3  # ~100 counts per cell: a quick test
    shallow = dataclasses.replace(synthetic_profile, log_lib_mean=lib)

    def peak(n_cells: int) -> int:
        tracemalloc.start()
        for _ in generate(shallow, n_cells, n_donors=10, chunk_size=5000, seed=0):
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    assert peak(6 * scale_data.BLOCK) < 1.3 * peak(2 * scale_data.BLOCK)


def test_a_classifier_learns_the_generated_types(synthetic_profile):
    cells = to_anndata(synthetic_profile, 1500, n_donors=6, seed=1)
    model = sclabel.train(
        cells, label_key="cell_type", split_by="donor", model="linear", max_epochs=5, progress=False
    )
    assert model.metrics["test"]["macro_f1"] > 0.8  # chance is 0.25
