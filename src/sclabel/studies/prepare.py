"""Prepare a labelled corpus for training the way the scTab paper did (Fischer et al., 2024).

Steps, in the paper's order, each applied once and reported with cells, cell types and donors
before and after: cells with a label and a donor (a no-op on clean data), primary data only,
an assay whitelist, at least `min_cells` cells per type, at least `min_donors` donors per type,
at least `min_ancestors` Cell Ontology ancestors per type; then a 70/15/15 train/val/test
split grouped by donor (`sclabel.data.splits.make_split`, which keeps every class in train).

The three per-type filters remove whole types and judge a type on its own cells only, so their
combined result does not depend on their order; the order only decides which step a removed
type is reported under.

Ancestors are counted by cellxgene-ontology-guide (`get_term_ancestors`): every distinct CL
term reachable from the type through `is_a` and `part_of` edges, the type itself excluded and
the root "cell" (CL:0000000) included; e.g. "T cell" has 9, "cell" has 0. Labels without a CL
term are removed by that filter.

Input must fit in memory once subset: a backed `.h5ad` is read with `adata[mask].to_memory()`
(bigger-than-memory corpora are out of scope here).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from sclabel.data.splits import PARTS, make_split
from sclabel.errors import InputError
from sclabel.io.atomic import atomic_path
from sclabel.io.read import as_strings

log = logging.getLogger("sclabel")
_TRUTH = {"true": True, "false": False, "1": True, "0": False}
_KINDS = ("cells", "types", "donors")
_LISTS = {"removed_types": "removed", "unmapped_types": "no CL term"}
_HEAD = "| step | setting | cells | cell types | donors | notes |"


@dataclass
class PrepareReport:
    """What each step kept; `steps` rows hold `<cells|types|donors>_<before|after>`."""

    settings: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    split: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"settings": self.settings, "steps": self.steps, "split": self.split}

    def to_markdown(self) -> str:
        lines = ["# sclabel prepare", "", _HEAD, "|---|---|---:|---:|---:|---|"]
        for s in self.steps:
            counts = " | ".join(f"{s[k + '_before']} → {s[k + '_after']}" for k in _KINDS)
            lines.append(f"| {s['step']} | {s['setting']} | {counts} | {_notes(s)} |")
        lines += ["", "| split | cells | cell types | donors |", "|---|---:|---:|---:|"]
        for part, c in self.split.items():
            lines.append(f"| {part} | {c['cells']} | {c['types']} | {c['donors']} |")
        return "\n".join(lines) + "\n"


def _notes(step: dict) -> str:
    if "skipped" in step:
        return f"skipped: {step['skipped']}"
    notes = [f"{what}: {_some(step[key])}" for key, what in _LISTS.items() if step.get(key)]
    return "; ".join(notes)


def _some(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def prepare(
    adata: ad.AnnData,
    *,
    label_key: str,
    donor_key: str,
    primary_key: str = "is_primary_data",
    primary_filter: bool = True,
    assays: list[str] | None = None,
    assay_key: str = "assay",
    min_cells: int = 5000,
    min_donors: int = 30,
    min_ancestors: int = 7,
    ontology_key: str | None = None,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    split_column: str = "split",
) -> tuple[ad.AnnData, PrepareReport]:
    """Filter `adata` as scTab did and add a donor-grouped split in `obs[split_column]`.

    Returns the kept cells (in memory, with all obs/var/X/layers/raw) and a PrepareReport.
    Raises InputError for missing columns, a step that removes every cell, or too few donors.
    """
    settings = {k: v for k, v in locals().items() if k != "adata"}  # the arguments, for the record
    obs = adata.obs
    _require(obs, label=label_key, donor=donor_key, ontology=ontology_key)
    if assays:
        _require(obs, assay=assay_key)
    if split_column in (label_key, donor_key):
        raise InputError(f"--split-column {split_column!r} would overwrite an input column")
    s = _Steps(
        PrepareReport(settings=settings),
        *(as_strings(obs[k]).reset_index(drop=True) for k in (label_key, donor_key)),
    )
    s.apply("has label and donor", "both set", s.labels.notna() & s.donors.notna())
    _primary(s, obs, primary_key, primary_filter)
    _assays(s, obs, assays, assay_key)
    sizes = s.labels[s.keep].value_counts()
    s.by_type("min cells per type", f">= {min_cells}", sizes >= min_cells, "lower --min-cells")
    reach = s.donors[s.keep].groupby(s.labels[s.keep]).nunique()
    s.by_type("min donors per type", f">= {min_donors}", reach >= min_donors, "lower --min-donors")
    _ancestors(s, obs, min_ancestors, ontology_key)
    split = _split(s, split_fractions, seed)
    out = adata[s.keep].to_memory() if adata.isbacked else adata[s.keep].copy()
    if split_column in out.obs.columns:
        log.info("obs[%r] is replaced by the new split", split_column)
    out.obs[split_column] = pd.Categorical(split, categories=PARTS)
    labels, donors = s.labels[s.keep].to_numpy(), s.donors[s.keep].to_numpy()
    s.report.split = {p: _tally(labels[split == p], donors[split == p]) for p in PARTS}
    return out, s.report


class _Steps:
    """The running cell mask, and one report row per step that changes (or skips) it."""

    def __init__(self, report: PrepareReport, labels: pd.Series, donors: pd.Series) -> None:
        self.report, self.labels, self.donors = report, labels, donors
        self.keep = np.ones(len(labels), dtype=bool)

    def apply(self, name: str, setting: str, mask, hint: str = "", **notes) -> None:
        new = self.keep & np.asarray(mask, dtype=bool)
        before = _tally(self.labels[self.keep], self.donors[self.keep])
        after = _tally(self.labels[new], self.donors[new])
        row = {"step": name, "setting": setting}
        row |= {f"{k}_{t}": c[k] for k in _KINDS for t, c in (("before", before), ("after", after))}
        self.report.steps.append(row | notes)
        log.info("%s (%s): %d -> %d cells", name, setting, before["cells"], after["cells"])
        if not new.any():
            raise InputError(f"no cells left after step '{name}' ({setting}); {hint}")
        self.keep = new

    def skip(self, name: str, setting: str, reason: str) -> None:
        self.apply(name, setting, self.keep, skipped=reason)

    def by_type(self, name: str, setting: str, ok: pd.Series, hint: str, **notes) -> None:
        """Keep the cells of the types where `ok` holds; name the removed types."""
        removed = sorted(ok.index[~ok])
        self.apply(
            name, setting, self.labels.isin(ok.index[ok]), hint, removed_types=removed, **notes
        )


def _require(obs: pd.DataFrame, **keys: str | None) -> None:
    for option, key in keys.items():
        if key is not None and key not in obs.columns:
            msg = f"--{option}-key {key!r} is not an obs column; choose one of {list(obs.columns)}"
            raise InputError(msg)


def _tally(labels, donors) -> dict:
    n_types, n_donors = pd.Series(labels).nunique(), pd.Series(donors).nunique()  # NaN not counted
    return {"cells": len(labels), "types": n_types, "donors": n_donors}


def _primary(s: _Steps, obs: pd.DataFrame, key: str, enabled: bool) -> None:
    if not enabled:
        return s.skip("primary data", key, "disabled (--no-primary-filter)")
    if key not in obs.columns:
        return s.skip("primary data", key, f"no obs column {key!r}")
    text = obs[key].astype(str).str.strip().str.lower()
    if bad := sorted(set(text) - set(_TRUTH))[:5]:
        msg = (
            f"obs[{key!r}] should hold True/False, found {bad}; fix it or pass --no-primary-filter"
        )
        raise InputError(msg)
    s.apply("primary data", f"{key} is true", text.map(_TRUTH), "pass --no-primary-filter")


def _assays(s: _Steps, obs: pd.DataFrame, assays: list[str] | None, key: str) -> None:
    if not assays:
        return s.skip("assays", "no whitelist", "no --assays given")
    present = sorted(obs[key].astype(str).unique())[:10]
    hint = f"--assays must match values of obs[{key!r}], e.g. {present}"
    s.apply("assays", f"{key} in {assays}", obs[key].astype(str).isin(assays), hint)


def _ancestors(s: _Steps, obs: pd.DataFrame, minimum: int, ontology_key: str | None) -> None:
    if minimum <= 0:
        return s.skip("min ancestors per type", "0", "min_ancestors is 0")
    from sclabel.evaluation.ontology import CellOntology  # loads the CL (seconds) only if needed

    ontology = CellOntology()
    pairs = pd.DataFrame({"label": s.labels[s.keep]})
    if ontology_key:  # map each distinct (label, id) pair once, not once per cell
        pairs["id"] = obs[ontology_key].reset_index(drop=True).astype(object)[s.keep]
    pairs = pairs.drop_duplicates()
    ids = list(pairs["id"]) if ontology_key else None
    mapping = ontology.map_labels(list(pairs["label"]), ids)
    counts = {label: ontology.n_ancestors(term) for label, term in mapping.items()}
    ok = pd.Series({label: counts.get(label, -1) >= minimum for label in pairs["label"].unique()})
    unmapped = sorted(set(pairs["label"]) - set(mapping))
    hint = "lower --min-ancestors (0 disables it) or pass --ontology-key"
    s.by_type("min ancestors per type", f">= {minimum}", ok, hint, unmapped_types=unmapped)


def _split(s: _Steps, fractions, seed: int) -> np.ndarray:
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1):
        raise InputError(f"split fractions must be 3 numbers >= 0 summing to 1, got {fractions}")
    needed = 1 + sum(f > 0 for f in fractions[1:])
    if (n := s.donors[s.keep].nunique()) < needed:
        msg = (
            f"only {n} donor(s) left after filtering; the donor-grouped split needs {needed}: "
            "lower --min-donors/--min-cells, widen --assays, or use a corpus with more donors"
        )
        raise InputError(msg)
    labels, donors = s.labels[s.keep], s.donors[s.keep]
    split = make_split(labels, groups=donors, fractions=tuple(fractions), seed=seed)
    return split.to_numpy(dtype=object)


def check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".h5ad":
        raise InputError(f"--out must end in .h5ad, got {out.name}")
    return out


def write(adata: ad.AnnData, report: PrepareReport, out: str | Path) -> list[Path]:
    """Write the .h5ad plus `<stem>.prepare.json` and `.prepare.md`, each atomically."""
    out = check_out(out)
    paths = [out, out.with_suffix(".prepare.json"), out.with_suffix(".prepare.md")]
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    texts = (json.dumps(report.to_dict(), indent=2, default=str), report.to_markdown())
    for path, text in zip(paths[1:], texts, strict=True):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return paths
