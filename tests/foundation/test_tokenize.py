"""Rank-value tokenization: Geneformer vocabulary, the ranking rule, sparse = dense, the corpus
store, fitting medians and bad input."""

from __future__ import annotations

import collections
import copy
import json
import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import sclabel
from conftest import normalized, shared_file
from sclabel.data import genes
from sclabel.data.normalize import count_space
from sclabel.errors import InputError
from sclabel.foundation.corpus import token_rows, tokenize
from sclabel.foundation.ranking import rank_order, rank_select
from sclabel.foundation.vocabulary import MEDIAN_ERROR, GeneTokenizer
from sclabel.io import safe_pickle
from sclabel.store.format import StoreWriter

GENES = [f"ENSG0000000000{i}" for i in range(1, 5)]  # tokens 2, 3, 4, 5
# the hand-checked example: counts of G1..G4 and of U, a gene without a token
CELLS = np.array(
    [
        [3, 1, 1, 1, 4],  # total 10 -> scores 3000/1, 1000/2, 1000/0.5, 1000/2
        [0, 6, 1, 0, 0],  # total 7 -> 6/7e4/2, 1/7e4/0.5 (x 1e4)
        [2, 0, 3, 10, 0],  # total 15 -> 2/1, 3/0.5, 10/2 (x 1e4/15)
    ],
    dtype=np.float32,
)
# by hand: A: G1 3000, G3 2000, then G2 = G4 = 500 (same count and median: lower token
# first); B: G2 (3/7) before G3 (2/7); C: G3 6 > G4 5 > G1 2 although G4 has the most counts
EXPECTED_TOKENS = [[2, 4, 3, 5], [3, 4], [4, 5, 2]]
EXPECTED_COUNTS = [[3, 1, 1, 1], [6, 1], [3, 10, 2]]


@pytest.fixture(scope="module")
def geneformer():
    return GeneTokenizer.from_geneformer(shared_file("geneformer_v1"))


@pytest.fixture
def tiny():
    return GeneTokenizer(tuple(GENES), np.array([1.0, 2.0, 0.5, 2.0]))


def tiny_cells(order=(0, 1, 2, 3, 4)) -> ad.AnnData:
    names = [*GENES, "ENSG00000000099"]
    obs = pd.DataFrame({"kind": ["a", "b", "c"]}, index=["A", "B", "C"])
    var = pd.DataFrame(index=[names[i] for i in order])
    return ad.AnnData(sp.csr_matrix(CELLS[:, list(order)]), obs=obs, var=var)


def rows_of(ranked, field="tokens"):
    values = getattr(ranked, field)
    pairs = zip(ranked.indptr[:-1], ranked.indptr[1:], strict=True)
    return [values[a:b].tolist() for a, b in pairs]


def loader_x(adata, vocabulary) -> np.ndarray:
    """What the project's loader feeds a model: log1p(count x 1e4 / total), dense."""
    return normalized(adata, vocabulary).toarray()


def test_geneformer_vocabulary_round_trips_through_json(geneformer, tmp_path):
    assert len(geneformer.genes) == 25_424 and geneformer.token_ids is None  # ids are 2..N+1
    geneformer.save(tmp_path / "tok")
    again = GeneTokenizer.load(tmp_path / "tok")
    assert again.genes == geneformer.genes
    assert np.array_equal(again.gene_tokens, geneformer.gene_tokens)
    assert np.array_equal(again.medians, geneformer.medians)  # float32 bits, not approximately
    assert again.symbol_to_id == geneformer.symbol_to_id
    assert (again.max_len, again.target_sum) == (2048, 1e4)


def test_token_ids_equal_geneformers_own(geneformer):
    folder = shared_file("geneformer_v1")
    tokens = safe_pickle.load(folder / "token_dictionary.pkl")
    medians = safe_pickle.load(folder / "gene_median_dictionary.pkl")
    sample = np.random.default_rng(0).choice(sorted(medians), 500, replace=False)
    token, median = geneformer.gene_table(pd.DataFrame(index=[f"{g}.7" for g in sample]))
    assert token.tolist() == [int(tokens[g]) for g in sample]  # version suffix stripped
    assert np.array_equal(median, np.array([medians[g] for g in sample], np.float32))


def test_symbols_map_to_ensembl_tokens_on_kang(geneformer):
    var = ad.read_h5ad(shared_file("kang_pbmc_stim.h5ad"), backed="r").var
    token, _ = geneformer.gene_table(var)
    names = safe_pickle.load(shared_file("geneformer_v1") / "gene_name_id_dict.pkl")
    ids = safe_pickle.load(shared_file("geneformer_v1") / "token_dictionary.pkl")
    assert (token >= 0).mean() > 0.85  # measured 90.0% of Kang's 9,015 symbols
    for symbol in ("ISG15", "HES4", "CD3E", "MS4A1"):
        assert token[var.index.get_loc(symbol)] == ids[names[symbol]]


def test_hand_checked_ranking_rule_in_every_path(tiny, tmp_path):
    for order in [(0, 1, 2, 3, 4), (4, 3, 1, 0, 2)]:  # the input's column order is irrelevant
        adata = tiny_cells(order)
        token, median = tiny.gene_table(adata.var)
        raw, factor = count_space(adata.X, "counts", 1e4)  # total over all genes, U too
        ranked = rank_order(raw, factor, token, median)
        assert rows_of(ranked) == EXPECTED_TOKENS
        assert rows_of(ranked, "counts") == EXPECTED_COUNTS
        x = torch.from_numpy(loader_x(adata, genes.Vocabulary(tuple(adata.var_names))))
        tokens, values, mask = rank_select(x, token, median, max_len=2048)
        assert [t[m].tolist() for t, m in zip(tokens, mask, strict=True)] == EXPECTED_TOKENS
        assert tokens.shape == (3, 4) and tokens[1, 2:].tolist() == [0, 0]
        assert values[0, 0] == np.log1p(np.float32(3000))  # x of the top gene, as given
        short, _, _ = rank_select(x, token, median, max_len=2)
        assert short.tolist() == [t[:2] for t in EXPECTED_TOKENS]
        assert rows_of(rank_order(raw, factor, token, median, max_len=2)) == short.tolist()
    store = tokenize([tiny_cells()], tmp_path / "corpus", tiny, progress=False)
    tokens, counts, lengths, _ = token_rows(store, [2, 0, 1])
    assert tokens.tolist() == [[4, 5, 2, 0], [2, 4, 3, 5], [3, 4, 0, 0]]
    assert counts[0].tolist() == [3, 10, 2, 0] and lengths.tolist() == [3, 4, 2]


@pytest.mark.slow
def test_sparse_and_dense_paths_give_identical_tokens_on_cellbench(geneformer):
    adata = ad.read_h5ad(shared_file("cellbench_sc_celllines.h5ad"))[:300]
    vocabulary, _ = genes.Vocabulary.from_var(adata.var)
    token, median = geneformer.gene_table(pd.DataFrame(index=list(vocabulary.ids)))
    alignment = genes.align(adata.var, vocabulary, min_coverage=1.0)
    raw, factor = count_space(adata.X, "counts", 1e4)
    ranked = rank_order(alignment.apply(raw), factor, token, median)
    x = torch.from_numpy(loader_x(adata, vocabulary))
    for max_len in (2048, 100_000):  # Geneformer's window, and whole cells
        tokens, _, mask = rank_select(x, token, median, max_len=max_len)
        dense = [t[m].tolist() for t, m in zip(tokens, mask, strict=True)]
        assert dense == [row[:max_len] for row in rows_of(ranked)]  # every position equal
    assert np.diff(ranked.indptr).max() > 2048  # the full rows are longer than the window
    truncated = rank_order(alignment.apply(raw), factor, token, median, max_len=2048)
    assert rows_of(truncated) == [row[:2048] for row in rows_of(ranked)]


@pytest.fixture(scope="module")
def cellbench_file(tmp_path_factory):
    adata = ad.read_h5ad(shared_file("cellbench_sc_celllines.h5ad"))
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 250, replace=False)].copy()
    adata.obs = adata.obs[["cell_line", "batch"]]
    path = tmp_path_factory.mktemp("cellbench") / "cells.h5ad"
    adata.write_h5ad(path)
    return path, adata


def test_corpus_store_keeps_rank_order_counts_and_labels(geneformer, cellbench_file, tmp_path):
    path, adata = cellbench_file
    store = tokenize([path], tmp_path / "corpus", geneformer, columns=["cell_line"],
                     chunk_size=64, progress=False)  # fmt: skip
    assert store.meta["rank_order"] and store.meta["tokenizer"]["max_len"] == 2048
    assert GeneTokenizer.load(store.path).genes == geneformer.genes
    assert store.column("cell_line").astype(str).tolist() == adata.obs["cell_line"].tolist()
    token, median = geneformer.gene_table(adata.var)
    raw, factor = count_space(adata.X, "counts", 1e4)
    expected = rank_order(raw, factor, token, median)
    np.testing.assert_array_equal(store.size_factor, factor)
    rows = np.random.default_rng(1).permutation(store.n_cells)  # any order, any subset
    tokens, counts, lengths, size_factor = token_rows(store, rows, max_len=300)
    assert tokens.shape == (rows.size, 300) and np.array_equal(size_factor, factor[rows])
    for i, row in enumerate(rows):
        a, b = expected.indptr[row], expected.indptr[row] + lengths[i]
        assert lengths[i] == min(300, np.diff(expected.indptr)[row])
        assert np.array_equal(tokens[i, : lengths[i]], expected.tokens[a:b])
        assert np.array_equal(counts[i, : lengths[i]], expected.counts[a:b])
    cell = adata.X[rows[0]].toarray().ravel()  # the counts are the cell's own raw counts
    column = {t: c for c, t in enumerate(token) if t >= 0}
    assert [cell[column[t]] for t in tokens[0, :20]] == counts[0, :20].tolist()
    scores = counts[0, : lengths[0]] / median[[column[t] for t in tokens[0, : lengths[0]]]]
    assert (np.diff(scores) <= 1e-6 * scores[:-1]).all()  # highest first


@pytest.mark.slow
def test_streaming_in_small_chunks_equals_one_chunk(geneformer, cellbench_file, tmp_path):
    path, _ = cellbench_file
    small = tokenize([path, path], tmp_path / "a", geneformer, chunk_size=37, progress=False)
    whole = tokenize([path, path], tmp_path / "b", geneformer, chunk_size=10**6, progress=False)
    for name in ("indptr", "indices", "data", "size_factor"):
        assert (small.path / f"{name}.bin").read_bytes() == (
            whole.path / f"{name}.bin"
        ).read_bytes()


def test_a_truncated_corpus_holds_each_full_rows_first_genes(geneformer, cellbench_file, tmp_path):
    path, adata = cellbench_file
    geneformer = copy.copy(geneformer)
    geneformer.max_len = 300  # below every CellBench cell's gene count, so every row is cut
    full = tokenize([path], tmp_path / "full", geneformer, chunk_size=64, progress=False)
    cut = tokenize([path], tmp_path / "cut", geneformer, chunk_size=64, truncate=True,
                   progress=False)  # fmt: skip
    assert cut.meta["tokenizer"]["truncated"] and not full.meta["tokenizer"]["truncated"]
    lengths = np.diff(full.indptr)
    assert (lengths > 300).all() and (np.diff(cut.indptr) == 300).all()
    rows = np.arange(full.n_cells)
    for a, b in zip(token_rows(full, rows, 300), token_rows(cut, rows, 300), strict=True):
        np.testing.assert_array_equal(a, b)
    whole = token_rows(cut, rows, max_len=10**6)[2]  # asking for more gives no more
    assert (whole == 300).all()


def test_fit_medians_match_exact_medians_within_the_stated_error(tmp_path):
    adata = sclabel.datasets.synthetic(400, 60, 3, 2, seed=5)
    adata.X = sp.csr_matrix(adata.X.multiply(np.arange(60) != 7))  # gene 7 is never expressed
    adata[:150].copy().write_h5ad(tmp_path / "a.h5ad")
    sources = [tmp_path / "a.h5ad", adata[150:].copy()]
    fitted = GeneTokenizer.fit(sources, chunk_size=64, progress=False)
    X = adata.X.toarray().astype(np.float64)
    normalized = X / X.sum(1, keepdims=True) * 1e4
    exact = {
        g: np.median(normalized[:, j][normalized[:, j] > 0])
        for j, g in enumerate(adata.var_names)
        if j != 7
    }
    assert fitted.genes == tuple(sorted(exact))
    relative = np.abs(fitted.medians / np.array([exact[g] for g in fitted.genes]) - 1)
    assert relative.max() < MEDIAN_ERROR  # 2.2%: one histogram bin
    assert np.median(relative) < MEDIAN_ERROR / 4  # interpolation: usually far less


def test_bad_tokenizer_files_are_refused(geneformer, tmp_path):
    folder = tmp_path / "gf"
    folder.mkdir()
    (folder / "token_dictionary.pkl").write_bytes(pickle.dumps(["ENSG00000000003", 2]))
    with pytest.raises(InputError, match="expected a dict of str -> token id, got list"):
        GeneTokenizer.from_geneformer(folder)
    (folder / "token_dictionary.pkl").write_bytes(pickle.dumps({"ENSG00000000003": "2"}))
    with pytest.raises(InputError, match="found 'ENSG00000000003': '2'"):
        GeneTokenizer.from_geneformer(folder)
    counter = collections.Counter({"ENSG00000000003": 2})
    (folder / "token_dictionary.pkl").write_bytes(pickle.dumps(counter))
    with pytest.raises(InputError, match="refusing to load collections.Counter"):
        GeneTokenizer.from_geneformer(folder)
    geneformer.save(tmp_path / "tok")
    state = json.loads((tmp_path / "tok" / "gene_tokenizer.json").read_text())
    (tmp_path / "tok" / "gene_tokenizer.json").write_text(json.dumps({**state, "version": 99}))
    with pytest.raises(InputError, match="version 99 is not sclabel-gene-tokenizer v1"):
        GeneTokenizer.load(tmp_path / "tok")


def test_bad_inputs_leave_no_corpus(tiny, tmp_path):
    mouse = tiny_cells()
    mouse.var_names = ["Actb", "Gapdh", "Cd3e", "Ms4a1", "Xist"]
    with pytest.raises(InputError, match=r"only 0 of 5 input genes \(0.0%\) have a token"):
        tokenize([mouse], tmp_path / "out", tiny, progress=False)
    broken = ad.concat([tiny_cells()] * 40, index_unique="-")
    broken.X = sp.csr_matrix(broken.X.multiply((np.arange(120) != 100)[:, None]))
    with pytest.raises(InputError, match="zero counts"):  # cell 100, in the third chunk
        tokenize([broken], tmp_path / "out", tiny, chunk_size=40, progress=False)
    assert list(tmp_path.iterdir()) == []  # no corpus, no temporary folder
    writer = StoreWriter(tmp_path, genes.Vocabulary(tuple(GENES)), target_sum=1e4, rank_order=True)
    repeated = sp.csr_matrix((np.ones(2), [1, 1], [0, 2]), shape=(1, 4))
    with pytest.raises(ValueError, match="repeats a gene"):
        writer.append(repeated, np.ones(1), pd.DataFrame(index=["c"]))
    writer.close_files()
