"""Classification metrics as one JSON-ready dict."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from sclabel.evaluation.calibration import (
    ece_by_chance,
    expected_calibration_error,
    reliability_table,
)


def label_order(labels) -> list[str]:
    """Labels sorted as people read them: numbers as numbers (1, 2, ..., 10, not 1, 10, 2),
    then text."""

    def key(label: str):
        try:
            return (0, float(label), "")
        except ValueError:
            return (1, 0.0, label)

    return sorted((str(label) for label in labels), key=key)


def compute_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    confidence: np.ndarray,
    classes: Sequence[str],
) -> dict:
    """Accuracy, macro/weighted F1, per-class scores, confusion matrix and calibration.

    Macro-F1 averages over the classes present in `y_true`, so a class the model knows but
    the test set lacks does not count as a zero. True labels unknown to the model are kept
    (they can only be wrong) and listed under `unseen_labels`.
    """
    y_true = np.asarray(y_true, dtype=object).astype(str)
    y_pred = np.asarray(y_pred, dtype=object).astype(str)
    present = label_order(set(y_true))
    rows = present
    columns = list(classes) + label_order(set(y_pred) - set(classes))  # e.g. "unknown"
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=present, zero_division=0
    )
    correct = y_true == y_pred
    ece = expected_calibration_error(np.asarray(confidence), correct)
    # "unknown" answers and labels the model lacks are wrong whatever the confidence
    known = np.asarray(list(classes), dtype=str)
    never_right = ~np.isin(y_pred, known) | ~np.isin(y_true, known)
    chance = ece_by_chance(np.asarray(confidence), ece, never_right=never_right)
    matrix = confusion_matrix(y_true, y_pred, labels=sorted(set(rows) | set(columns)))
    order = sorted(set(rows) | set(columns))
    position = {label: i for i, label in enumerate(order)}
    matrix = matrix[np.ix_([position[r] for r in rows], [position[c] for c in columns])]
    return {
        "n_cells": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        ),
        "weighted_f1": float(
            f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0)
        ),
        "ece": ece,
        # the ECE a perfectly calibrated model shows on these cells by chance, and how often
        # it reaches this model's (small: real miscalibration)
        "ece_by_chance": chance["mean"],
        "ece_p_value": chance["p_value"],
        "per_class": {
            label: {
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for label, p, r, f, s in zip(present, precision, recall, f1, support, strict=True)
        },
        "confusion": {"rows": rows, "columns": columns, "counts": matrix.tolist()},
        "reliability": reliability_table(np.asarray(confidence), correct)
        .reset_index()
        .astype(object)
        .where(lambda t: t.notna(), None)
        .to_dict(orient="list"),
        **uncertainty_metrics(np.asarray(confidence), correct),
        "unseen_labels": sorted(set(present) - set(classes)),
        "n_unknown": int((y_pred == "unknown").sum()) if "unknown" not in classes else 0,
        **seen_and_unseen(y_true, y_pred, np.asarray(confidence), classes),
    }


UNSEEN_FLAGGED = 0.9  # the threshold reported is the one that would flag this share


def seen_and_unseen(y_true, y_pred, confidence: np.ndarray, classes) -> dict:
    """With true labels the model never saw, the headline mixes two questions: how well it
    labels what it knows, and whether it says "unknown" for what it does not. Scores over
    the known classes only, and for the unseen-class cells: how many the unknown threshold
    flagged, and the threshold that would flag 90% of them (with the share of known-class
    cells it would flag too)."""
    seen = np.isin(y_true, list(classes))
    if seen.all():
        return {}
    known = sorted(set(y_true[seen]))
    out: dict = {}
    if seen.any():
        out["known_classes"] = {
            "n_cells": int(seen.sum()),
            "accuracy": float(accuracy_score(y_true[seen], y_pred[seen])),
            "macro_f1": float(
                f1_score(y_true[seen], y_pred[seen], labels=known, average="macro", zero_division=0)
            ),  # fmt: skip
        }
    unseen_conf = confidence[~seen]
    threshold = float(np.nextafter(np.quantile(unseen_conf, UNSEEN_FLAGGED), np.inf))
    out["unseen_cells"] = {
        "n_cells": int((~seen).sum()),
        "flagged_unknown": int((y_pred[~seen] == "unknown").sum()),
        "threshold_flagging_90pct": min(threshold, 1.0),
        "known_cells_flagged_at_it": float((confidence[seen] < threshold).mean())
        if seen.any()
        else None,
    }
    return out


REJECTED_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


def uncertainty_metrics(confidence: np.ndarray, correct: np.ndarray) -> dict:
    """Does uncertainty (1 - confidence) flag the wrong predictions?

    `uncertainty_auroc`: AUROC of uncertainty for separating wrong from right cells (0.5 is
    chance; None when every cell is right or every cell is wrong). `rejection`: accuracy on the
    cells kept after rejecting the most uncertain fraction, as in scTab's evaluation.
    """
    uncertainty = 1.0 - confidence
    wrong = ~correct
    auroc = float(roc_auc_score(wrong, uncertainty)) if 0 < wrong.sum() < wrong.size else None
    order = np.argsort(uncertainty, kind="stable")  # most certain first
    rejection = []
    for fraction in REJECTED_FRACTIONS:
        kept = order[: max(1, int(round(correct.size * (1 - fraction))))]
        rejection.append(
            {
                "rejected_fraction": fraction,
                "n_kept": int(kept.size),
                "accuracy": float(correct[kept].mean()),
            }
        )
    return {"uncertainty_auroc": auroc, "rejection": rejection}
