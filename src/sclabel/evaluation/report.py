"""`evaluate`: predictions + truth -> metrics.json, report.md and PNG plots in one folder."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from sclabel.errors import InputError
from sclabel.evaluation import plots
from sclabel.evaluation.crosstab import (
    crosstab,
    crosstab_lines,
    crosstab_rows,
    differ,
    overlap_note,
)
from sclabel.evaluation.html import md_cell as _md
from sclabel.evaluation.metrics import compute_metrics
from sclabel.evaluation.ontology import CellOntology, ontology_adjusted
from sclabel.inference.prediction import Prediction
from sclabel.io.atomic import atomic_dir, check_dir

log = logging.getLogger("sclabel")
PLOTS = {
    "confusion_matrix.png": plots.confusion_plot,
    "per_class_f1.png": plots.per_class_f1_plot,
    "reliability.png": plots.reliability_plot,
}


@dataclass
class Report:
    metrics: dict
    path: Path | None = None

    def to_markdown(self, title: str = "sclabel evaluation") -> str:
        m = self.metrics
        lines = [f"# {_md(title)}", ""]
        about = m.get("model")
        if about:
            lines += [*_provenance(about, m), ""]
        overlap = m.get("label_overlap")
        if differ(m):
            lines += [overlap_note(overlap), ""]
        lines += [
            f"{m['n_cells']} cells scored, {len(m['per_class'])} true classes"
            + (
                f"; {m['n_unlabeled']} cells without a true label left out."
                if m.get("n_unlabeled")
                else "."
            ),
            "",
            "| metric | value |",
            "|---|---|",
            f"| accuracy | {m['accuracy']:.4f} |",
            f"| macro-F1 | {m['macro_f1']:.4f} |",
            f"| weighted-F1 | {m['weighted_f1']:.4f} |",
            f"| expected calibration error | {m['ece']:.4f}{_by_chance(m)} |",
            f"| cells labelled unknown | {m['n_unknown']} |",
            "| AUROC of uncertainty for wrong vs right | "
            + ("n/a" if m["uncertainty_auroc"] is None else f"{m['uncertainty_auroc']:.4f}")
            + " |",
        ]
        onto = m.get("ontology")
        if onto:
            lines += [
                f"| macro-F1, Cell Ontology-aware | {onto['macro_f1']:.4f} |",
                f"| accuracy, Cell Ontology-aware | {onto['accuracy']:.4f} |",
            ]
        lines += ["", EXPLAINED, ""]
        if onto and onto["unmapped"]:
            unmapped = ", ".join(map(_md, onto["unmapped"]))
            lines += [f"Labels without a Cell Ontology term (scored flat): {unmapped}.", ""]
        if m["unseen_labels"]:
            lines += [
                "True labels the model was never trained on: "
                + ", ".join(map(_md, m["unseen_labels"]))
                + ". The scores above count their cells as wrong; separately:",
                "",
                *_seen_and_unseen(m),
                "",
            ]
        lines += [
            "## Per class",
            "",
            "| class | precision | recall | F1 | support |"
            + (" F1, ontology-aware |" if onto else ""),
            "|---|---|---|---|---|" + ("---|" if onto else ""),
        ]
        few = False
        for label, s in m["per_class"].items():
            scores = " | ".join(f"{s[k]:.3f}" for k in ("precision", "recall", "f1"))
            extra = f" {onto['per_class_f1'][label]:.3f} |" if onto else ""
            mark = " †" if 0 < s["support"] <= FEW_CELLS else ""
            few = few or bool(mark)
            lines.append(f"| {_md(label)}{mark} | {scores} | {s['support']} |{extra}")
        if few:
            lines += ["", f"† {FEW_CELLS} or fewer test cells: an F1 of 0 or 1 says little."]
        if "by_group" in m:
            kinds = ["macro_f1", "accuracy"] + (["macro_f1_ontology"] if onto else [])
            lines += ["", "## By group", "", "| group | cells | " + " | ".join(kinds) + " |"]
            lines.append("|---|---|" + "---|" * len(kinds))
            for group, row in m["by_group"].items():
                values = " | ".join(f"{row[k]:.3f}" for k in kinds)
                lines.append(f"| {_md(group)} | {row['n_cells']} | {values} |")
        if differ(m):
            lines += ["", *crosstab_lines(m["crosstab"])]
        lines += ["", "## Accuracy after rejecting the most uncertain cells", ""]
        lines += ["| rejected | cells kept | accuracy |", "|---|---|---|"]
        lines += [
            f"| {r['rejected_fraction']:.0%} | {r['n_kept']} | {r['accuracy']:.4f} |"
            for r in m["rejection"]
        ]
        lines += ["", "## Plots", ""]
        lines += [f"![{name[:-4]}]({name})" for name in PLOTS]
        return "\n".join(lines) + "\n"


FEW_CELLS = 3
EXPLAINED = (
    "Expected calibration error (ECE): the gap between confidence and accuracy, averaged over "
    "15 equal-width confidence bins weighted by their cells (0: a cell predicted with "
    "confidence 0.8 is right 80% of the time). On a few hundred cells even a perfectly "
    "calibrated model's ECE is not 0: the ECE row gives what chance alone shows there (each "
    "cell right with its own confidence) and p, how often chance reaches the model's ECE "
    "(small: real miscalibration). Uncertainty AUROC: how well 1 - confidence tells wrong "
    "predictions from right ones (0.5: no better than chance; 1: every wrong prediction is "
    "less confident than every right one)."
)


def ece_text(m: dict, digits: int = 3) -> str:
    """ "ECE 0.138 (0.070 by chance alone)": the ECE with what chance gives a calibrated model
    on as many cells, for one-line summaries (the CLI, the demo, report.html)."""
    text = f"ECE {m['ece']:.{digits}f}"
    if m.get("ece_by_chance") is not None:
        text += f" ({m['ece_by_chance']:.{digits}f} by chance alone)"
    return text


def _by_chance(m: dict) -> str:
    """What a calibrated model would show by chance on as many cells (absent in old runs)."""
    if m.get("ece_by_chance") is None:
        return ""
    p = m["ece_p_value"]
    return (
        f" (a perfectly calibrated model shows {m['ece_by_chance']:.4f} on {m['n_cells']} "
        f"cells by chance; {'p < 0.01' if p < 0.01 else f'p = {p:.2f}'})"
    )


def _seen_and_unseen(m: dict) -> list[str]:
    known, unseen = m.get("known_classes"), m.get("unseen_cells")
    lines = []
    if known:
        lines.append(
            f"- over the classes the model knows ({known['n_cells']} cells): accuracy "
            f"{known['accuracy']:.4f}, macro-F1 {known['macro_f1']:.4f}"
        )
    if unseen:
        flagged = unseen["flagged_unknown"]
        lines.append(
            f"- cells of unseen classes: {unseen['n_cells']}, of which {flagged} "
            f"({flagged / unseen['n_cells']:.0%}) were labelled unknown; an unknown threshold "
            f"of {unseen['threshold_flagging_90pct']:.3f} would flag 90% of them"
            + (
                f" (and {unseen['known_cells_flagged_at_it']:.0%} of the known-class cells)"
                if unseen["known_cells_flagged_at_it"] is not None
                else ""
            )
        )
    return lines


def _about(about: dict) -> str:
    """One line on the model that made these predictions."""
    parts = [f"Model: {about['family']}"]
    if about.get("ensemble", 1) > 1:
        parts[0] += f" (ensemble of {about['ensemble']})"
    if about.get("auto"):
        scores = ", ".join(
            f"{family} {c['val_macro_f1']:.3f}" if c.get("val_macro_f1") is not None else family
            for family, c in about["auto"]["candidates"].items()
        )
        parts[0] += f", chosen by --model auto ({about['auto']['reason']}; validation "
        parts[0] += f"macro-F1: {scores})"
    refit = (about.get("auto") or {}).get("refit") or {}
    if refit.get("done") and refit.get("n_cells"):
        parts.append(f"refitted on {refit['n_cells']:,} training + validation cells")
    elif about.get("n_train_cells") is not None:
        parts.append(f"trained on {about['n_train_cells']:,} cells")
    if about.get("label_key"):
        parts.append(f"labels from obs[{_md(about['label_key'])!r}]")
    parts.append(f"{about['n_classes']} classes")
    if about.get("source"):
        parts.append(f"from {_md(about['source'])}")
    trained = about.get("trained_with") or {}
    if trained.get("sclabel_version"):
        text = f"trained with sclabel {trained['sclabel_version']}"
        text += f" on {trained['date']}" if trained.get("date") else ""
        text += f" from `{_md(trained['data'])}`" if trained.get("data") else ""
        parts.append(text)
    if about.get("path"):
        parts.append(f"folder `{_md(about['path'])}`")
    return "; ".join(parts) + "."


def calibration_line(about: dict | None) -> str | None:
    """One sentence on the model's temperature scaling (None: nothing was fitted)."""
    c = (about or {}).get("calibration")
    if not c:
        return None
    why = c.get("temperature") or f"{c['value']:.3f}"
    text = f"Calibration: temperature {why}"
    if c.get("val_ece_before") is not None:
        text += f"; ECE on the validation cells {c['val_ece_before']:.3f} -> "
        text += f"{c['val_ece_after']:.3f}"
    if c.get("test_ece_before") is not None:
        text += f"; the training run's test cells {c['test_ece_before']:.3f} -> "
        text += f"{c['test_ece_after']:.3f}"
        if c.get("test_ece_by_chance") is not None:
            text += f", where a perfectly calibrated model shows {c['test_ece_by_chance']:.3f}"
            text += " by chance alone"
    return text + "."


def _provenance(about: dict, m: dict) -> list[str]:
    """What was scored, with what, by whom: the model, the data and its cells, the run."""
    from datetime import date
    from importlib.metadata import version

    data = f"`{_md(about['data'])}`" if about.get("data") else "an AnnData in memory"
    cells = f"{m['n_cells'] + m.get('n_unlabeled', 0):,} cells"
    if about.get("split"):
        cells += f" of the model's {about['split']!r} split (matched by cell name)"
        if about.get("split_groups"):
            groups = ", ".join(map(_md, about["split_groups"][:20]))
            more = len(about["split_groups"]) - 20
            cells += f"; its groups: {groups}" + (f" and {more} more" if more > 0 else "")
    lines = ["## Provenance", "", f"- {_about(about)}", f"- Data: {data}, {cells}."]
    if calibration := calibration_line(about):
        lines.append(f"- {_md(calibration)}")
    trained = about.get("training_cells_evaluated")
    if trained:
        lines.append(f"- {trained:,} of these cells were in the model's training split: the "
                     "scores are optimistic (evaluate with --split test).")  # fmt: skip
    lines.append(f"- Scored with sclabel {version('sclabel')} on {date.today()}.")
    return lines


def check_report_dir(path: str | Path) -> Path:
    """Refuse a report folder `evaluate` would refuse, before long work (training) starts."""
    return check_dir(path, marker="metrics.json", what="report")


def evaluate(
    prediction: Prediction,
    truth,
    *,
    out_dir: str | Path | None = None,
    title: str = "sclabel evaluation",
    ontology: bool = False,
    ontology_ids=None,
    groups=None,
    about: dict | None = None,
    sections: list | None = None,
) -> Report:
    """Score `prediction` against `truth` (one label per predicted cell).

    `ontology=True` adds Cell Ontology-aware scores (a more specific prediction counts as
    right), mapping labels by name/synonym or by `ontology_ids` (one CL id per cell, e.g.
    `obs["cell_type_ontology_term_id"]`). `groups` (one value per cell, e.g. tissue) adds a
    per-group breakdown. `about` describes the model for the report (family, ensemble,
    n_train_cells, label_key, n_classes, source). With `out_dir`, writes metrics.json,
    report.md, the plots and report.html (the scores and plots, then `sections`: e.g. the
    query's embedding and marker genes, `annotation.annotation_sections`) there, atomically:
    the folder appears complete or not at all.
    """
    truth = np.asarray(truth, dtype=object)
    if truth.shape[0] != prediction.probabilities.shape[0]:
        msg = (
            f"{truth.shape[0]} true labels for {prediction.probabilities.shape[0]} predicted cells"
        )
        raise InputError(msg)
    known = np.array([t is not None and t == t for t in truth])  # drop None/NaN labels
    if not known.any():
        raise InputError("no cell has a true label to evaluate against")
    if not known.all():
        log.warning(
            "%d of %d cells have no true label and are left out of the scores",
            int((~known).sum()),
            known.size,
        )
    y_true, y_pred = truth[known].astype(str), prediction.labels[known]
    metrics = compute_metrics(y_true, y_pred, prediction.confidence[known], prediction.classes)
    metrics["n_unlabeled"] = int((~known).sum())
    metrics["label_overlap"] = {
        "true": len(metrics["per_class"]),
        "classes": len(prediction.classes),
        "shared": len(set(metrics["per_class"]) & set(map(str, prediction.classes))),
    }
    metrics["crosstab"] = crosstab(metrics["confusion"])
    if about is not None:
        metrics["model"] = about
    scored = {"flat": y_pred}
    if ontology:
        ids = None if ontology_ids is None else np.asarray(ontology_ids, dtype=object)[known]
        metrics["ontology"], scored["ontology"] = ontology_metrics(
            y_true, y_pred, prediction.classes, ids
        )
    if groups is not None:
        metrics["by_group"] = group_metrics(y_true, scored, np.asarray(groups)[known])
    report = Report(metrics)
    if out_dir is not None:
        out_dir = Path(out_dir)
        with atomic_dir(out_dir, marker="metrics.json", what="report") as tmp:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            table = metrics["crosstab"]
            frame = pd.DataFrame(table["counts"], index=table["rows"], columns=table["columns"])
            frame.to_csv(tmp / "crosstab.csv", index_label="given label")
            (tmp / "report.md").write_text(report.to_markdown(title))
            for name, draw in PLOTS.items():
                draw(metrics, tmp / name)
            (tmp / "report.html").write_text(html_report(metrics, tmp, title, sections or []))
        report.path = out_dir
    return report


def html_report(metrics: dict, folder: Path, title: str, sections: list) -> str:
    """report.html: the headline scores and per-class table, the plots, then `sections`."""
    from sclabel.evaluation.html import Section, page

    scores = Section("Scores")
    scores.text(
        f"{metrics['n_cells']:,} cells: accuracy {metrics['accuracy']:.3f}, macro-F1 "
        f"{metrics['macro_f1']:.3f}, {ece_text(metrics)}"
        + (
            f"; Cell Ontology-aware macro-F1 {metrics['ontology']['macro_f1']:.3f}"
            if "ontology" in metrics
            else ""
        )  # fmt: skip
    )
    if calibration := calibration_line(metrics.get("model")):
        scores.text(calibration, note=True)
    overlap = metrics.get("label_overlap")
    if differ(metrics):
        scores.text(overlap_note(overlap).replace("**", ""), note=True)
        rows = [(label, total, "; ".join(f"{name} {share}" for name, share in shares))
                for label, total, shares in crosstab_rows(metrics["crosstab"])]  # fmt: skip
        frame = pd.DataFrame(rows, columns=["given label", "cells", "predicted as"])
        scores.table(frame, index=False)
    scores.table(pd.DataFrame(metrics["per_class"]).T.rename_axis("true label"))
    for name in PLOTS:
        scores.png((folder / name).read_bytes(), name.removesuffix(".png").replace("_", " "))
    return page(title, [scores, *sections])


def ontology_metrics(y_true, y_pred, classes, ids=None) -> tuple[dict, np.ndarray]:
    """Ontology-aware accuracy, macro-F1 and per-class F1, plus the adjusted predictions."""
    cl = CellOntology()
    labels = list(y_true) + list(classes)
    paired = None if ids is None else list(ids) + [None] * len(classes)
    mapping = cl.map_labels(labels, paired)
    adjusted = ontology_adjusted(y_true, y_pred, mapping, cl)
    present = sorted(set(y_true))
    per_class = f1_score(y_true, adjusted, labels=present, average=None, zero_division=0)
    summary = {
        "accuracy": float(np.mean(adjusted == y_true)),
        "macro_f1": float(np.mean(per_class)),
        "per_class_f1": {c: float(f) for c, f in zip(present, per_class, strict=True)},
        "terms": {c: mapping[c] for c in sorted(set(labels)) if c in mapping},
        "unmapped": sorted(set(labels) - set(mapping)),
    }
    return summary, adjusted


def group_metrics(y_true, scored: dict, groups) -> dict:
    """Per group (e.g. tissue): cell count, accuracy and macro-F1, flat and ontology-aware."""
    groups = groups.astype(str)
    out = {}
    for group in sorted(set(groups)):
        mask = groups == group
        present = sorted(set(y_true[mask]))
        row = {"n_cells": int(mask.sum())}
        for kind, pred in scored.items():
            suffix = "" if kind == "flat" else f"_{kind}"
            row["accuracy" + suffix] = float(np.mean(pred[mask] == y_true[mask]))
            row["macro_f1" + suffix] = float(
                f1_score(y_true[mask], pred[mask], labels=present, average="macro", zero_division=0)
            )
        out[group] = row
    return out
