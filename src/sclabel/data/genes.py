"""The gene vocabulary: which genes a model uses and how a query's genes map onto them.

Alignment is one sparse matrix M (query genes x model genes) with a 1 where a query gene
is a model gene, so `X @ M` sums duplicates and zero-fills missing genes in one step, on
any row chunk, without densifying.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sclabel.errors import InputError

log = logging.getLogger("sclabel")

# var columns that commonly hold gene identifiers, in the order we prefer them
GENE_COLUMNS = (
    "gene_ids",
    "gene_id",
    "ensembl_id",
    "ensembl",
    "feature_id",
    "gene_symbols",
    "gene_symbol",
    "feature_name",
    "gene_name",
    "symbol",
)
_VERSION = re.compile(r"^(ENS[A-Z]*G\d+)\.\d+$")


def normalize_ids(names) -> np.ndarray:
    """Strings with Ensembl version suffixes stripped (ENSG00000141510.17 -> ENSG00000141510)."""
    values = pd.Series(np.asarray(names, dtype=object)).fillna("").astype(str).str.strip()
    return values.str.replace(_VERSION, r"\1", regex=True).to_numpy(dtype=object)


def id_kind(names) -> str:
    """'Ensembl IDs' or 'gene symbols' (or 'other identifiers'), for messages and choices."""
    values = pd.Series(np.asarray(names, dtype=object)).astype(str)
    if len(values) and values.str.match(r"^ENS[A-Z]*G\d+").mean() > 0.5:
        return "Ensembl IDs"
    if len(values) and values.str.match(r"^[A-Za-z][A-Za-z0-9._-]*$").mean() > 0.5:
        return "gene symbols"
    return "other identifiers"


def candidate_keys(var: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every place in `var` that may hold gene identifiers: var_names and known columns."""
    keys = {"var_names": normalize_ids(var.index)}
    for column in GENE_COLUMNS:
        if column in var.columns:
            keys[column] = normalize_ids(var[column])
    return keys


def key_values(var: pd.DataFrame, gene_key: str) -> np.ndarray:
    if gene_key == "var_names":
        return normalize_ids(var.index)
    if gene_key not in var.columns:
        msg = f"gene key {gene_key!r} is not a var column; available: {['var_names', *var.columns]}"
        raise InputError(msg)
    return normalize_ids(var[gene_key])


@dataclass(frozen=True)
class Vocabulary:
    """A model's genes: unique identifiers plus, when known, their symbols."""

    ids: tuple[str, ...]
    symbols: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        return {
            "ids": list(self.ids),
            "symbols": None if self.symbols is None else list(self.symbols),
        }

    @classmethod
    def from_dict(cls, values: dict) -> Vocabulary:
        symbols = values.get("symbols")
        return cls(tuple(values["ids"]), None if symbols is None else tuple(symbols))

    @classmethod
    def from_var(cls, var: pd.DataFrame, gene_key: str | None = None) -> tuple[Vocabulary, str]:
        """Build a vocabulary from training genes; prefers Ensembl IDs when a column has them."""
        keys = candidate_keys(var)
        if gene_key is None:
            ensembl = [k for k, v in keys.items() if id_kind(v) == "Ensembl IDs"]
            gene_key = ensembl[0] if ensembl else "var_names"
        ids = key_values(var, gene_key)
        symbols = next(
            (v for k, v in keys.items() if k != gene_key and id_kind(v) == "gene symbols"), None
        )
        unique, first = np.unique(ids, return_index=True)
        order = np.sort(first)  # keep the training order, drop later duplicates
        ids_unique = tuple(str(x) for x in ids[order] if x != "")
        sym = None
        if symbols is not None:
            sym = tuple(str(symbols[i]) for i in order if ids[i] != "")
        if len(unique) < len(ids):
            log.info(
                "%d duplicate gene ids are summed into one column each", len(ids) - len(unique)
            )
        return cls(ids_unique, sym), gene_key


@dataclass(frozen=True)
class GeneAlignment:
    """How a query's genes map onto a vocabulary, and how well."""

    mapping: sp.csr_matrix  # n_query_genes x n_model_genes, 0/1
    query_key: str
    model_namespace: str  # "ids" or "symbols"
    n_found: int
    n_model: int
    identity: bool = False  # query genes are exactly the model's, in order

    @property
    def coverage(self) -> float:
        return self.n_found / self.n_model

    def apply(self, X) -> sp.csr_matrix:
        """Query rows (sparse or dense) -> rows over the model's genes, duplicates summed."""
        X = X if sp.issparse(X) else sp.csr_matrix(X)
        if self.identity:  # a query from the same pipeline: skip the matrix product
            return sp.csr_matrix(X, dtype=np.float32)
        return sp.csr_matrix(X @ self.mapping, dtype=np.float32)

    @property
    def present(self) -> np.ndarray:
        """One bool per model gene: does any query gene map onto it?"""
        return np.asarray(self.mapping.sum(axis=0)).ravel() > 0

    def describe(self, what: str = "model") -> str:
        """E.g. "1,998/2,000 model genes found in the input (99.9%, input var_names vs
        model ids)"; `what` names whose genes they are ("store" when building a store)."""
        return (
            f"{self.n_found:,}/{self.n_model:,} {what} genes found in the input "
            f"({self.coverage:.1%}, input {self.query_key} vs {what} {self.model_namespace})"
        )


def align(
    var: pd.DataFrame,
    vocabulary: Vocabulary,
    *,
    gene_key: str | None = None,
    min_coverage: float = 0.5,
    what: str = "model",
) -> GeneAlignment:
    """Map query genes onto `vocabulary`, choosing the identifier pair that overlaps most."""
    query = {gene_key: key_values(var, gene_key)} if gene_key else candidate_keys(var)
    model = {"ids": np.asarray(vocabulary.ids, dtype=object)}
    if vocabulary.symbols is not None:
        model["symbols"] = np.asarray(vocabulary.symbols, dtype=object)
    best = None
    for qkey, qvalues in query.items():
        for mname, mvalues in model.items():
            # symbols may repeat across ids; map each query gene to the first model column
            index = pd.Index(mvalues)
            positions = (
                index.get_indexer(qvalues) if index.is_unique else _first_positions(index, qvalues)
            )
            positions[qvalues == ""] = -1  # a missing identifier matches nothing
            found = np.unique(positions[positions >= 0]).size
            if best is None or found > best[0]:
                best = (found, qkey, mname, positions)
    found, qkey, mname, positions = best
    n_model = len(vocabulary.ids)
    rows = np.flatnonzero(positions >= 0)
    mapping = sp.csr_matrix(
        (np.ones(rows.size, dtype=np.float32), (rows, positions[rows])),
        shape=(len(var), n_model),
    )
    identity = len(var) == n_model and bool((positions == np.arange(n_model)).all())
    alignment = GeneAlignment(mapping, qkey, mname, found, n_model, identity)
    if alignment.coverage < min_coverage:
        raise InputError(_low_coverage_message(alignment, query, vocabulary, min_coverage))
    log.info("gene alignment: %s", alignment.describe(what))
    return alignment


def restrict(vocabulary: Vocabulary, wanted: pd.DataFrame, name: str) -> Vocabulary:
    """The genes of `vocabulary` that `wanted` (a var-like table: another dataset's genes,
    or a list's) also has, matched as a query's genes are (ids or symbols, whichever
    overlaps most), in the vocabulary's order."""
    alignment = align(wanted, vocabulary, min_coverage=0.0)
    keep = np.flatnonzero(alignment.present)
    if keep.size == 0:
        msg = (
            f"none of the {len(vocabulary.ids)} training genes is among the "
            f"{len(wanted)} genes of {name}; are they the same kind of identifier?"
        )
        raise InputError(msg)
    log.info("training on %d of %d genes: those %s has", keep.size, len(vocabulary.ids), name)
    symbols = None if vocabulary.symbols is None else tuple(vocabulary.symbols[i] for i in keep)
    return Vocabulary(tuple(vocabulary.ids[i] for i in keep), symbols)


def _first_positions(index: pd.Index, values: np.ndarray) -> np.ndarray:
    first = pd.Series(np.arange(len(index)), index=index)
    first = first[~first.index.duplicated()]
    return first.reindex(values).fillna(-1).to_numpy(dtype=np.int64)


def _low_coverage_message(
    alignment: GeneAlignment, query: dict, vocabulary: Vocabulary, min_coverage: float
) -> str:
    model_kind = id_kind(vocabulary.ids)
    model_kinds = {model_kind} | ({id_kind(vocabulary.symbols)} if vocabulary.symbols else set())
    query_kinds = {key: id_kind(values) for key, values in query.items()}
    base = (
        f"only {alignment.coverage:.1%} of the model's {alignment.n_model} genes were found in "
        f"the query (need {min_coverage:.0%})"
    )
    if not model_kinds & set(query_kinds.values()):
        kinds = ", ".join(f"{k} are {v}" for k, v in query_kinds.items())
        return (
            f"{base}: query {kinds}, the model uses {model_kind}; add a var column with "
            f"{model_kind} and pass --gene-key COLUMN"
        )
    return (
        f"{base} (best match: query {alignment.query_key}); is this the same species and "
        "annotation? Lower --min-gene-coverage to accept anyway"
    )


def gene_list(genes) -> tuple[pd.DataFrame, str]:
    """What `--genes`/`--genes-from` name, as (a var-like table, its name): an AnnData or
    .h5ad (its var: names and gene columns), a list of identifiers, or a text file with one
    identifier per line (the first field of a .csv/.tsv line; a header line is skipped)."""
    import anndata as ad

    if isinstance(genes, ad.AnnData):
        return genes.var, "the given AnnData"
    if isinstance(genes, list | tuple | pd.Index | np.ndarray):
        return pd.DataFrame(
            index=pd.Index([str(g) for g in genes])
        ), f"the {len(genes)} genes given"
    path = Path(genes)
    if not path.is_file():
        raise InputError(f"gene list not found: {path}")
    if path.name.lower().endswith(".h5ad"):
        return ad.read_h5ad(path, backed="r").var.copy(), path.name
    ids = []
    for line in path.read_text().splitlines():
        field = re.split(r"[,\t]", line.strip())[0].strip().strip('"')
        if field and not field.startswith("#"):
            ids.append(field)
    if ids and ids[0].lower() in {"gene", "genes", "gene_id", "gene_ids", "id", "feature_id",
                                  "symbol", "gene_symbol", "feature_name"}:  # fmt: skip
        ids = ids[1:]
    if not ids:
        raise InputError(f"{path} lists no genes (expected one identifier per line)")
    return pd.DataFrame(index=pd.Index(ids)), path.name
