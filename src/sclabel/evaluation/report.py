"""`evaluate`: predictions + truth -> metrics.json, report.md and PNG plots in one folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sclabel._atomic import atomic_dir
from sclabel.errors import InputError
from sclabel.evaluation import plots
from sclabel.evaluation.metrics import compute_metrics
from sclabel.predict import Prediction

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
        lines = [
            f"# {title}",
            "",
            f"{m['n_cells']} cells, {len(m['per_class'])} true classes.",
            "",
            "| metric | value |",
            "|---|---|",
            f"| accuracy | {m['accuracy']:.4f} |",
            f"| macro-F1 | {m['macro_f1']:.4f} |",
            f"| weighted-F1 | {m['weighted_f1']:.4f} |",
            f"| expected calibration error | {m['ece']:.4f} |",
            f"| cells labelled unknown | {m['n_unknown']} |",
            "",
        ]
        if m["unseen_labels"]:
            lines += [
                f"True labels the model was never trained on: {', '.join(m['unseen_labels'])}.",
                "",
            ]
        lines += [
            "## Per class",
            "",
            "| class | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
        ]
        for label, s in m["per_class"].items():
            scores = " | ".join(f"{s[k]:.3f}" for k in ("precision", "recall", "f1"))
            lines.append(f"| {label} | {scores} | {s['support']} |")
        lines += ["", "## Plots", ""]
        lines += [f"![{name[:-4]}]({name})" for name in PLOTS]
        return "\n".join(lines) + "\n"


def evaluate(
    prediction: Prediction,
    truth,
    *,
    out_dir: str | Path | None = None,
    title: str = "sclabel evaluation",
) -> Report:
    """Score `prediction` against `truth` (one label per predicted cell).

    With `out_dir`, writes metrics.json, report.md and the plots there (atomically: the
    folder appears complete or not at all).
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
    metrics = compute_metrics(
        truth[known].astype(str),
        prediction.labels[known],
        prediction.confidence[known],
        prediction.classes,
    )
    report = Report(metrics)
    if out_dir is not None:
        out_dir = Path(out_dir)
        with atomic_dir(out_dir, marker="metrics.json", what="report") as tmp:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            (tmp / "report.md").write_text(report.to_markdown(title))
            for name, draw in PLOTS.items():
                draw(metrics, tmp / name)
        report.path = out_dir
    return report
