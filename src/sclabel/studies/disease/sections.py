"""The sections of the disease experiment, each a function of the shared `State`.

Every section trains through `disease_eval.fit_and_score` on the runner's splits, so test
patients are the same everywhere and never lose cells to subsampling; only training cells
are balanced, capped or restricted to chosen cell types.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from sclabel.data.balance import balanced_capacity, balanced_per_cell_type, choose_cell_types
from sclabel.data.features import fit_pca
from sclabel.data.inputs import InputSpec
from sclabel.data.obs import require_classes
from sclabel.data.patient_splits import cell_level_split
from sclabel.errors import InputError
from sclabel.evaluation.clustering import kmeans_baseline
from sclabel.evaluation.per_cell_type import best_and_worst, per_cell_type_metrics
from sclabel.studies.disease.evaluate import Outcome, Setup, fit_and_score
from sclabel.studies.disease.report import Section, summarise

log = logging.getLogger("sclabel")
POOLING = (
    "Patient-level answers pool each test unit's cells: mean probability, majority vote, and "
    "a per-cell-type weighted mean with weights fitted on validation patients only."
)


@dataclass
class State:
    """What the sections share: the setup, the splits, options, and what was trained."""

    setup: Setup
    splits: list[pd.Series]
    options: dict
    folder: Path | None  # where plots go (the experiment's temporary folder), or None
    records: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    main: dict[int, dict[str, Outcome]] = field(default_factory=dict)  # fold -> label -> main
    main_name: str = "multi-head"  # becomes "one head per label" when multi-head is not possible


def strata_frame(setup: Setup) -> pd.DataFrame:
    """One stratum per combination of labels (so each part sees every severity x state),
    and the patient of each cell when there is one."""
    obs = setup.adata.obs
    strata = obs[setup.labels].astype(str).agg(" / ".join, axis=1)
    frame = pd.DataFrame({"stratum": strata}, index=obs.index)
    if setup.patient_key is not None:
        frame["patient"] = obs[setup.patient_key].astype(str)
    return frame


def _record(state: State, section: str, fold: int, scores: dict, **keys) -> dict:
    row = {"section": section, **keys, "fold": fold, **scores}
    state.records.append(row)
    return row


def _fit_main(state: State, split: pd.Series, singles: dict | None = None) -> dict[str, Outcome]:
    """The multi-head model over all labels; the single heads when there is one label or
    the family has no shared encoder for several heads (e.g. linear)."""
    labels = state.setup.labels
    if len(labels) > 1 and state.main_name == "multi-head":
        try:
            return fit_and_score(state.setup, split, labels)
        except InputError as err:
            state.notes.append(f"multi-head model skipped: {err}")
    state.main_name = f"{labels[0]}-only" if len(labels) == 1 else "one head per label"
    if singles is None:
        singles = {}
        for label in labels:
            singles |= fit_and_score(state.setup, split, [label])
    return singles


def architecture(state: State) -> Section:
    """Each label alone, then one multi-head model over all labels, on every fold."""
    labels, rows = state.setup.labels, []
    for fold, split in enumerate(state.splits):
        singles = {}
        for label in labels:
            singles |= fit_and_score(state.setup, split, [label])
            keys = {"model": f"{label}-only", "label": label}
            rows.append(_record(state, "architecture", fold, singles[label].scores, **keys))
        state.main[fold] = _fit_main(state, split, singles)
        if len(state.main[fold]) > 1 and state.main[fold] is not singles:
            for label, outcome in state.main[fold].items():
                keys = {"model": "multi-head", "label": label}
                rows.append(_record(state, "architecture", fold, outcome.scores, **keys))
    text = (
        "One head per label column alone, and one shared encoder with a head per label "
        f"(multi-head). Scores on held-out test cells and test units. {POOLING}"
    )
    return Section("Architecture", text, {"runs": summarise(rows, ["model", "label"])})


def leakage(state: State) -> Section:
    """The first label's head on a random-cell split next to the same head on patients."""
    label, setup = state.setup.labels[0], state.setup
    reference = [
        r
        for r in state.records
        if r["section"] == "architecture" and r.get("model") == f"{label}-only" and r["fold"] == 0
    ]
    if reference:
        skip = {"section", "model", "fold", "label"}
        honest = {k: v for k, v in reference[0].items() if k not in skip}
    else:
        honest = fit_and_score(setup, state.splits[0], [label])[label].scores
    opts = state.options
    leaky_split = cell_split(setup, opts["fractions"], opts["seed"])
    leaky = fit_and_score(setup, leaky_split, [label])[label].scores
    rows = [
        _record(state, "leakage", 0, honest, split="patient-level", label=label),
        _record(state, "leakage", 0, leaky, split="cell-level (leaky)", label=label),
    ]
    table = summarise(rows, ["split", "label"])
    gap = rows[1]["cell_macro_f1"] - rows[0]["cell_macro_f1"]
    text = (
        f"The {label} head on the first patient-level split and on a random-cell split of the "
        "same data. With the cell-level split, test patients also have cells in training "
        f"(patients_shared), so the score includes recognising patients: cell "
        f"macro-F1 {gap:+.3f} relative to the patient-level split."
    )
    return Section(
        "Leakage: cell-level vs patient-level split",
        text,
        {"runs": table},
        data={"cell_macro_f1_inflation": gap},
    )


def cell_split(setup: Setup, fractions, seed: int) -> pd.Series:
    """Random cells stratified by the labels: warned, and only on explicit request."""
    patient = "patient" if setup.patient_key is not None else None
    frame = strata_frame(setup)
    return cell_level_split(
        frame,
        "stratum",
        allow_patient_leak=True,
        patient_key=patient,
        fractions=fractions,
        seed=seed,
    )


def sizes(state: State) -> Section:
    """Each label's head trained on caps per cell type, balanced 1:1:... within each type."""
    setup, opts, rows = state.setup, state.options, []
    for fold, split in enumerate(state.splits):
        train_rows = np.flatnonzero(split.to_numpy() == "train")
        train_obs = setup.adata.obs.iloc[train_rows]
        for label in setup.labels:
            previous = None
            for cap in opts["caps"]:
                mask = _balanced_mask(state, train_rows, train_obs, label, cap)
                if mask is None:
                    continue
                if previous is not None and np.array_equal(mask, previous[0]):
                    # the same cells and seed train the same model: reuse its scores
                    scores, note = previous[1], f"same cells as cap {previous[2]}"
                else:
                    scores, note = (
                        fit_and_score(setup, split, [label], train_cells=mask)[label].scores,
                        "",
                    )
                    previous = (mask, scores, cap)
                n_types = setup.adata.obs[setup.cell_type_key][mask].nunique()
                keys = {"label": label, "cap_per_type": cap, "n_types": n_types, "note": note}
                rows.append(_record(state, "sizes", fold, scores, **keys))
    text = (
        "Each label's head alone, trained on at most `cap` cells per cell type, drawn with "
        "equal counts per label within each type, from the training patients only; "
        "validation and test cells are never subsampled. n_train_cells is what the draw gave."
    )
    table = summarise(rows, ["label", "cap_per_type"])
    return Section("Training-set size", text, {"runs": table})


def _balanced_mask(state: State, train_rows, train_obs, label: str, cap) -> np.ndarray | None:
    setup, opts = state.setup, state.options
    try:
        positions = balanced_per_cell_type(
            train_obs,
            label,
            setup.cell_type_key,
            cap_per_type=cap,
            min_per_type=min(opts["min_per_type"], cap) if isinstance(cap, int) else 0,
            seed=opts["seed"],
        )
    except InputError as err:
        state.notes.append(f"{label}, cap {cap}: skipped ({err})")
        return None
    mask = np.zeros(setup.adata.n_obs, dtype=bool)
    mask[train_rows[positions]] = True
    return mask


def wide_deep(state: State) -> Section:
    """At each fixed total: many types with few cells each vs the few largest with many."""
    setup, opts, rows, choices = state.setup, state.options, [], {}
    totals = opts["totals"] or _default_totals(state)
    if not totals:
        state.notes.append("wide vs deep skipped: it needs at least two cell types")
    for fold, split in enumerate(state.splits):
        train_rows = np.flatnonzero(split.to_numpy() == "train")
        train_obs = setup.adata.obs.iloc[train_rows]
        for total in totals:
            for label in setup.labels:
                for design in ("wide", "deep"):
                    try:
                        choice = _choose(train_obs, setup, label, total, design, opts)
                    except InputError as err:
                        state.notes.append(f"{design}, total {total}, {label}: skipped ({err})")
                        continue
                    caps = choice.caps()
                    mask = _balanced_mask(state, train_rows, train_obs, label, caps)
                    if mask is None:
                        continue
                    outcome = fit_and_score(setup, split, [label], train_cells=mask)[label]
                    own = outcome.test[outcome.test["cell_type"].isin(list(caps))]
                    keys = {
                        "total": total,
                        "design": design,
                        "label": label,
                        "n_types": len(caps),
                        "own_types_cell_macro_f1": _macro_f1(own),
                        "cell_types": ", ".join(f"{t} ({n})" for t, n in caps.items()),
                    }
                    rows.append(_record(state, "wide_deep", fold, outcome.scores, **keys))
                    choices[f"fold {fold}, {label}, {design} {total}"] = choice.to_dict()
    text = (
        "At each total, 'wide' spreads the training cells over as many cell types as can "
        f"contribute, 'deep' over the {opts['deep_types']} most prevalent (fewer when there are "
        "few types), each balanced per label within type (training patients only). Test cells "
        "of all types are scored; own_types_cell_macro_f1 scores only the chosen types' cells. "
        "cell_types lists the chosen types and their training cells (first fold)."
    )
    table = summarise(rows, ["total", "design", "label"])
    return Section("Wide vs deep", text, {"runs": table}, data={"choices": choices})


def _choose(train_obs, setup: Setup, label: str, total: int, design: str, opts):
    """`choose_cell_types` over the most types that reach `total` (wide), or the fewest."""
    capacity = balanced_capacity(train_obs, label, setup.cell_type_key)
    n_present = int((capacity > 0).sum())
    unit = len(require_classes(train_obs[label], label))  # shares come in whole label sets

    def choose(n: int):
        per_type = unit * max(1, (total // unit) // n)  # so that n types fit in `total`
        return choose_cell_types(
            train_obs, setup.cell_type_key, total=total, min_per_type=per_type, label_key=label
        )

    if design == "deep":
        return choose(max(1, min(opts["deep_types"], n_present - 1)))
    for n in range(n_present, 0, -1):
        try:
            return choose(n)
        except InputError:
            continue
    raise InputError(f"no set of cell types holds {total} usable training cells")


def _default_totals(state: State) -> list[int]:
    """One total that `deep_types` types can fill in every fold for every label."""
    setup, deep, totals = state.setup, state.options["deep_types"], []
    for split in state.splits:
        train_obs = setup.adata.obs[split.to_numpy() == "train"]
        for label in setup.labels:
            capacity = balanced_capacity(train_obs, label, setup.cell_type_key)
            capacity = capacity[capacity > 0].sort_values(ascending=False)
            if capacity.size < 2:
                return []
            n = min(deep, capacity.size - 1)
            totals.append(int(n * capacity.iloc[n - 1]))
    total = min(totals)
    digits = 10 ** max(len(str(total)) - 2, 0)  # two significant digits: a readable number
    log.info("wide vs deep: total %d cells", total // digits * digits)
    return [total // digits * digits]


def _macro_f1(frame: pd.DataFrame) -> float | None:
    if frame.empty:
        return None
    present = sorted(set(frame["truth"]))
    return float(
        f1_score(
            frame["truth"], frame["predicted"], labels=present, average="macro", zero_division=0
        )
    )


def kmeans(state: State) -> Section:
    """k-means on the representation, compared with cell type, the labels and patients."""
    setup, opts = state.setup, state.options
    obs = setup.adata.obs
    rng = np.random.default_rng([opts["seed"], 17])
    n = min(obs.shape[0], opts["kmeans_cells"])
    cells = np.sort(rng.choice(obs.shape[0], size=n, replace=False))
    x, what = _representation(setup, cells)
    keys = [setup.cell_type_key, *setup.labels, setup.patient_key]
    columns = {k: obs[k].iloc[cells].astype(str).to_numpy() for k in dict.fromkeys(keys) if k}
    columns = {k: v for k, v in columns.items() if len(set(v)) > 1}  # ARI needs 2+ values
    k_range = range(2, min(opts["k_max"], n - 1) + 1)
    out = None if state.folder is None else state.folder / "plots" / "kmeans"
    result = kmeans_baseline(x, columns, k_range=k_range, seed=opts["seed"], out_dir=out)
    plots = {k: str(Path(p).relative_to(state.folder)) for k, p in result.plots.items()}
    scores = pd.DataFrame(
        {
            "label": list(result.ari),
            "ARI": list(result.ari.values()),
            "majority-label accuracy": [result.majority_accuracy[k] for k in result.ari],
        }
    )
    text = (
        f"k-means on {what} of {n} cells (no labels used); k = {result.k} by the elbow "
        f"({result.elbow_rule}), silhouette {result.silhouette:.3f}. High ARI for cell type "
        "and near 0 for a label means the label's signal is subtle or confined to some types."
    )
    tables = {"scores": scores, "inertia curve": result.curve, "clusters": result.clusters}
    data = result.to_dict() | {"plots": plots, "representation": what}
    return Section("k-means baseline", text, tables, plots, data)


def _representation(setup: Setup, cells: np.ndarray) -> tuple[np.ndarray, str]:
    """The obsm embedding, else PCs of log-normalized expression (fitted on these cells)."""
    key = setup.train_kwargs.get("obsm_key")
    if key is not None:
        return np.asarray(setup.adata.obsm[key])[cells], f"obsm[{key!r}]"
    _, parts = InputSpec.fit(setup.adata, {"cells": cells})  # the one normalization
    values = parts["cells"]
    n = min(setup.train_kwargs.get("pca") or 50, min(values.shape) - 1)
    return fit_pca(values, n, seed=0).apply(values), f"{n} PCs of log-normalized expression"


def per_cell_type(state: State) -> Section:
    """Accuracy and macro-F1 per cell type of the main model, test cells of all folds."""
    setup, opts = state.setup, state.options
    if not state.main:  # architecture was not asked for: train the main model alone
        for fold, split in enumerate(state.splits):
            state.main[fold] = _fit_main(state, split)
    tables, overall = {}, {}
    for label in setup.labels:
        test = pd.concat([state.main[f][label].test for f in sorted(state.main)])
        table = per_cell_type_metrics(test["truth"], test["predicted"], test["cell_type"])
        tables[label] = table
        overall[label] = _macro_f1(test)
        if len(table) > 2 * opts["top_n"]:
            best, worst = best_and_worst(table, n=opts["top_n"])
            tables[f"best {opts['top_n']}: {label}"] = best
            tables[f"worst {opts['top_n']}: {label}"] = worst
    text = (
        f"The main model ({state.main_name}) scored on the test cells of each cell "
        "type (all folds pooled), best macro-F1 first: types carrying the label's signal rank "
        "high, types without it sit near chance."
    )
    return Section("Per-cell-type performance", text, tables, data={"overall_macro_f1": overall})
