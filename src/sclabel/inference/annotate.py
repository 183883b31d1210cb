"""Annotate in one call, as CellTypist users expect.

    sclabel.annotate(adata, "my-model")                       # answers in adata.obs/obsm/uns
    sclabel.annotate(adata, "celltypist:Immune_All_Low", majority_voting=True,
                     celltypist_names=True)                  # predicted_labels, conf_score, ...
    sclabel annotate query.h5ad --model my-model [--out annotated.h5ad]

The answers are `Prediction.to_adata`'s keys (`{key_added}_label`, `_confidence`, ...,
`obsm[{key_added}_probabilities]`); `celltypist_names` also writes them under CellTypist's
column names, so notebooks written for `celltypist.annotate(...).to_adata()` keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad

from sclabel.inference.prediction import Prediction

# sclabel answer -> the obs column CellTypist's AnnotationResult.to_adata writes
CELLTYPIST_NAMES = {
    "label": "predicted_labels",
    "confidence": "conf_score",
    "majority_voting": "majority_voting",
    "over_clustering": "over_clustering",
}


def annotate(
    adata: ad.AnnData,
    model,
    *,
    majority_voting: bool = False,
    cluster_key: str | None = None,
    key_added: str = "sclabel",
    celltypist_names: bool = False,
    **options: Any,
) -> Prediction:
    """Predict every cell of `adata` with `model` (a `Model`, a checkpoint folder or
    "celltypist:NAME") and write the answers into `adata` in place; returns the Prediction.
    `majority_voting` / `cluster_key` add each over-cluster's majority label; `options` are
    `Model.predict`'s (unknown_threshold, coverage, layer, gene_key, values, ...)."""
    from sclabel.inference.model import Model

    model = model if isinstance(model, Model) else Model.load(model)
    prediction = model.predict(adata, **options)
    if majority_voting or cluster_key is not None:
        prediction.majority_vote(adata, cluster_key=cluster_key, layer=options.get("layer"))
    prediction.to_adata(adata, key_added=key_added)
    if celltypist_names:
        for ours, theirs in CELLTYPIST_NAMES.items():
            column = f"{key_added}_{ours}"
            if column in adata.obs:
                adata.obs[theirs] = adata.obs[column]
    return prediction


def annotate_file(path: str | Path, model, *, out: str | Path | None = None,
                  report: str | Path | None = None, **options):  # fmt: skip
    """`sclabel annotate`: read an .h5ad, annotate it, write it to `out` (default: in
    place, through a temporary file, so an interrupted run leaves the input as it was);
    `report`: a folder for report.html and report.md (`Prediction.to_report`)."""
    from sclabel.inference.model import Model
    from sclabel.inference.outputs import check_output
    from sclabel.io.atomic import atomic_path, check_dir
    from sclabel.io.read import read

    target = Path(out or path)
    if target.suffix.lower() != ".h5ad":
        from sclabel.errors import InputError

        raise InputError(f"annotate writes an .h5ad; got {target.name} (use predict for tables)")
    check_output(target)
    if report is not None:
        check_dir(report, marker="report.html", what="report")
    model = model if isinstance(model, Model) else Model.load(model)
    adata = read(path)
    prediction = annotate(adata, model, **options)
    with atomic_path(target) as tmp:
        adata.write_h5ad(tmp)
    if report is not None:
        prediction.to_report(report, adata=adata, model=model, layer=options.get("layer"),
                             gene_key=options.get("gene_key"))  # fmt: skip
    return prediction, target
