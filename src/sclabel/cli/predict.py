"""`sclabel annotate`, `predict` and `evaluate`: apply a saved model to a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from sclabel.cli._options import (
    Command,
    answer_options,
    input_options,
    open_data,
    predict_options,
    read_anndata,
    set_options,
    set_values,
)
from sclabel.config import EXPLAIN_METHODS


def predict_arguments(p: argparse.ArgumentParser) -> None:
    input_options(p)
    p.add_argument(
        "--model",
        "--models",
        dest="model",
        required=True,
        action="append",
        help="checkpoint directory, or celltypist:NAME (a published CellTypist model, fetched "
        "once); several (repeated or comma-separated) give their consensus with an agreement "
        "score; map:DIR adds DIR's reference mapping as a member",
    )
    p.add_argument(
        "--out",
        required=True,
        help=".csv, .tsv or .parquet (a table), or .h5ad (the input AnnData with the answers "
        "added; from a store: the cells and answers)",
    )
    answer_options(p)
    set_options(p)
    p.add_argument(
        "--ontology-threshold",
        type=float,
        help="classes named by Cell Ontology terms: also give the deepest term whose summed "
        "probability reaches this (e.g. 0.8: 'T cell' when unsure between CD4 and CD8)",
    )
    p.add_argument(
        "--levels", type=int, default=0, help="with CL classes: N coarse level columns too"
    )
    p.add_argument(
        "--majority-voting",
        action="store_true",
        help="also give each cell its over-cluster's majority label (clusters from "
        "--cluster-key, the query's obsp['connectivities'], or built from its PCA)",
    )
    p.add_argument("--cluster-key", help="obs column of clusters to vote in (implies voting)")
    p.add_argument("--resolution", type=float, help="Leiden resolution (default: by size, 5-30)")
    p.add_argument(
        "--min-prop",
        type=float,
        default=0.0,
        help="a cluster whose majority holds less of its cells is 'Heterogeneous'",
    )
    p.add_argument(
        "--report",
        metavar="DIR",
        help="also write DIR/report.html (self-contained: embedding by label, confidence and "
        "agreement, marker genes per label, vote table) and DIR/report.md",
    )
    p.add_argument("--chunk-size", type=int, default=8192, help="rows read at a time")
    p.add_argument("--key-added", default="sclabel", help="prefix of the obs/obsm keys")
    p.add_argument("--task", help="multi-task model: the label column to predict")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted prediction into --out"
    )
    p.add_argument("--int8", action="store_true", help="int8 dynamic quantization (faster on CPU)")


def run_predict(args) -> None:
    from sclabel.inference.engine import predict_to_file
    from sclabel.inference.outputs import check_output

    check_output(args.out)  # before the model and the data are read
    sets = set_values(args)
    if args.report:
        from sclabel.io.atomic import check_dir

        check_dir(args.report, marker="report.html", what="report")
    result = predict_to_file(
        load_members(args.model, int8=args.int8, calibrated=not args.uncalibrated),
        open_data(args),
        args.out,
        key_added=args.key_added,
        chunk_size=args.chunk_size,
        resume=args.resume,
        task=args.task,
        ontology_threshold=args.ontology_threshold,
        levels=args.levels,
        majority_voting=args.majority_voting,
        cluster_key=args.cluster_key,
        resolution=args.resolution,
        min_prop=args.min_prop,
        report=args.report,
        **sets,
        **predict_options(args),
    )
    print(f"{result.n_cells:,} cells predicted{coverage_note(result.coverage)}")
    print(result.label_counts.sort_values(ascending=False).head(10).to_string())
    if result.vote:
        print(result.vote)
    print(sets_note(result.sets), end="")
    print(f"written to {result.path}")
    if args.report:
        print(f"report: {Path(args.report) / 'report.html'}")


def sets_note(sets: dict | None) -> str:
    """'90% prediction sets: weighted conformal ...' and a newline, or nothing."""
    from sclabel.inference.conformal import headline

    return "" if sets is None else headline(sets) + "\n"


def coverage_note(coverage: float | None) -> str:
    """' (97.5% of the model's genes found)', or nothing for a model on an embedding."""
    return "" if coverage is None else f" ({coverage:.1%} of the model's genes found)"


def load_members(specs: list[str], *, int8: bool = False, calibrated: bool = True):
    """--model values as the engine's members: a folder is its classifier, map:FOLDER its
    reference mapping; one folder alone is just that model."""
    from sclabel.inference.members import Member
    from sclabel.inference.model import Model

    folders = [s.strip() for spec in specs for s in spec.split(",") if s.strip()]
    members = []
    for folder in folders:
        mapping = folder.startswith("map:")
        path = folder.removeprefix("map:")
        model = Model.load(path)
        if int8:
            model = model.quantized()
        name = Path(path).name.removeprefix("celltypist:") + ("_map" if mapping else "")
        kind = "map" if mapping else "classify"
        members.append(Member(name, model, kind=kind, calibrated=calibrated))
    if len(members) == 1 and members[0].kind == "classify":
        return members[0].model
    return members


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    input_options(p)
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--label-key", help="obs column with true labels (default: training's)")
    p.add_argument("--split", choices=["train", "val", "test"], help="only these cells")
    p.add_argument("--out", default="sclabel-report", help="report folder to write")
    p.add_argument(
        "--ontology", action="store_true", help="add Cell Ontology-aware scores (offline CL)"
    )
    p.add_argument("--ontology-key", help="obs column with CL ids of the true labels")
    p.add_argument("--group-by", help="obs column (e.g. tissue) for a per-group table")
    answer_options(p)


def run_evaluate(args) -> None:
    from sclabel.evaluation.report import check_report_dir, ece_text
    from sclabel.inference.model import Model

    check_report_dir(args.out)
    model = Model.load(args.model)
    report = model.evaluate(
        read_anndata(args),
        label_key=args.label_key,
        split=args.split,
        out_dir=args.out,
        ontology=args.ontology,
        ontology_key=args.ontology_key,
        group_by=args.group_by,
        data_name=args.input,
        **predict_options(args),
    )
    m = report.metrics
    print(f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, {ece_text(m, 4)}")
    if "ontology" in m:
        print(f"Cell Ontology-aware macro-F1 {m['ontology']['macro_f1']:.4f}")
    print(f"report written to {report.path}/report.md")


def annotate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help=".h5ad to annotate (written back in place unless --out)")
    p.add_argument("--model", required=True, help="checkpoint directory or celltypist:NAME")
    p.add_argument("--out", help=".h5ad to write instead of updating INPUT")
    p.add_argument("--layer", help="matrix to use instead of X: a layer name or 'raw'")
    p.add_argument("--gene-key", help="var column with gene ids ('var_names' for the index)")
    answer_options(p)
    set_options(p)
    p.add_argument("--majority-voting", action="store_true", help="add over-cluster votes")
    p.add_argument("--cluster-key", help="obs column of clusters to vote in (implies voting)")
    p.add_argument("--key-added", default="sclabel", help="prefix of the obs/obsm keys")
    p.add_argument(
        "--celltypist-names",
        action="store_true",
        help="also write CellTypist's columns (predicted_labels, conf_score, majority_voting, "
        "over_clustering), so notebooks written for CellTypist keep working",
    )
    p.add_argument("--report", metavar="DIR", help="also write DIR/report.html and report.md")


def run_annotate(args) -> None:
    import pandas as pd

    from sclabel.inference.annotate import annotate_file

    sets = set_values(args)
    prediction, path = annotate_file(
        args.input,
        args.model,
        out=args.out,
        majority_voting=args.majority_voting,
        cluster_key=args.cluster_key,
        key_added=args.key_added,
        celltypist_names=args.celltypist_names,
        report=args.report,
        **sets,
        **predict_options(args),
    )
    counts = pd.Series(prediction.labels).value_counts()
    print(f"{len(prediction.labels):,} cells annotated{coverage_note(prediction.coverage)}")
    print(counts.head(10).to_string())
    if prediction.vote is not None:
        print(prediction.vote.describe(prediction.labels))
    print(sets_note(prediction.sets), end="")
    print(f"written to {path} (obs {args.key_added}_label, {args.key_added}_confidence, ...)")
    if args.report:
        print(f"report: {Path(args.report) / 'report.html'}")


COMMANDS = [
    Command(
        "annotate",
        "Annotate an .h5ad in one step: labels, confidence and probabilities into the file.",
        "sclabel annotate query.h5ad --model celltypist:Immune_All_Low --majority-voting",
        annotate_arguments,
        run_annotate,
    ),
    Command(
        "predict",
        "Predict labels for every cell of a dataset.",
        "sclabel predict query.h5ad --model my-model --out labels.csv",
        predict_arguments,
        run_predict,
    ),
    Command(
        "evaluate",
        "Score a model against known labels and write a report.",
        "sclabel evaluate atlas.h5ad --model my-model --split test --out report/",
        evaluate_arguments,
        run_evaluate,
    ),
]


def explain_arguments(p: argparse.ArgumentParser) -> None:
    input_options(p)
    p.add_argument("--model", required=True, help="checkpoint directory (any gene-input family)")
    p.add_argument("--out", required=True, help="folder for the table and plots")
    p.add_argument(
        "--method",
        choices=EXPLAIN_METHODS,
        default="auto",
        help="mask: TabNet's feature mask; gradient: input x gradient of the predicted label "
        "(any gene-input model); auto: the mask where the model has one",
    )
    p.add_argument("--top", type=int, default=10, help="genes per predicted label in the table")
    p.add_argument("--plot-top", type=int, default=4, help="genes per label in the plots")
    p.add_argument(
        "--max-cells",
        type=int,
        default=20000,
        help="explain a random subset of at most this many cells (importances are cells x "
        "genes floats); 0 for all",
    )
    p.add_argument("--min-gene-coverage", type=float, help="default: the model's (0.5)")


def run_explain(args) -> None:
    import numpy as np

    from sclabel.inference.explain import explain
    from sclabel.inference.model import Model
    from sclabel.io.atomic import check_dir

    check_dir(args.out, marker="top_genes.csv", what="explain output")
    model = Model.load(args.model)
    adata = read_anndata(args)
    if args.max_cells and adata.n_obs > args.max_cells:
        rows = np.sort(np.random.default_rng(0).choice(adata.n_obs, args.max_cells, replace=False))
        print(f"explaining {args.max_cells:,} of {adata.n_obs:,} cells (--max-cells)")
        adata = adata[rows]
    explanation = explain(model, adata, method=args.method, layer=args.layer,
                          gene_key=args.gene_key, min_gene_coverage=args.min_gene_coverage,
                          progress=not args.quiet)  # fmt: skip
    written = explanation.write(args.out, n=args.top, n_plot=args.plot_top)
    top = explanation.top_genes(min(args.top, 5), symbols=True)
    print(f"{len(explanation.labels):,} cells explained ({explanation.method})")
    for label, genes in sorted(top.items(), key=lambda item: str(item[0])):
        print(f"  {label}: {', '.join(genes)}")
    print("written: " + ", ".join(str(path) for path in written.values()))


def reference_arguments(p: argparse.ArgumentParser) -> None:
    input_options(p)
    p.add_argument("--model", required=True, help="checkpoint directory to add the index to")
    p.add_argument("--label-key", help="obs column with the reference labels (default: training's)")
    p.add_argument("--k", type=int, default=15, help="neighbours a query cell is labelled by")
    p.add_argument("--out", help="write the model with its index here (default: --model)")


def run_reference(args) -> None:
    from sclabel.inference.model import Model
    from sclabel.io.atomic import check_dir

    out = args.out or args.model
    check_dir(out, marker="config.json", what="checkpoint")
    model = Model.load(args.model)
    index = model.build_reference(read_anndata(args), label_key=args.label_key, k=args.k,
                                  layer=args.layer, gene_key=args.gene_key,
                                  progress=not args.quiet)  # fmt: skip
    model.save(out)
    print(f"{index.info['cells']} reference cells of {len(index.classes)} classes indexed "
          f"({index.space}, {index.points.shape[1]} dimensions) in {out}")  # fmt: skip


def map_arguments(p: argparse.ArgumentParser) -> None:
    input_options(p)
    p.add_argument("--model", required=True, help="checkpoint directory with a reference index")
    p.add_argument("--out", required=True, help=".csv, .tsv, .parquet or .h5ad to write")
    p.add_argument("--k", type=int, help="neighbours per query cell (default: the index's)")
    p.add_argument("--min-gene-coverage", type=float, help="default: the model's (0.5)")
    p.add_argument("--key-added", default="sclabel_map", help="prefix of the obs/obsm keys")


def run_map(args) -> None:
    from sclabel.inference.model import Model
    from sclabel.inference.outputs import check_output

    check_output(args.out)
    model = Model.load(args.model)
    adata = read_anndata(args)
    prediction = model.map(
        adata,
        k=args.k,
        layer=args.layer,
        gene_key=args.gene_key,
        min_gene_coverage=args.min_gene_coverage,
        progress=not args.quiet,
    )
    prediction.write(args.out, adata=adata, key_added=args.key_added)
    novel = int(prediction.extra["novel"].sum())
    print(f"{len(prediction.obs_names)} cells mapped; {novel} far from every reference cell "
          f"(mapping score < 0.05); written to {args.out}")  # fmt: skip


COMMANDS += [
    Command(
        "explain",
        "Which genes drive each predicted label: a table, a heat map and a dot plot.",
        "sclabel explain query.h5ad --model my-model --out explain/",
        explain_arguments,
        run_explain,
    ),
    Command(
        "reference",
        "Index a labelled reference in a model's space, for sclabel map.",
        "sclabel reference atlas.h5ad --model my-model --label-key cell_type",
        reference_arguments,
        run_reference,
    ),
    Command(
        "map",
        "Label query cells by their nearest reference cells, with a mapping score.",
        "sclabel map query.h5ad --model my-model --out mapped.csv",
        map_arguments,
        run_map,
    ),
]
