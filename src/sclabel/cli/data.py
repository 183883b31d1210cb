"""`sclabel store`, `sclabel simulate` and `sclabel prepare`: data for training at scale."""

from __future__ import annotations

import argparse

from sclabel.cli._options import Command, read_anndata
from sclabel.errors import InputError


def store_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help=".h5ad files (read backed) or SOMA experiments")
    p.add_argument("--out", required=True, help="store folder to write")
    p.add_argument("--columns", help="comma-separated obs columns (default: all shared)")
    p.add_argument("--layer", help="matrix to use instead of X: a layer name or 'raw'")
    p.add_argument("--gene-key", help="var column with gene ids ('var_names' for the index)")
    p.add_argument("--obs-filter", help="SOMA inputs: obs value filter")
    p.add_argument("--label-key", help="record a train/val/test split stratified by this")
    p.add_argument("--split-by", help="...grouped by this obs column (e.g. donor)")
    p.add_argument(
        "--split-fractions",
        type=float,
        nargs=3,
        default=[0.7, 0.15, 0.15],
        metavar="F",
        help="train, val and test fractions (of groups with --split-by)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument("--chunk-size", type=int, default=16384, help="cells read at a time")


def run_store(args) -> None:
    from sclabel.io.soma import is_soma, open_soma
    from sclabel.store.build import build_store

    if args.obs_filter and not any(is_soma(p) for p in args.inputs):
        raise InputError("--obs-filter applies to SOMA inputs only")

    def soma(path):
        return open_soma(path, obs_filter=args.obs_filter, layer=args.layer)

    sources = [soma(p) if is_soma(p) else p for p in args.inputs]
    store = build_store(
        sources,
        args.out,
        columns=args.columns.split(",") if args.columns else None,
        layer=args.layer,
        gene_key=args.gene_key,
        label_key=args.label_key,
        split_by=args.split_by,
        split_fractions=tuple(args.split_fractions),
        seed=args.seed,
        chunk_size=args.chunk_size,
        progress=not args.quiet,
    )
    print(f"{store.n_cells} cells x {store.meta['n_genes']} genes, {store.size_gb():.2f} GB")
    print(f"columns: {', '.join(store.columns)}")
    print(f"written to {store.path}")


def simulate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", help="real .h5ad with raw counts, or a saved profile")
    p.add_argument("--cells", type=int, required=True, help="how many cells to write")
    p.add_argument("--out", required=True, help="a store folder, or a file ending .h5ad")
    p.add_argument("--donors", type=int, default=100, help="donors to draw cells from")
    p.add_argument("--cell-type-key", help="obs column of types (default: clustering)")
    p.add_argument("--donor-key", help="obs column of donors (donor effects fitted)")
    p.add_argument("--split-by", help="record a split grouped by donor (store output)")
    p.add_argument("--save-profile", help="also save the fitted profile folder here")
    p.add_argument("--chunk-size", type=int, default=50_000, help="cells generated at a time")
    p.add_argument("--seed", type=int, default=0, help="seed of the fit and the cells")


def run_simulate(args) -> None:
    from sclabel.studies.simulate import simulate

    profile = simulate(
        args.reference,
        args.out,
        cells=args.cells,
        donors=args.donors,
        cell_type_key=args.cell_type_key,
        donor_key=args.donor_key,
        split_by=args.split_by,
        save_profile=args.save_profile,
        chunk_size=args.chunk_size,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"{args.cells} cells of {len(profile.cell_types)} types written to {args.out}")


def prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help=".h5ad (or any format `sclabel train` reads)")
    p.add_argument("--backed", action="store_true", help="open an .h5ad without loading X")
    p.add_argument("--out", required=True, help=".h5ad to write (+ .prepare.json/.md)")
    p.add_argument("--label-key", required=True, help="obs column with cell types")
    p.add_argument("--donor-key", required=True, help="obs column with donors")
    p.add_argument("--primary-key", default="is_primary_data", help="obs column, True/False")
    p.add_argument(
        "--no-primary-filter", action="store_true", help="keep non-primary (duplicate) cells"
    )
    p.add_argument(
        "--assays", action="append", help="keep only this assay; repeat for several; none: all"
    )
    p.add_argument("--assay-key", default="assay", help="obs column with the assay")
    p.add_argument("--min-cells", type=int, default=5000, help="cells per cell type")
    p.add_argument("--min-donors", type=int, default=30, help="donors per cell type")
    p.add_argument(
        "--min-ancestors", type=int, default=7, help="Cell Ontology ancestors per type; 0: off"
    )
    p.add_argument("--ontology-key", help="obs column with CL ids of the labels")
    p.add_argument(
        "--split-fractions",
        type=float,
        nargs=3,
        default=[0.7, 0.15, 0.15],
        metavar=("TRAIN", "VAL", "TEST"),
        help="donor fractions",
    )
    p.add_argument("--split-column", default="split", help="obs column to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the donor split")


def run_prepare(args) -> None:
    from sclabel.studies.prepare import check_out, prepare, write

    check_out(args.out)  # before the (possibly long) read
    adata, report = prepare(
        read_anndata(args),
        label_key=args.label_key,
        donor_key=args.donor_key,
        primary_key=args.primary_key,
        primary_filter=not args.no_primary_filter,
        assays=args.assays,
        assay_key=args.assay_key,
        min_cells=args.min_cells,
        min_donors=args.min_donors,
        min_ancestors=args.min_ancestors,
        ontology_key=args.ontology_key,
        split_fractions=tuple(args.split_fractions),
        seed=args.seed,
        split_column=args.split_column,
    )
    paths = write(adata, report, args.out)
    if not args.quiet:
        print(report.to_markdown())
    print(f"{adata.n_obs} cells of {report.steps[-1]['types_after']} cell types kept")
    print("written to " + ", ".join(map(str, paths)))


COMMANDS = [
    Command(
        "store",
        "Convert .h5ad files or SOMA experiments into an on-disk store.",
        "sclabel store part1.h5ad part2.h5ad --label-key cell_type --split-by donor "
        "--out atlas.store",
        store_arguments,
        run_store,
    ),
    Command(
        "simulate",
        "Write millions of realistic cells, fitted to a real dataset, to disk.",
        "sclabel simulate kang_pbmc_stim.h5ad --cells 5000000 --donors 200 "
        "--split-by donor --out big.store",
        simulate_arguments,
        run_simulate,
    ),
    Command(
        "prepare",
        "Filter a labelled corpus as scTab did and add a donor-grouped split.",
        "sclabel prepare atlas.h5ad --label-key cell_type --donor-key donor_id "
        '--assays "10x 3\' v3" --out prepared.h5ad',
        prepare_arguments,
        run_prepare,
    ),
]
