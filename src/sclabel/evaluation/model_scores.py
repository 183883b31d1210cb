"""A model scored on a labelled AnnData: its predictions against the truth, as a report.

`Model.evaluate` calls `evaluate_model`: pick the cells (all, or the model's own train/val/test
split), check the columns asked for, predict with the head for the label column, and hand
predictions and truth to `evaluate` (report.py); it says aloud when evaluated cells were
ones the model trained on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from sclabel.data.obs import read_labels
from sclabel.errors import InputError
from sclabel.evaluation.report import Report, evaluate

log = logging.getLogger("sclabel")


def evaluate_model(
    model,
    adata,
    *,
    label_key: str | None = None,
    split: str | None = None,
    out_dir: str | Path | None = None,
    title: str = "sclabel evaluation",
    ontology: bool = False,
    ontology_key: str | None = None,
    group_by: str | None = None,
    data_name: str | None = None,
    **predict_options: Any,
) -> Report:
    """Predict `adata` and score it against `obs[label_key]` (default: the training key).

    `split="test"` (or "val"/"train") keeps only the cells this model's saved split put
    there, matched by cell name, so the demo and the CLI can score held-out cells.
    `ontology` adds Cell Ontology-aware scores (`ontology_key`: an obs column of CL ids);
    `group_by` an obs column (e.g. tissue) for a per-group breakdown. `data_name` names the
    data in the report's provenance (default: the AnnData's file, when it has one).
    """
    about = model.about()
    path = data_name or getattr(adata, "filename", None)
    about["data"] = None if path is None else str(path)
    about["split"] = split
    label_key = label_key or model.data_config.label_key
    # a label column the model has a head for is scored with that head
    if label_key in model.tasks:
        predict_options.setdefault("task", label_key)
    if split is not None:
        if split not in {"train", "val", "test"}:
            raise InputError(f"split must be train, val or test, got {split!r}")
        cells = model.split.index[model.split["split"] == split].astype(str)
        keep = adata.obs_names.isin(cells)
        if not keep.any():
            msg = f"no cell of this AnnData is in the model's {split!r} split; omit --split"
            raise InputError(msg)
        adata = adata[keep]
        if "group" in model.split:
            held = model.split.loc[model.split["split"] == split, "group"].astype(str)
            about["split_groups"] = sorted(set(held))
    else:
        about["training_cells_evaluated"] = warn_if_training_cells(model, adata.obs_names)
    truth = read_labels(adata.obs, label_key)
    for key in (ontology_key, group_by):
        if key is not None and key not in adata.obs.columns:
            msg = f"obs column {key!r} not found; available: {list(adata.obs.columns)}"
            raise InputError(msg)
    prediction = model.predict(adata, **predict_options)
    sections = None
    if out_dir is not None:  # the query side of report.html: embedding, marker genes
        from sclabel.data.sampling import sample_rows
        from sclabel.evaluation.annotation import MAX_CELLS, annotation_sections

        rows = sample_rows(adata.n_obs, MAX_CELLS)
        bound = model.input_spec.bind(
            adata,
            layer=predict_options.get("layer"),
            gene_key=predict_options.get("gene_key"),
            values=predict_options.get("values"),
        )
        sections = annotation_sections(prediction.subset(rows), bound, model, rows)[1:]
    return evaluate(
        prediction,
        truth.to_numpy(),
        out_dir=out_dir,
        title=title,
        ontology=ontology or ontology_key is not None,
        ontology_ids=None if ontology_key is None else adata.obs[ontology_key].to_numpy(),
        groups=None if group_by is None else adata.obs[group_by].to_numpy(),
        about=about,
        sections=sections,
    )


def warn_if_training_cells(model, names) -> int:
    """Scores on the cells a model was trained on are optimistic: say so, with the count
    (returned)."""
    if not len(model.split) or "split" not in model.split:
        return 0
    trained = model.split.index[model.split["split"].astype(str) == "train"].astype(str)
    n = int(pd.Index(names).astype(str).isin(trained).sum())
    if n:
        log.warning(
            "%d of the %d evaluated cells were in this model's training split (split.csv): "
            "scores on them are optimistic; pass --split test (split='test') to score "
            "the held-out cells only",
            n,
            len(names),
        )
    return n
