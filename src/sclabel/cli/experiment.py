"""`sclabel experiment ...`: runners that regenerate a study's tables on a dataset.

Each experiment is a sub-command of `experiment` (today: `disease`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sclabel.cli._options import Command, HelpFormatter, open_data, params
from sclabel.errors import InputError

log = logging.getLogger("sclabel")

DISEASE_EXAMPLE = (
    "sclabel experiment disease cohort.h5ad --labels severity state --patient-key patient "
    "--cell-type-key cell_type --pca 50 --show-leak --out disease-report"
)


def arguments(experiment: argparse.ArgumentParser) -> None:
    kinds = experiment.add_subparsers(dest="experiment", required=True)
    disease = kinds.add_parser(
        "disease",
        help="severity/state classifiers: architectures, sizes, wide vs deep, k-means",
        description="The disease-state study's tables with patient-level splits and answers.",
        epilog=f"Example: {DISEASE_EXAMPLE}",
        formatter_class=HelpFormatter,
    )
    for flag, text in (("--debug", "show tracebacks"), ("--quiet", "no progress/info")):
        # SUPPRESS: given here or before the command, never reset by this sub-parser
        disease.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)
    disease.add_argument("input", help=".h5ad with the labels, patients and cell types in obs")
    disease.add_argument("--labels", nargs="+", required=True, help="obs label columns")
    disease.add_argument("--patient-key", help="obs column with patients (splits keep them whole)")
    disease.add_argument("--cell-type-key", required=True, help="obs column with cell types")
    disease.add_argument("--sample-key", help="obs column: unit of patient-level answers")
    source = disease.add_mutually_exclusive_group()
    source.add_argument("--obsm-key", help="train on this obsm embedding instead of genes")
    source.add_argument("--pca", type=int, default=50, help="PCs of expression; 0: the genes")
    disease.add_argument("--layer", help="matrix instead of X: a layer name or 'raw'")
    disease.add_argument("--model", default="ffn", help="model family (ffn: the study's head)")
    disease.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="model hyperparameter, repeatable (e.g. --param hidden=[2048,1024,512])",
    )
    disease.add_argument("--folds", type=int, help="k folds by patient instead of one split")
    disease.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=[0.7, 0.15, 0.15],
        metavar=("TRAIN", "VAL", "TEST"),
    )
    disease.add_argument("--caps", type=int, nargs="+", default=[1000, 3000, 10000])
    disease.add_argument(
        "--totals", type=int, nargs="+", help="wide vs deep totals (default: auto)"
    )
    disease.add_argument("--deep-types", type=int, default=3, help="cell types of a deep subset")
    disease.add_argument("--min-per-type", type=int, default=0, help="usable cells per type")
    disease.add_argument("--sections", nargs="+", help="subset of the report's sections")
    disease.add_argument(
        "--cell-split", action="store_true", help="random cells (patients leak; no patient column)"
    )
    disease.add_argument(
        "--show-leak", action="store_true", help="add a cell-level split next to the patient one"
    )
    disease.add_argument("--quick", action="store_true", help="fewer epochs, smaller k-means")
    disease.add_argument("--max-epochs", type=int, help="default: 30 (--quick: 10)")
    disease.add_argument("--batch-size", type=int)
    disease.add_argument("--lr", type=float)
    disease.add_argument("--patience", type=int)
    disease.add_argument("--seed", type=int, default=0)
    disease.add_argument("--out", required=True, help="folder for report.md, results.json, plots")


def run(args) -> None:
    from sclabel.store.format import Store
    from sclabel.studies.disease import run_disease_experiment

    out = Path(args.out)
    if out.exists() and not out.is_dir():  # before the data is read
        raise InputError(f"{out} is a file; choose a folder name for the disease experiment")
    adata = open_data(args)
    if isinstance(adata, Store):
        raise InputError("sclabel experiment reads an .h5ad (in memory), not a store")
    options = {
        name: getattr(args, name)
        for name in ("max_epochs", "batch_size", "lr", "patience")
        if getattr(args, name) is not None
    }
    if args.param:
        options["model_params"] = params(args.param)
    result = run_disease_experiment(
        adata,
        labels=args.labels,
        patient_key=args.patient_key,
        cell_type_key=args.cell_type_key,
        sample_key=args.sample_key,
        obsm_key=args.obsm_key,
        pca=args.pca or None,
        model=args.model,
        layer=args.layer,
        folds=args.folds,
        fractions=tuple(args.fractions),
        caps=args.caps,
        totals=args.totals,
        deep_types=args.deep_types,
        min_per_type=args.min_per_type,
        cell_split=args.cell_split,
        show_leak=args.show_leak,
        sections=args.sections,
        seed=args.seed,
        out_dir=out,
        quick=args.quick,
        **options,
    )
    print(f"{len(result.sections)} section(s) written to {out / 'report.md'}")


COMMANDS = [
    Command(
        "experiment",
        "Regenerate a study's tables on a dataset.",
        DISEASE_EXAMPLE,
        arguments,
        run,
    )
]
