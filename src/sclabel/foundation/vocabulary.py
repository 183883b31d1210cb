"""The gene vocabulary of rank-value tokens: genes, their token ids and corpus medians.

A `GeneTokenizer` is Geneformer's (its V1 pickles, read by a restricted unpickler), one saved
beside a pretrained model or a corpus (gene_tokenizer.json; folders written before 0.9 named
it tokenizer.json, which still loads), or one fitted on a corpus (`fit`: medians from a
streamed histogram). `ranking.py` applies it to cells; `corpus.py` writes tokenized stores.

A pretrained model folder also gets what other tools read (`save(..., share=True)`):
Hugging Face's tokenizer.json + tokenizer_config.json (a word-level tokenizer over gene ids,
so `AutoTokenizer.from_pretrained(folder)` maps "ENSG... ENSG..." to the model's token ids;
a gene the model does not know becomes <pad>),
and Geneformer's three dictionaries as JSON (token_dictionary.json,
gene_median_dictionary.json, gene_name_id_dict.json).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import pandas as pd

from sclabel.data import genes as gene_ids
from sclabel.data.normalize import count_space
from sclabel.errors import InputError
from sclabel.io import safe_pickle
from sclabel.io.atomic import atomic_path
from sclabel.io.read import detect_values

log = logging.getLogger("sclabel")
SPECIAL = {"<pad>": 0, "<mask>": 1}
N_SPECIAL = len(SPECIAL)
# Geneformer V2 (gc104M) adds <cls> and <eos>: every cell is <cls> + ranked genes + <eos>
WRAPPING = ("<cls>", "<eos>")
FORMAT, VERSION = "sclabel-gene-tokenizer", 1
FILE, OLD_FILE = "gene_tokenizer.json", "tokenizer.json"  # OLD_FILE: Hugging Face's name
LOG2_LO, BINS_PER_OCTAVE, N_BINS = -16, 32, 32 * 40  # fit's histogram: 2^-16 .. 2^24
MEDIAN_ERROR = 2 ** (1 / BINS_PER_OCTAVE) - 1  # fit's bound on the relative median error


def _read_dict(path: Path, kinds: tuple[type, ...], what: str) -> dict:
    """A pickled dict of str -> `kinds`, read without running code, or an InputError."""
    value = safe_pickle.load(path)
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a dict of str -> {what}, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, kinds) or isinstance(item, bool):
            raise InputError(f"{path}: expected a dict of str -> {what}, found {key!r}: {item!r}")
    return value


def geneformer_suffix(folder: Path) -> str:
    """'' for V1's file names, '_gc104M' (or another corpus suffix) for V2's; one set only."""
    if (folder / "token_dictionary.pkl").is_file():
        return ""
    found = sorted(p.name for p in folder.glob("token_dictionary*.pkl"))
    if len(found) != 1:
        what = f"several ({', '.join(found)}): keep one set per folder" if found else "none"
        msg = (
            f"no Geneformer vocabulary in {folder}: token_dictionary[_SUFFIX].pkl with "
            f"gene_median_dictionary[_SUFFIX].pkl beside it; found {what}. Pass the folder "
            "holding them with --tokenizer"
        )
        raise InputError(msg)
    return found[0].removeprefix("token_dictionary").removesuffix(".pkl")


@dataclass
class GeneTokenizer:
    """Gene vocabulary + per-gene medians. The token of genes[i] is i + N_SPECIAL unless
    `token_ids` lists them (a vocabulary whose ids are not 2..N+1); symbols map to genes."""

    genes: tuple[str, ...]
    medians: np.ndarray
    symbol_to_id: dict[str, str] = field(default_factory=dict)
    max_len: int = 2048
    target_sum: float = 1e4
    token_ids: np.ndarray | None = None
    special: dict[str, int] = field(default_factory=lambda: dict(SPECIAL))

    @property
    def wrap(self) -> tuple[int, int] | None:
        """(<cls>, <eos>) token ids when cells are wrapped in them (Geneformer V2), else None."""
        if all(name in self.special for name in WRAPPING):
            return self.special["<cls>"], self.special["<eos>"]
        return None

    def __post_init__(self) -> None:
        self.genes, self.medians = tuple(map(str, self.genes)), np.asarray(self.medians, np.float32)
        if len(set(self.genes)) != len(self.genes) or self.medians.shape != (len(self.genes),):
            raise InputError("a tokenizer needs unique genes and one median per gene")
        if not (np.isfinite(self.medians).all() and (self.medians > 0).all()):
            raise InputError("tokenizer medians must be finite and positive")
        if self.token_ids is not None:
            ids = self.token_ids = np.asarray(self.token_ids, np.int64)
            if (
                ids.shape != self.medians.shape
                or len(set(ids)) != ids.size
                or (ids < N_SPECIAL).any()
            ):
                raise InputError(f"token ids must be unique, >= {N_SPECIAL}, one per gene")

    @property
    def gene_tokens(self) -> np.ndarray:
        """The token id of each gene, in `genes` order."""
        if self.token_ids is not None:
            return self.token_ids
        return np.arange(N_SPECIAL, N_SPECIAL + len(self.genes), dtype=np.int64)

    @classmethod
    def from_geneformer(cls, folder: str | Path, *, max_len: int = 2048) -> GeneTokenizer:
        """Geneformer's pickles: V1 (token_dictionary.pkl, gene_median_dictionary.pkl) or
        V2 (the same names with a corpus suffix, e.g. token_dictionary_gc104M.pkl, whose
        vocabulary adds <cls> and <eos>). Genes without a median are dropped (Geneformer
        ranks only genes with one); the kept genes keep Geneformer's token ids exactly."""
        folder = Path(folder)
        suffix = geneformer_suffix(folder)
        tokens = _read_dict(folder / f"token_dictionary{suffix}.pkl", (int, np.integer), "token id")
        medians = _read_dict(
            folder / f"gene_median_dictionary{suffix}.pkl", (float, np.floating), "median"
        )
        names = folder / f"gene_name_id_dict{suffix}.pkl"
        symbols = _read_dict(names, (str,), "Ensembl ID") if names.is_file() else {}
        for name, token in SPECIAL.items():
            if tokens.get(name, token) != token:
                raise InputError(f"{folder}: {name} has token {tokens[name]}, expected {token}")
        special = {n: int(tokens[n]) for n in (*SPECIAL, *WRAPPING) if n in tokens}
        special = {**SPECIAL, **special}
        kept = sorted(
            (int(t), g) for g, t in tokens.items() if not g.startswith("<") and g in medians
        )
        if not kept:
            raise InputError(f"{folder}: no gene in the token dictionary has a median")
        ids = np.array([t for t, _ in kept], np.int64)
        contiguous = np.array_equal(ids, np.arange(N_SPECIAL, N_SPECIAL + ids.size))
        kept_medians = np.array([medians[g] for _, g in kept])
        genes = tuple(g for _, g in kept)
        return cls(genes, kept_medians, symbols, max_len, token_ids=None if contiguous else ids,
                   special=special)  # fmt: skip

    def save(self, folder: str | Path, *, share: bool = False) -> list[str]:
        """gene_tokenizer.json (genes, token ids, medians, settings) + gene_names.json
        (symbols), plain JSON; with `share`, also the files Hugging Face and Geneformer's
        tools read (module docstring). Returns the file names written."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {"format": FORMAT, "version": VERSION, "special_tokens": self.special}
        state |= {"max_len": self.max_len, "target_sum": self.target_sum, "genes": self.genes}
        state |= {"token_ids": self.gene_tokens.tolist(), "medians": self.medians.tolist()}
        files = {FILE: state, "gene_names.json": self.symbol_to_id}
        if share:
            files |= self._shared_files()
        for name, value in files.items():
            with atomic_path(folder / name) as tmp:  # float32 -> JSON -> float32 is exact
                tmp.write_text(json.dumps(value))
        return list(files)

    def _shared_files(self) -> dict[str, dict]:
        tokens = {**self.special, **dict(zip(self.genes, self.gene_tokens.tolist(), strict=True))}
        hugging_face = json.loads(self._hugging_face(tokens).to_str())
        names = {"<pad>": "pad_token", "<mask>": "mask_token", "<cls>": "cls_token",
                 "<eos>": "eos_token"}  # fmt: skip
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": self.max_len,
            **{names[name]: name for name in self.special if name in names},
        }
        medians = dict(zip(self.genes, self.medians.tolist(), strict=True))
        return {
            OLD_FILE: hugging_face,
            "tokenizer_config.json": config,
            "token_dictionary.json": tokens,
            "gene_median_dictionary.json": medians,
            "gene_name_id_dict.json": self.symbol_to_id,
        }

    def _hugging_face(self, tokens: dict[str, int]):
        """A `tokenizers` word-level tokenizer over gene ids (split on whitespace; an unknown
        gene becomes <pad>); a vocabulary with <cls>/<eos> wraps each cell in them, as sclabel
        does (Geneformer V2)."""
        from tokenizers import AddedToken, Tokenizer
        from tokenizers.models import WordLevel
        from tokenizers.pre_tokenizers import WhitespaceSplit
        from tokenizers.processors import TemplateProcessing

        tokenizer = Tokenizer(WordLevel(tokens, unk_token="<pad>"))
        tokenizer.pre_tokenizer = WhitespaceSplit()
        tokenizer.add_special_tokens([AddedToken(name, special=True) for name in self.special])
        if self.wrap is not None:
            tokenizer.post_processor = TemplateProcessing(
                single="<cls> $A <eos>",
                special_tokens=[("<cls>", self.wrap[0]), ("<eos>", self.wrap[1])],
            )
        return tokenizer

    @staticmethod
    def saved_in(folder: str | Path) -> Path | None:
        """The sclabel tokenizer file of `folder` (either name), or None."""
        for name in (FILE, OLD_FILE):
            path = Path(folder) / name
            if not path.is_file():
                continue
            with path.open() as handle:  # Hugging Face's tokenizer.json is not ours
                if name == FILE or f'"format": "{FORMAT}"' in handle.read(200):
                    return path
        return None

    @classmethod
    def load(cls, folder: str | Path) -> GeneTokenizer:
        path, names = cls.saved_in(folder), Path(folder) / "gene_names.json"
        if path is None:
            raise InputError(f"no {FILE} in {folder}")
        state = json.loads(path.read_text())
        if (state.get("format"), state.get("version")) != (FORMAT, VERSION):
            found = f"format {state.get('format')!r} version {state.get('version')!r}"
            raise InputError(f"{path}: tokenizer {found} is not {FORMAT} v{VERSION}")
        ids = np.asarray(state["token_ids"], np.int64)
        contiguous = np.array_equal(ids, np.arange(N_SPECIAL, N_SPECIAL + ids.size))
        symbols = json.loads(names.read_text()) if names.is_file() else {}
        special = {str(k): int(v) for k, v in state.get("special_tokens", SPECIAL).items()}
        return cls(state["genes"], np.asarray(state["medians"]), symbols, int(state["max_len"]),
                   float(state["target_sum"]), None if contiguous else ids, special)  # fmt: skip

    @classmethod
    def fit(cls, sources, *, gene_key: str | None = None, layer: str | None = None,
            symbol_to_id: dict | None = None, max_len: int = 2048, target_sum: float = 1e4,
            chunk_size: int = 2048, progress: bool = True) -> GeneTokenizer:  # fmt: skip
        """Vocabulary (every expressed gene, sorted by id) and nonzero medians of count /
        cell total x target_sum over a corpus (.h5ad paths read backed, AnnData), streamed.

        Why a histogram: an exact median needs all of a gene's values in memory at once (a
        corpus-sized array). Per gene we count values in log2 bins, 32 per octave (5 kB per
        gene), and interpolate within the median's bin, so the median is off by less than
        a bin: relative error < MEDIAN_ERROR (2.2%), far less than medians vary by corpus.
        """
        from tqdm.auto import tqdm

        from sclabel.io.sources import AnnDataSource

        opened = [s if hasattr(s, "iter_chunks") else AnnDataSource(s, layer) for s in sources]
        probe = cls((), np.zeros(0), symbol_to_id or {})
        per_source = [probe._ids(s.var, gene_key)[0] for s in opened]
        vocabulary = np.array(sorted(set().union(*map(set, per_source)) - {""}), dtype=object)
        hist = np.zeros((vocabulary.size, N_BINS), np.uint32)
        total = sum(s.n_cells for s in opened)
        bar = tqdm(total=total, desc="fitting medians", unit="cell", disable=not progress)
        for source, ids in zip(opened, per_source, strict=True):
            column = pd.Index(vocabulary).get_indexer(ids)
            column[pd.Series(ids).duplicated().to_numpy()] = -1  # a repeated gene: first wins
            kind, done = None, 0
            for chunk, _ in source.iter_chunks(chunk_size):
                kind = kind or detect_values(chunk).kind
                raw, factor = count_space(chunk, kind, target_sum, done, copy=False)
                _hist_add(hist, raw.indptr, raw.indices, raw.data, factor, column)
                done += raw.shape[0]
                bar.update(raw.shape[0])
        bar.close()
        medians = _hist_median(hist)
        keep = medians > 0  # genes never expressed are left out
        if not keep.any():
            raise InputError("no gene is expressed in the inputs; nothing to fit")
        return cls(tuple(vocabulary[keep]), medians[keep], symbol_to_id or {}, max_len, target_sum)

    def _ids(self, var: pd.DataFrame, gene_key: str | None) -> tuple[np.ndarray, str]:
        """Per input column the gene id to look up (symbols mapped to Ensembl IDs), from
        `gene_key` or the var column that maps most (fit: the first with Ensembl IDs)."""
        keys = gene_ids.candidate_keys(var)
        if gene_key is not None:
            keys = {gene_key: gene_ids.key_values(var, gene_key)}
        elif not self.genes:
            ensembl = [k for k, v in keys.items() if gene_ids.id_kind(v) == "Ensembl IDs"]
            keys = {k: keys[k] for k in (ensembl or ["var_names"])[:1]}
        best = None
        for key, values in keys.items():
            if gene_ids.id_kind(values) == "gene symbols" and self.symbol_to_id:
                values = np.array([self.symbol_to_id.get(v, v) for v in values], dtype=object)
            found = int((pd.Index(self.genes).get_indexer(values) >= 0).sum())
            best = best if best is not None and best[2] >= found else (values, key, found)
        return best[0], best[1]

    def positions(
        self, var: pd.DataFrame, gene_key: str | None = None, *, min_coverage: float = 0.1
    ) -> np.ndarray:
        """Per input column the index of its gene in `genes` (-1: none). A gene repeated in
        the input keeps its first column only, so no cell holds a token twice."""
        values, key = self._ids(var, gene_key)
        position = pd.Index(self.genes).get_indexer(values)
        position[pd.Series(values).duplicated().to_numpy()] = -1
        found = int((position >= 0).sum())
        log.info("tokenizer: %d/%d input genes (%s) have a token", found, position.size, key)
        if found < min_coverage * position.size or not found:
            kind = gene_ids.id_kind(var.index if key == "var_names" else var[key])
            msg = (
                f"only {found} of {position.size} input genes ({found / position.size:.1%}) "
                f"have a token (need {min_coverage:.0%}): the input's {key} are {kind}, the "
                f"tokenizer has {len(self.genes)} {gene_ids.id_kind(self.genes)}"
                f"{' and symbols' if self.symbol_to_id else ''}; pass a gene key (a var column "
                "with Ensembl IDs) and check the species"
            )
            raise InputError(msg)
        return position

    def gene_table(
        self, var: pd.DataFrame, gene_key: str | None = None, *, min_coverage: float = 0.1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per input column its token id (-1: none) and median (1 where none)."""
        position = self.positions(var, gene_key, min_coverage=min_coverage)
        where = np.maximum(position, 0)
        tokens = np.where(position >= 0, self.gene_tokens[where], -1)
        return tokens.astype(np.int64), np.where(position >= 0, self.medians[where], np.float32(1))


@numba.njit(nogil=True, cache=True)
def _hist_add(hist, indptr, indices, data, factor, column):  # pragma: no cover
    for row in range(indptr.size - 1):
        for k in range(indptr[row], indptr[row + 1]):
            gene = column[indices[k]]
            if gene >= 0 and data[k] > 0:
                value = np.float64(data[k]) * np.float64(factor[row])
                b = int(np.floor((np.log2(value) - LOG2_LO) * BINS_PER_OCTAVE))
                hist[gene, min(max(b, 0), N_BINS - 1)] += 1


@numba.njit(nogil=True, cache=True)
def _hist_median(hist):  # pragma: no cover
    """Per gene (0 if none) the mean of the two middle order statistics, each placed
    log-uniformly within its bin."""
    out = np.zeros(hist.shape[0], np.float32)
    for gene in range(hist.shape[0]):
        n, estimate, before, b = np.int64(hist[gene].sum()), 0.0, 0, 0
        for rank in ((n - 1) // 2, n // 2):
            while n and before + np.int64(hist[gene, b]) <= rank:
                before, b = before + np.int64(hist[gene, b]), b + 1
            if n:
                inside = (rank - before + 0.5) / np.int64(hist[gene, b])
                estimate += 0.5 * 2.0 ** (LOG2_LO + (b + inside) / BINS_PER_OCTAVE)
        out[gene] = estimate
    return out
