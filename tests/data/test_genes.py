"""sclabel.data.genes: identifiers, the model vocabulary, and aligning a query onto it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sclabel.data import genes
from sclabel.data.genes import Vocabulary
from sclabel.errors import InputError

MODEL_IDS = [f"ENSG{i:011d}" for i in range(1, 7)]
MODEL_SYMBOLS = ["ACTB", "GAPDH", "CD3E", "MS4A1", "LYZ", "NKG7"]


def model_vocabulary() -> Vocabulary:
    return Vocabulary(tuple(MODEL_IDS), tuple(MODEL_SYMBOLS))


# --- identifiers ---------------------------------------------------------------------------


def test_normalize_ids_strips_ensembl_versions_only():
    names = [
        "ENSG00000141510.17",  # human gene, versioned
        "ENSMUSG00000059552.8",  # mouse gene, versioned
        "ENSG00000141510",  # unversioned stays
        "HLA-A.1",  # a made-unique symbol, not an Ensembl version
        "ENST00000269305.9",  # transcript, not a gene id
        "ENSG00000141510.17_PAR_Y",  # not a plain version suffix
        "MT-CO1",
        " CD3E ",
    ]
    expected = [
        "ENSG00000141510",
        "ENSMUSG00000059552",
        "ENSG00000141510",
        "HLA-A.1",
        "ENST00000269305.9",
        "ENSG00000141510.17_PAR_Y",
        "MT-CO1",
        "CD3E",
    ]
    assert list(genes.normalize_ids(names)) == expected


def test_normalize_ids_turns_missing_into_empty_string():
    out = genes.normalize_ids(pd.Series(["ACTB", None, np.nan]))
    assert list(out) == ["ACTB", "", ""]


def test_normalize_ids_accepts_index_and_categorical():
    index = pd.Index(["ENSG00000000001.3", "ACTB"])
    cat = pd.Categorical(["ENSG00000000001.3", "ACTB"])
    assert list(genes.normalize_ids(index)) == ["ENSG00000000001", "ACTB"]
    assert list(genes.normalize_ids(cat)) == ["ENSG00000000001", "ACTB"]


@pytest.mark.parametrize(
    "names, kind",
    [
        (MODEL_IDS, "Ensembl IDs"),
        (["ENSMUSG00000059552.8", "ENSMUSG00000000001", "Xist"], "Ensembl IDs"),
        (MODEL_SYMBOLS, "gene symbols"),
        (["HLA-A", "HLA-A.1", "RP11-34P13.7"], "gene symbols"),
        (["1", "2", "3"], "other identifiers"),
        (["chr1:100-200", "chr2:5-9"], "other identifiers"),
        ([], "other identifiers"),
    ],
)
def test_id_kind(names, kind):
    assert genes.id_kind(names) == kind


# --- Vocabulary ----------------------------------------------------------------------------


def test_from_var_prefers_ensembl_column_and_keeps_symbols():
    var = pd.DataFrame(
        {"gene_ids": [f"{g}.4" for g in MODEL_IDS]},  # versions are stripped
        index=MODEL_SYMBOLS,
    )
    vocab, key = Vocabulary.from_var(var)
    assert key == "gene_ids"
    assert vocab.ids == tuple(MODEL_IDS)
    assert vocab.symbols == tuple(MODEL_SYMBOLS)


def test_from_var_ensembl_var_names_and_symbol_column():
    var = pd.DataFrame({"gene_symbols": MODEL_SYMBOLS}, index=MODEL_IDS)
    vocab, key = Vocabulary.from_var(var)
    assert key == "var_names"
    assert vocab.ids == tuple(MODEL_IDS)
    assert vocab.symbols == tuple(MODEL_SYMBOLS)


def test_from_var_symbols_only():
    vocab, key = Vocabulary.from_var(pd.DataFrame(index=MODEL_SYMBOLS))
    assert key == "var_names"
    assert vocab.ids == tuple(MODEL_SYMBOLS)
    assert vocab.symbols is None


def test_from_var_explicit_gene_key():
    var = pd.DataFrame({"gene_ids": MODEL_IDS}, index=MODEL_SYMBOLS)
    vocab, key = Vocabulary.from_var(var, "var_names")
    assert key == "var_names"
    assert vocab.ids == tuple(MODEL_SYMBOLS)


def test_from_var_unknown_gene_key():
    var = pd.DataFrame({"gene_ids": MODEL_IDS}, index=MODEL_SYMBOLS)
    with pytest.raises(
        InputError, match=r"gene key 'ensg' is not a var column; available: .*gene_ids"
    ):
        Vocabulary.from_var(var, "ensg")


def test_from_var_drops_later_duplicates_and_missing_ids_keeping_order():
    ids = ["ENSG00000000003", "ENSG00000000001", "ENSG00000000003.2", None, "ENSG00000000002"]
    syms = ["C", "A", "C2", "X", "B"]
    var = pd.DataFrame({"gene_ids": ids, "gene_symbols": syms}, index=[str(i) for i in range(5)])
    vocab, key = Vocabulary.from_var(var)
    assert key == "gene_ids"
    assert vocab.ids == ("ENSG00000000003", "ENSG00000000001", "ENSG00000000002")
    assert vocab.symbols == ("C", "A", "B")


def test_vocabulary_dict_round_trip():
    vocab = model_vocabulary()
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    bare = Vocabulary(("a", "b"))
    assert Vocabulary.from_dict(bare.to_dict()) == bare


# --- align ---------------------------------------------------------------------------------


def test_align_picks_ensembl_column_when_var_names_are_symbols():
    # query: symbols in var_names that do not match, Ensembl IDs (versioned) in gene_ids
    var = pd.DataFrame(
        {"gene_ids": [f"{g}.1" for g in MODEL_IDS[::-1]]},
        index=[f"sym{i}" for i in range(6)],
    )
    alignment = genes.align(var, Vocabulary(tuple(MODEL_IDS)))
    assert alignment.query_key == "gene_ids"
    assert alignment.model_namespace == "ids"
    assert alignment.coverage == 1.0
    # query gene i is model gene 5 - i
    expected = np.fliplr(np.eye(6))
    np.testing.assert_array_equal(alignment.mapping.toarray(), expected)


def test_align_chooses_key_with_most_overlap():
    # var_names match 2 model genes by symbol, gene_ids match 5 by id
    var = pd.DataFrame(
        {"gene_ids": [*MODEL_IDS[:5], "ENSG99999999999"]},
        index=["ACTB", "GAPDH", "foo1", "foo2", "foo3", "foo4"],
    )
    alignment = genes.align(var, model_vocabulary())
    assert (alignment.query_key, alignment.model_namespace) == ("gene_ids", "ids")
    assert alignment.n_found == 5
    assert alignment.coverage == pytest.approx(5 / 6)


def test_align_sums_duplicates_and_zero_fills_missing():
    # query genes: GENE1, GENE3, GENE1 again, an unknown gene; model has GENE1..GENE4
    model = Vocabulary(tuple(f"GENE{i}" for i in range(1, 5)))
    var = pd.DataFrame(index=["GENE1", "GENE3", "GENE1-dup", "OTHER"])
    var["symbol"] = ["GENE1", "GENE3", "GENE1", "OTHER"]
    alignment = genes.align(var, model, gene_key="symbol", min_coverage=0.5)
    X = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 5.0, 0.0, 7.0]], dtype=np.float32)
    out = alignment.apply(sp.csr_matrix(X))
    expected = np.array([[1 + 3, 0, 2, 0], [0, 0, 5, 0]], dtype=np.float32)
    assert sp.isspmatrix_csr(out) and out.dtype == np.float32
    np.testing.assert_array_equal(out.toarray(), expected)
    np.testing.assert_array_equal(alignment.apply(X).toarray(), expected)  # dense input too
    assert alignment.n_found == 2
    assert alignment.coverage == pytest.approx(2 / 4)


def test_align_query_with_symbols_maps_to_model_symbols():
    var = pd.DataFrame(index=["NKG7", "LYZ", "ACTB", "GAPDH", "CD3E", "MS4A1", "XIST"])
    alignment = genes.align(var, model_vocabulary())
    assert (alignment.query_key, alignment.model_namespace) == ("var_names", "symbols")
    assert alignment.coverage == 1.0
    X = sp.csr_matrix(np.arange(1, 8, dtype=np.float32)[None, :])
    # model order ACTB GAPDH CD3E MS4A1 LYZ NKG7 -> query columns 2 3 4 5 1 0
    np.testing.assert_array_equal(alignment.apply(X).toarray(), [[3, 4, 5, 6, 2, 1]])


def test_align_gene_key_override():
    # auto-choice would use gene_ids (6 found); the override forces var_names (2 found)
    var = pd.DataFrame({"gene_ids": MODEL_IDS}, index=["ACTB", "GAPDH", "a", "b", "c", "d"])
    assert genes.align(var, model_vocabulary()).query_key == "gene_ids"
    alignment = genes.align(var, model_vocabulary(), gene_key="var_names", min_coverage=0.0)
    assert alignment.query_key == "var_names"
    assert alignment.model_namespace == "symbols"
    assert alignment.n_found == 2


def test_align_unknown_gene_key():
    var = pd.DataFrame({"gene_ids": MODEL_IDS}, index=MODEL_SYMBOLS)
    with pytest.raises(InputError, match=r"gene key 'ensembl' is not a var column; available:"):
        genes.align(var, model_vocabulary(), gene_key="ensembl")


def test_align_symbols_vs_ensembl_model_suggests_gene_key():
    var = pd.DataFrame(index=MODEL_SYMBOLS)  # query has symbols only
    model = Vocabulary(tuple(MODEL_IDS))  # model knows Ensembl IDs only
    with pytest.raises(
        InputError,
        match=r"only 0\.0% .*query var_names are gene symbols, the model uses Ensembl IDs"
        r".*add a var column with Ensembl IDs and pass --gene-key",
    ):
        genes.align(var, model)


def test_align_low_overlap_same_kind_suggests_min_gene_coverage():
    var = pd.DataFrame(index=[*MODEL_IDS[:2], "ENSG99999999998", "ENSG99999999999"])
    with pytest.raises(InputError, match=r"only 33\.3% .*need 50%.*--min-gene-coverage"):
        genes.align(var, model_vocabulary())


def test_align_coverage_threshold_is_inclusive():
    var = pd.DataFrame(index=MODEL_IDS[:3])
    alignment = genes.align(var, model_vocabulary(), min_coverage=0.5)
    assert alignment.coverage == 0.5
    with pytest.raises(InputError, match=r"need 60%"):
        genes.align(var, model_vocabulary(), min_coverage=0.6)


def test_align_missing_symbols_do_not_match_each_other():
    # a model gene without a symbol must not collect every query gene without one
    model = Vocabulary(tuple(MODEL_IDS[:5]), ("ACTB", "GAPDH", "", "MS4A1", "LYZ"))
    var = pd.DataFrame(
        {"gene_symbols": ["ACTB", "GAPDH", None, None, "MS4A1", "LYZ"]},
        index=[f"q{i}" for i in range(6)],
    )
    alignment = genes.align(var, model)
    assert alignment.model_namespace == "symbols"
    assert alignment.n_found == 4
    out = alignment.apply(sp.csr_matrix(np.array([[1, 2, 30, 40, 5, 6]], dtype=np.float32)))
    np.testing.assert_array_equal(out.toarray(), [[1, 2, 0, 5, 6]])


def test_describe_mentions_counts_and_keys():
    var = pd.DataFrame(index=MODEL_IDS[:4])
    text = genes.align(var, model_vocabulary()).describe()
    assert "4/6 model genes" in text and "var_names" in text and "ids" in text


def test_align_repeated_model_symbol_maps_to_first_model_gene():
    # two model ids share a symbol (and two lack one): a query symbol goes to the first
    model = Vocabulary(tuple(MODEL_IDS[:5]), ("ACTB", "PRSS1", "PRSS1", "", ""))
    var = pd.DataFrame(index=["PRSS1", "ACTB", "NOPE"])
    var["gene_symbols"] = ["PRSS1", "ACTB", None]
    alignment = genes.align(var, model, min_coverage=0.0)
    assert alignment.model_namespace == "symbols"
    assert alignment.n_found == 2
    out = alignment.apply(np.array([[7.0, 3.0, 9.0]], dtype=np.float32))
    np.testing.assert_array_equal(out.toarray(), [[3, 7, 0, 0, 0]])
