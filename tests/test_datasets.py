import numpy as np
import scipy.sparse as sp

import sclabel


def test_synthetic_is_seeded_counts_with_the_requested_structure():
    a = sclabel.datasets.synthetic(500, 120, 3, 4, seed=5)
    b = sclabel.datasets.synthetic(500, 120, 3, 4, seed=5)
    assert a.shape == (500, 120) and sp.issparse(a.X)
    assert (a.X != b.X).nnz == 0
    assert np.array_equal(a.X.data, np.round(a.X.data)) and a.X.data.min() >= 0
    assert (np.asarray(a.X.sum(axis=1)).ravel() > 0).all()
    assert a.obs["cell_type"].nunique() == 3 and a.obs["donor"].nunique() == 4
    assert a.var_names[0].startswith("ENSG") and "gene_symbols" in a.var
    other = sclabel.datasets.synthetic(500, 120, 3, 4, seed=6)
    assert (a.X != other.X).nnz > 0


def test_marker_programs_make_types_separable():
    a = sclabel.datasets.synthetic(2000, 200, 4, 2, markers_per_type=10, marker_fold=8.0, seed=0)
    X = a.X.toarray()
    X = X / X.sum(axis=1, keepdims=True)
    means = np.stack(
        [X[(a.obs["cell_type"] == t).to_numpy()].mean(0) for t in sorted(set(a.obs["cell_type"]))]
    )
    # each type's 10 most specific genes sit ~8x above the other types' mean (a few can be
    # shared with another type's program, which lowers their ratio)
    for t in range(4):
        others = np.delete(means, t, axis=0).mean(0)
        ratio = means[t] / np.maximum(others, 1e-12)
        assert np.median(np.sort(ratio)[-10:]) > 6


def test_donor_effects_exist_and_cell_seed_reuses_the_biology():
    a = sclabel.datasets.synthetic(3000, 100, 1, 2, donor_sd=0.5, seed=0)
    X = a.X.toarray()
    X = X / X.sum(axis=1, keepdims=True)
    d = a.obs["donor"].to_numpy()
    log_ratio = np.log(X[d == "donor_0"].mean(0) / X[d == "donor_1"].mean(0))
    assert log_ratio.std() > 0.4  # two donors differ by ~ sqrt(2) * 0.5 per gene
    same_biology = sclabel.datasets.synthetic(3000, 100, 1, 2, donor_sd=0.5, seed=0, cell_seed=1)
    Y = same_biology.X.toarray()
    Y = Y / Y.sum(axis=1, keepdims=True)
    assert np.corrcoef(X.mean(0), Y.mean(0))[0, 1] > 0.99
    assert not set(a.obs_names) & set(same_biology.obs_names)
