import anndata as ad
import numpy as np
import pandas as pd
import pytest

import sclabel
from sclabel.errors import InputError


@pytest.fixture
def query():
    return sclabel.datasets.synthetic(300, 200, 4, 6, seed=1, cell_seed=3)


def test_prediction_fields_are_consistent(trained_model, query):
    pred = trained_model.predict(query, progress=False)
    np.testing.assert_allclose(pred.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(pred.confidence, pred.probabilities.max(axis=1))
    np.testing.assert_allclose(pred.uncertainty, 1 - pred.confidence)
    expected = np.asarray(trained_model.classes)[pred.probabilities.argmax(axis=1)]
    np.testing.assert_array_equal(pred.labels, expected)
    assert (pred.labels == query.obs["cell_type"].to_numpy()).mean() > 0.9
    assert pred.coverage == 1.0


def test_to_adata_writes_obs_and_obsm(trained_model, query):
    trained_model.predict(query, progress=False).to_adata(query)
    assert {"sclabel_label", "sclabel_confidence", "sclabel_uncertainty"} <= set(query.obs)
    probs = query.obsm["sclabel_probabilities"]
    assert list(probs.columns) == trained_model.classes
    assert probs.index.equals(query.obs_names)


def test_unknown_threshold_marks_unsure_cells(trained_model, query):
    confidence = np.sort(trained_model.predict(query, progress=False).confidence)
    threshold = float(confidence[len(confidence) // 3])  # about a third of cells fall below
    assert threshold < confidence[-1]
    pred = trained_model.predict(query, unknown_threshold=threshold, progress=False)
    unsure = pred.confidence < threshold
    assert unsure.any() and not unsure.all()
    assert (pred.labels[unsure] == "unknown").all()
    assert "unknown" not in pred.labels[~unsure]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_table_output(trained_model, query, tmp_path, suffix):
    pred = trained_model.predict(query, progress=False)
    path = pred.to_table(tmp_path / f"pred{suffix}")
    if suffix == ".parquet":  # one layout for every table: "cell" is the first column
        table = pd.read_parquet(path).set_index("cell")
    else:
        table = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", index_col="cell")
    assert list(table.index) == list(query.obs_names)
    assert list(table["label"]) == list(pred.labels)
    np.testing.assert_allclose(
        table[[f"p_{c}" for c in pred.classes]], pred.probabilities, rtol=1e-5
    )


def test_backed_chunked_prediction_equals_in_memory(trained_model, query, tmp_path):
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    streamed = trained_model.predict(backed, chunk_size=64, progress=False)
    in_memory = trained_model.predict(query, progress=False)
    np.testing.assert_allclose(
        streamed.probabilities, in_memory.probabilities, rtol=1e-5, atol=1e-6
    )


def test_query_with_other_gene_order_versions_and_missing_genes(trained_model, query):
    reference = trained_model.predict(query, progress=False)
    order = np.random.default_rng(0).permutation(query.n_vars)
    shuffled = query[:, order].copy()
    shuffled.var_names = [f"{g}.5" for g in shuffled.var_names]  # Ensembl version suffixes
    same = trained_model.predict(shuffled, progress=False)
    np.testing.assert_allclose(same.probabilities, reference.probabilities, rtol=1e-5, atol=1e-6)
    fewer = query[:, 40:].copy()  # 80% of the model's genes
    pred = trained_model.predict(fewer, progress=False)
    assert pred.coverage == pytest.approx(0.8)


def test_symbol_only_query_maps_through_model_symbols(trained_model, query):
    reference = trained_model.predict(query, progress=False)
    symbols = query.copy()
    symbols.var_names = symbols.var["gene_symbols"].to_numpy()
    symbols.var = symbols.var.drop(columns="gene_symbols")
    pred = trained_model.predict(symbols, progress=False)
    np.testing.assert_allclose(pred.probabilities, reference.probabilities, rtol=1e-5, atol=1e-6)


def test_low_gene_overlap_is_refused_with_the_reason(trained_model, query):
    other = query[:, :50].copy()  # 25% of the model's genes
    with pytest.raises(InputError, match=r"only 25\.0% of the model's 200 genes"):
        trained_model.predict(other, progress=False)
    accepted = trained_model.predict(other, min_gene_coverage=0.2, progress=False)
    assert accepted.coverage == pytest.approx(0.25)


def test_log_normalized_query_gives_the_same_answer_as_counts(trained_model, query):
    import scanpy as sc

    reference = trained_model.predict(query, progress=False)
    logged = query.copy()
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    pred = trained_model.predict(logged, progress=False)
    np.testing.assert_allclose(pred.probabilities, reference.probabilities, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda a: a.X.data.__setitem__(0, np.nan), "NaN or infinite"),
        (lambda a: a.X.data.__setitem__(0, np.inf), "NaN or infinite"),
        (lambda a: a.X.data.__setitem__(0, -3.0), "negative"),
    ],
)
def test_broken_values_are_refused(trained_model, query, corrupt, message):
    corrupt(query)
    with pytest.raises(InputError, match=message):
        trained_model.predict(query, progress=False)


def test_zero_count_cells_are_refused(trained_model, query):
    X = query.X.tolil()
    X[5, :] = 0
    query.X = X.tocsr()
    with pytest.raises(InputError, match="zero counts.*filter_cells"):
        trained_model.predict(query, progress=False)


def test_duplicate_cell_names_are_refused(trained_model, query):
    query.obs_names = ["same"] * query.n_obs
    with pytest.raises(InputError, match="duplicate cell names"):
        trained_model.predict(query, progress=False)


def test_bad_threshold_is_refused(trained_model, query):
    with pytest.raises(InputError, match="unknown_threshold"):
        trained_model.predict(query, unknown_threshold=1.5, progress=False)
