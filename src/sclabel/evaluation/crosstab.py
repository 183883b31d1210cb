"""Given vs predicted labels when they are not the same set (8 lineages against a 71-class
model): the cross-tab, its rows as a reader takes them in, and the report's words for it."""

from __future__ import annotations

import numpy as np

from sclabel.evaluation.html import md_cell


def differ(metrics: dict) -> bool:
    """Some given labels are not among the model's classes."""
    overlap = metrics.get("label_overlap")
    return bool(overlap) and overlap["shared"] < overlap["true"]


def crosstab(confusion: dict) -> dict:
    """The confusion matrix without predicted columns no cell went to, columns ordered by
    the given label that sent them the most cells: block-diagonal when labels correspond."""
    counts = np.asarray(confusion["counts"])
    used = np.flatnonzero(counts.sum(axis=0) > 0)
    order = sorted(used, key=lambda j: (int(np.argmax(counts[:, j])), -int(counts[:, j].max())))
    return {
        "rows": list(confusion["rows"]),
        "columns": [confusion["columns"][j] for j in order],
        "counts": counts[:, order].tolist(),
    }


def overlap_note(overlap: dict) -> str:
    shared, true = overlap["shared"], overlap["true"]
    if shared == 0:
        return (
            f"**None of the {true} true labels is one of the model's {overlap['classes']} "
            "classes**: accuracy and F1 count every cell as wrong. The cross-tab of given vs "
            "predicted labels below shows how the model's classes fall on yours."
        )
    return (
        f"{shared} of the {true} true labels are among the model's {overlap['classes']} "
        "classes; cells of the others count as wrong. See the cross-tab of given vs predicted "
        "labels below."
    )


def share(value: float) -> str:
    return f"{value:.0%}" if value >= 0.005 else "<1%"


def crosstab_rows(crosstab: dict, top: int = 3) -> list[tuple[str, int, list[tuple[str, str]]]]:
    """Per given label: its cells and the `top` predicted labels that took most of them, with
    their shares ("62%", "<1%")."""
    counts = np.asarray(crosstab["counts"], dtype=float)
    rows = []
    for row, label in zip(counts, crosstab["rows"], strict=True):
        total = row.sum()
        order = [j for j in np.argsort(-row, kind="stable")[:top] if row[j] > 0]
        shares = [(str(crosstab["columns"][j]), share(row[j] / total)) for j in order]
        rows.append((str(label), int(total), shares))
    return rows


def crosstab_lines(crosstab: dict, top: int = 3) -> list[str]:
    """The cross-tab section of report.md (`crosstab_rows`)."""
    lines = [
        "## Given vs predicted labels",
        "",
        f"The {top} predicted labels that took most cells of each given label (all counts: "
        "crosstab.csv).",
        "",
        "| given label | cells | predicted as |",
        "|---|---|---|",
    ]
    for label, total, shares in crosstab_rows(crosstab, top):
        shown = ", ".join(f"{md_cell(name)} {share}" for name, share in shares)
        lines.append(f"| {md_cell(label)} | {total:,} | {shown} |")
    return lines
