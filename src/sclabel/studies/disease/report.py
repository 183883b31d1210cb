"""The disease experiment's result: tables averaged over folds, Markdown, JSON and plots.

Why apart from the runner: the runner decides what to train; this module only turns the
per-run scores into what a reader compares (one row per model / cap / design, metrics
averaged over folds), so the report's layout can change without touching the training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sclabel.data.obs import markdown_table
from sclabel.evaluation.per_cell_type import per_cell_type_plot
from sclabel.evaluation.plots import plt, save_figure

# metric columns in the order tables show them, with their Markdown headers
METRICS = {
    "cell_accuracy": "cell acc",
    "cell_macro_f1": "cell F1",
    "patient_mean_accuracy": "patient acc (mean)",
    "patient_mean_macro_f1": "patient F1 (mean)",
    "patient_vote_accuracy": "patient acc (vote)",
    "patient_vote_macro_f1": "patient F1 (vote)",
    "patient_weighted_accuracy": "patient acc (weighted)",
    "patient_weighted_macro_f1": "patient F1 (weighted)",
}
COUNTS = ("n_train_cells", "n_test_cells", "n_test_units", "patients_shared")
BAR_METRICS = (
    "cell_macro_f1",
    "patient_mean_macro_f1",
    "patient_vote_macro_f1",
    "patient_weighted_macro_f1",
)


@dataclass
class Section:
    """One part of the report: a title, what it shows, tables, plots (paths under out_dir)."""

    title: str
    text: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # anything else for results.json

    def to_dict(self) -> dict:
        tables = {name: _records(table) for name, table in self.tables.items()}
        return {"title": self.title, "text": self.text, "tables": tables, "plots": self.plots}

    def to_markdown(self) -> str:
        lines = [f"## {self.title}", "", self.text, ""]
        for name, table in self.tables.items():
            if len(self.tables) > 1:
                lines += [f"**{name}**", ""]
            shown = table.rename(columns=METRICS) if not table.empty else table
            lines += [markdown_table(shown) if not table.empty else "(no rows)", ""]
        lines += [f"![{name}]({path})" for name, path in self.plots.items()]
        return "\n".join(lines).rstrip() + "\n"


@dataclass
class DiseaseResult:
    """Every section's tables, the settings that produced them and the raw per-run scores."""

    settings: dict
    sections: dict[str, Section]
    records: list[dict]  # one per (section, run, label, fold): what the tables average
    notes: list[str] = field(default_factory=list)
    splits: list[pd.Series] = field(default_factory=list, repr=False)  # train/val/test per fold

    def to_dict(self) -> dict:
        return {
            "settings": self.settings,
            "notes": self.notes,
            "sections": {name: s.to_dict() | s.data for name, s in self.sections.items()},
            "records": [_plain(r) for r in self.records],
        }

    def to_markdown(self) -> str:
        head = ["# Disease-state experiment", ""]
        head += [f"- {key}: {_describe(value)}" for key, value in self.settings.items()]
        head += [""] + [f"> {note}" for note in self.notes] + ([""] if self.notes else [])
        return "\n".join(head) + "\n".join(s.to_markdown() for s in self.sections.values())

    def write(self, out_dir: str | Path) -> None:
        """Plots under out_dir/plots, then report.md and results.json (the folder's marker)."""
        out_dir = Path(out_dir)
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)
        for name, section in self.sections.items():
            section.plots |= _section_plots(name, section, out_dir)
        (out_dir / "report.md").write_text(self.to_markdown())
        (out_dir / "results.json").write_text(json.dumps(self.to_dict(), indent=1))


def summarise(records: list[dict], keys: list[str]) -> pd.DataFrame:
    """One row per distinct `keys`, metrics and counts averaged over folds (first-seen order).

    With several folds a `cell_macro_f1_sd` column shows how much the folds disagree.
    """
    if not records:
        return pd.DataFrame(columns=keys)
    frame = pd.DataFrame(records)
    numbers = [c for c in [*COUNTS, *METRICS] if c in frame.columns]
    frame[numbers] = frame[numbers].apply(pd.to_numeric)
    grouped = frame.groupby(keys, sort=False, dropna=False)
    table = grouped[numbers].mean()
    if frame["fold"].nunique() > 1:
        table.insert(0, "folds", grouped["fold"].nunique())
        table["cell_macro_f1_sd"] = grouped["cell_macro_f1"].std()
    extra = [c for c in frame.columns if c not in {*keys, *numbers, "fold", "section"}]
    table = grouped[extra].first().join(table) if extra else table
    table = table.reset_index()
    for column in COUNTS:
        if column in table and table[column].notna().all():
            table[column] = table[column].round().astype(int)
    return table.dropna(axis=1, how="all")


def _records(table: pd.DataFrame) -> list[dict]:
    return [_plain(r) for r in table.to_dict(orient="records")]


def _plain(record: dict) -> dict:
    """JSON-safe values: numpy scalars to Python, NaN to None."""
    out = {}
    for key, value in record.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and np.isnan(value):
            value = None
        out[str(key)] = value
    return out


def _describe(value) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _section_plots(name: str, section: Section, out_dir: Path) -> dict[str, str]:
    """The plot(s) belonging to a section, written from its tables; paths relative."""
    plots = {}
    if name == "per_cell_type":
        for label, table in section.tables.items():
            if label.startswith(("best", "worst")) or table.empty:
                continue
            path = out_dir / "plots" / f"per_cell_type_{_safe(label)}.png"
            overall = section.data["overall_macro_f1"].get(label)
            per_cell_type_plot(table, path, overall=overall, title=f"{label}: macro-F1 per type")
            plots[f"per cell type: {label}"] = str(path.relative_to(out_dir))
        return plots
    index = {"architecture": ["model", "label"], "leakage": ["split", "label"]}
    index |= {"wide_deep": ["total", "design", "label"]}
    if name in index and "runs" in section.tables and not section.tables["runs"].empty:
        path = out_dir / "plots" / f"{name}.png"
        _bars(section.tables["runs"], index[name], path, section.title)
        plots[name] = str(path.relative_to(out_dir))
    if name == "sizes" and not section.tables["runs"].empty:
        path = out_dir / "plots" / "sizes.png"
        _size_curve(section.tables["runs"], path)
        plots[name] = str(path.relative_to(out_dir))
    return plots


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))


def _bars(table: pd.DataFrame, index: list[str], path: Path, title: str) -> None:
    """Grouped bars: one group per row (e.g. model x label), one bar per macro-F1 kind."""
    metrics = [m for m in BAR_METRICS if m in table and table[m].notna().any()]
    names = [" / ".join(str(row[k]) for k in index) for _, row in table.iterrows()]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4.5))
    width = 0.8 / max(len(metrics), 1)
    for i, metric in enumerate(metrics):
        x = np.arange(len(names)) + (i - (len(metrics) - 1) / 2) * width
        ax.bar(x, table[metric].fillna(0), width, label=METRICS[metric])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("macro-F1 on test")
    ax.legend(fontsize=8)
    ax.set_title(title)
    save_figure(fig, path)


def _size_curve(table: pd.DataFrame, path: Path) -> None:
    """Macro-F1 against training cells, one line per label and level (cell, patient)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    metrics = [m for m in BAR_METRICS[:2] if m in table and table[m].notna().any()]
    for label, rows in table.groupby("label", sort=False):
        rows = rows.sort_values("n_train_cells")
        for metric, style in zip(metrics, ("-o", "--s"), strict=False):
            ax.plot(rows["n_train_cells"], rows[metric], style, label=f"{label}: {METRICS[metric]}")
    ax.set_xscale("log")
    ax.set_xlabel("training cells (balanced per cell type)")
    ax.set_ylabel("macro-F1 on test")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("training-set size")
    save_figure(fig, path)


FEW_PATIENTS = 5  # below this many test patients (or samples) per run, say how little it says


def few_patients_notes(records: list[dict], threshold: int = FEW_PATIENTS) -> list[str]:
    """A warning for each (model, label) whose patient-level accuracy rests on fewer than
    `threshold` test patients per run, with a 95% Wilson interval over the runs' patients
    pooled (scipy's binomtest)."""
    from scipy.stats import binomtest

    pooled: dict[tuple, list[int]] = {}
    for r in records:
        units, accuracy = r.get("n_test_units"), r.get("patient_vote_accuracy")
        if r.get("section") != "architecture" or not units or accuracy is None:
            continue
        counts = pooled.setdefault((r.get("model"), r.get("label")), [0, 0, units])
        counts[0] += round(accuracy * units)
        counts[1] += units
        counts[2] = min(counts[2], units)
    notes = []
    for (model, label), (right, total, fewest) in pooled.items():
        if fewest >= threshold:
            continue
        interval = binomtest(right, total).proportion_ci(confidence_level=0.95, method="wilson")
        notes.append(
            f"{label} ({model}): patient-level scores rest on {fewest} test patient(s) per run "
            f"(fewer than {threshold}); one patient moves a run's patient accuracy by "
            f"{1 / fewest:.0%}. Over all runs {right} of {total} test patients were right by "
            f"majority vote: {right / total:.2f}, 95% interval {interval.low:.2f}-"
            f"{interval.high:.2f} (Wilson). Use more patients or --folds to narrow it."
        )
    return notes
