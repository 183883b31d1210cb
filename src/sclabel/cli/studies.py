"""`sclabel benchmark`, `sclabel scaling` and `sclabel demo`: compare and demonstrate."""

from __future__ import annotations

import argparse

from sclabel.cli._options import (
    Command,
    family_params,
    given,
    harness_options,
    input_options,
    read_anndata,
    split_options,
)
from sclabel.errors import InputError


def _harness(args):
    """The shared cells of a benchmark or learning curve, the training options and params."""
    from sclabel.studies.benchmark import harness_data

    adata = read_anndata(args)
    data = harness_data(
        adata,
        label_key=args.label_key,
        split_by=args.split_by,
        split_key=args.split_key,
        layer=args.layer,
        gene_key=args.gene_key,
        donor_key=args.donor_key,
        seed=args.seed,
        progress=not args.quiet,
    )
    options = given(
        max_epochs=args.max_epochs, patience=args.patience, seed=args.seed, progress=not args.quiet
    )
    return adata, data, options, family_params(args.param)


def benchmark_arguments(p: argparse.ArgumentParser) -> None:
    input_options(p)
    split_options(p)
    p.add_argument(
        "--models",
        default="linear,mlp,tabnet,celltypist,xgboost",
        help="comma-separated FAMILY[+aug][*N]: +aug donor augmentation, *N an N-member ensemble",
    )
    p.add_argument("--ontology", action="store_true", help="add ontology-aware macro-F1")
    p.add_argument("--ontology-key", help="obs column with CL ids of the true labels")
    harness_options(p, "sclabel-benchmark")


def run_benchmark(args) -> None:
    from sclabel.studies.benchmark import (
        ontology_ids_of_test_cells,
        plot_benchmark,
        run_benchmark,
        write_table,
    )

    adata, data, options, params = _harness(args)
    ids = None
    if args.ontology_key is not None:
        ids = ontology_ids_of_test_cells(adata, data, args.ontology_key)
    table = run_benchmark(
        data,
        [v for v in args.models.split(",") if v.strip()],
        train_options=options,
        params=params,
        ontology=args.ontology or ids is not None,
        ontology_ids=ids,
    )
    out = write_table(table, args.out, "benchmark", plot_benchmark, f"benchmark: {args.input}")
    print((out / "benchmark.md").read_text())
    print(f"written to {out}/benchmark.csv, .md, .json and .png")


def scaling_arguments(p: argparse.ArgumentParser) -> None:
    input_options(p)
    split_options(p)
    p.add_argument("--model", default="tabnet", help="family, e.g. tabnet or mlp+aug")
    p.add_argument("--fractions", default="0.15,0.3,0.5,0.7,1", help="of the training part")
    p.add_argument("--by", choices=["donor", "cell"], default="donor", help="subsample unit")
    p.add_argument("--widths", help="comma-separated widths (tabnet n_d, mlp width)")
    harness_options(p, "sclabel-scaling")


def run_scaling(args) -> None:
    from sclabel.studies.benchmark import Variant, write_table
    from sclabel.studies.scaling import plot_learning_curve, run_scaling

    try:
        fractions = [float(f) for f in args.fractions.split(",")]
        widths = [int(w) for w in args.widths.split(",")] if args.widths else None
    except ValueError as err:
        raise InputError(f"--fractions/--widths must be comma-separated numbers: {err}") from err
    _, data, options, params = _harness(args)
    table = run_scaling(
        data,
        args.model,
        fractions=fractions,
        by=args.by,
        widths=widths,
        params=params.get(Variant.parse(args.model).family),
        train_options=options,
    )
    title = f"learning curve: {args.input}"
    out = write_table(table, args.out, "learning_curve", plot_learning_curve, title)
    print((out / "learning_curve.md").read_text())
    print(f"written to {out}/learning_curve.csv, .md, .json and .png")


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="sclabel-demo", help="folder for the model and report")
    p.add_argument("--model", default="auto", help="model family (default auto)")
    p.add_argument("--max-epochs", type=int, default=40, help="most epochs to train")


def run_demo(args) -> None:
    from sclabel.studies.demo import run_demo

    run_demo(args.out, model=args.model, max_epochs=args.max_epochs, progress=not args.quiet)


COMMANDS = [
    Command(
        "benchmark",
        "Train several model families on one split; one table + plot.",
        "sclabel benchmark atlas.h5ad --label-key cell_type --split-by donor "
        "--models 'linear,mlp,tabnet,tabnet+aug,tabnet*5,celltypist,xgboost' --out bench/",
        benchmark_arguments,
        run_benchmark,
    ),
    Command(
        "scaling",
        "Learning curves: nested training subsamples x model widths.",
        "sclabel scaling atlas.h5ad --label-key cell_type --split-by donor --model tabnet "
        "--fractions 0.15,0.3,0.5,0.7,1 --widths 32,64,128 --out curve/",
        scaling_arguments,
        run_scaling,
    ),
    Command(
        "demo",
        "Train, evaluate and report on scanpy's PBMC data (no download).",
        "sclabel demo --out sclabel-demo",
        demo_arguments,
        run_demo,
    ),
]
