"""`sclabel demo`: the whole job on real data that every scanpy install has."""

from __future__ import annotations

from pathlib import Path

from sclabel.datasets import pbmc_demo
from sclabel.evaluation.report import ece_text
from sclabel.training.train import train


def run_demo(
    out: str | Path = "sclabel-demo",
    *,
    model: str = "auto",
    max_epochs: int = 40,
    progress: bool = True,
) -> Path:
    """Train on scanpy's pbmc68k_reduced (.raw, `bulk_labels`, stratified 70/15/15), evaluate
    the held-out test cells and write `out/model` and `out/report`."""
    out = Path(out)
    adata = pbmc_demo()
    print(
        f"demo data: scanpy pbmc68k_reduced, {adata.n_obs} cells x {adata.raw.n_vars} genes (.raw)"
    )
    trained = train(
        adata,
        label_key="bulk_labels",
        model=model,
        layer="raw",
        max_epochs=max_epochs,
        progress=progress,
    )
    trained.save(out / "model")
    report = trained.evaluate(
        adata,
        split="test",
        out_dir=out / "report",
        layer="raw",
        title="sclabel demo: pbmc68k_reduced bulk_labels, held-out test cells",
        data_name="scanpy.datasets.pbmc68k_reduced() (its log-normalized .raw)",
        progress=progress,
    )
    m = report.metrics
    print(
        f"test cells: {m['n_cells']}; accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}, "
        f"{ece_text(m)}"
    )
    print(f"model:  {out / 'model'}")
    print(f"report: {out / 'report' / 'report.md'} (figures: {out / 'report' / 'report.html'})")
    return out
