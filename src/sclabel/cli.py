"""The command line: parse arguments, call the same functions as the Python API.

Errors a user can fix print one line and exit 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sclabel import cli_experiment, cli_foundation
from sclabel.errors import InputError

log = logging.getLogger("sclabel")

EXAMPLES = {
    "train": "sclabel train atlas.h5ad --label-key cell_type --split-by donor --out my-model",
    "predict": "sclabel predict query.h5ad --model my-model --out labels.csv",
    "evaluate": "sclabel evaluate atlas.h5ad --model my-model --split test --out report/",
    "info": "sclabel info my-model --export-split split.csv",
    "benchmark": "sclabel benchmark atlas.h5ad --label-key cell_type --split-by donor "
    "--models 'linear,mlp,tabnet,tabnet+aug,tabnet*5,celltypist,xgboost' --out bench/",
    "scaling": "sclabel scaling atlas.h5ad --label-key cell_type --split-by donor --model tabnet "
    "--fractions 0.15,0.3,0.5,0.7,1 --widths 32,64,128 --out curve/",
    "prepare": "sclabel prepare atlas.h5ad --label-key cell_type --donor-key donor_id "
    '--assays "10x 3\' v3" --out prepared.h5ad',
    "demo": "sclabel demo --out sclabel-demo",
    "simulate": "sclabel simulate kang_pbmc_stim.h5ad --cells 5000000 --donors 200 "
    "--split-by donor --out big.store",
    "store": "sclabel store part1.h5ad part2.h5ad --label-key cell_type --split-by donor "
    "--out atlas.store",
    "import-celltypist": "sclabel import-celltypist Immune_All_Low.pkl --out immune-model",
    **cli_foundation.EXAMPLES,
    **cli_experiment.EXAMPLES,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sclabel",
        description="Train and apply cell-level classifiers to single-cell RNA-seq data.",
        epilog="Example: " + EXAMPLES["train"],
    )
    # accepted before or after the command; SUPPRESS keeps a sub-command from resetting them
    common = argparse.ArgumentParser(add_help=False)
    for p, default in ((parser, False), (common, argparse.SUPPRESS)):
        p.add_argument("--debug", action="store_true", default=default, help="show tracebacks")
        p.add_argument("--quiet", action="store_true", default=default, help="no progress/info")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"Example: {EXAMPLES[name]}",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            parents=[common],
        )

    def input_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "input",
            help=".h5ad, 10x directory, 10x .h5, .csv, .tsv, a SOMA experiment or a store",
        )
        p.add_argument(
            "--obs-filter", help="SOMA input: obs value filter, e.g. \"tissue == 'blood'\""
        )
        p.add_argument("--layer", help="matrix to use instead of X: a layer name or 'raw'")
        p.add_argument("--gene-key", help="var column with gene ids ('var_names' for the index)")
        p.add_argument("--backed", action="store_true", help="stream an .h5ad from disk")

    def split_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--label-key", required=True, help="obs column with the labels")
        p.add_argument("--split-by", help="obs column with donors/samples for a grouped split")
        p.add_argument("--split-key", help="obs column of train/val/test (from sclabel prepare)")
        p.add_argument(
            "--donor-key", help="obs column with donors for --augment (default: split-by)"
        )

    def harness_options(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("--param", action="append", default=[], metavar="FAMILY.NAME=VALUE")
        p.add_argument("--max-epochs", type=int, help="default: 30")
        p.add_argument("--patience", type=int, help="default: 5")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", default=out, help="folder for the table (.csv/.md/.json) and plot")

    train = command("train", "Train a classifier on a labelled dataset.")
    input_options(train)
    split_options(train)
    train.add_argument(
        "--model",
        default="mlp",
        help="model family: linear, mlp, ffn, tabnet, celltypist, bert or perceiver",
    )
    train.add_argument(
        "--from",
        dest="from_dir",
        help="bert/perceiver: a pretrained folder (sclabel pretrain, or Geneformer's)",
    )
    train.add_argument(
        "--freeze-layers", type=int, help="bert/perceiver: freeze embeddings + first N layers"
    )
    train.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="model hyperparameter, repeatable (e.g. --param depth=3 --param dropout=0.1)",
    )
    train.add_argument(
        "--also-label",
        action="append",
        default=[],
        metavar="KEY",
        help="another label column with its own head on the shared encoder (multi-task; "
        "repeatable), e.g. --label-key severity --also-label state",
    )
    train.add_argument(
        "--task-weights",
        type=float,
        nargs="+",
        metavar="W",
        help="multi-task loss weights, --label-key first (default: 1 each)",
    )
    train.add_argument(
        "--obsm-key", help="train on this obsm embedding (scGPT, scVI, sclabel embed) not genes"
    )
    train.add_argument(
        "--pca", type=int, help="train on N principal components fitted on training cells"
    )
    train.add_argument(
        "--ensemble", type=int, default=1, help="train N members (seeds seed..seed+N-1), average"
    )
    train.add_argument(
        "--augment", action="store_true", help="scTab's donor-difference augmentation"
    )
    train.add_argument("--out", default="sclabel-model", help="checkpoint directory to write")
    train.add_argument("--report", help="also write an evaluation report of the test split here")
    train.add_argument("--export-split", help="also write the train/val/test split as CSV")
    train.add_argument("--max-epochs", type=int, default=30)
    train.add_argument("--patience", type=int, default=5)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--batch-size", type=int, help="default: training cells / 20, clipped to [32, 256]"
    )
    train.add_argument("--lr", type=float, help="default 3e-3 (tabnet: 0.005, as in scTab)")
    train.add_argument("--weight-decay", type=float, help="default 0.01 (tabnet: 0.05)")
    train.add_argument("--grad-clip", type=float, help="max gradient norm (tabnet: 1.0)")
    train.add_argument("--accelerator", default="cpu", help="cpu, gpu, cuda, mps or auto")
    train.add_argument("--devices", default="1", help="number of devices or 'auto'")
    train.add_argument("--precision", default="32-true", help="e.g. 32-true, bf16-mixed, 16-mixed")
    train.add_argument("--strategy", default="auto", help="e.g. ddp (with --devices N), auto")
    train.add_argument(
        "--num-nodes", type=int, default=1, help="machines (torchrun/SLURM set the ranks)"
    )
    train.add_argument("--workers", type=int, default=1, help="store input: reader threads")
    train.add_argument(
        "--parallel-members",
        action="store_true",
        help="with --ensemble and --devices N: train members one per device, not with DDP",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue a killed run (state kept per epoch)"
    )
    from sclabel.config import LOSSES

    train.add_argument(
        "--loss", choices=LOSSES, help="training loss (default weighted_ce; ce with --upsample)"
    )
    train.add_argument("--focal-gamma", type=float, help="focal loss exponent (default 2)")
    train.add_argument(
        "--upsample",
        type=float,
        nargs="?",
        const=1.0,
        metavar="TARGET",
        help="repeat training cells of classes below TARGET x the largest class (bare: 1)",
    )
    train.add_argument(
        "--cv",
        type=int,
        metavar="K",
        help="K-fold cross-validation (by --split-by groups): cv.json + cv.md in --out, no model",
    )

    store = command("store", "Convert .h5ad files or SOMA experiments into an on-disk store.")
    store.add_argument("inputs", nargs="+", help=".h5ad files (read backed) or SOMA experiments")
    store.add_argument("--out", required=True, help="store folder to write")
    store.add_argument("--columns", help="comma-separated obs columns (default: all shared)")
    store.add_argument("--layer", help="matrix to use instead of X: a layer name or 'raw'")
    store.add_argument("--gene-key", help="var column with gene ids ('var_names' for the index)")
    store.add_argument("--obs-filter", help="SOMA inputs: obs value filter")
    store.add_argument("--label-key", help="record a train/val/test split stratified by this")
    store.add_argument("--split-by", help="...grouped by this obs column (e.g. donor)")
    store.add_argument(
        "--split-fractions", type=float, nargs=3, default=[0.7, 0.15, 0.15], metavar="F"
    )
    store.add_argument("--seed", type=int, default=0)
    store.add_argument("--chunk-size", type=int, default=16384, help="cells read at a time")

    simulate = command(
        "simulate", "Write millions of realistic cells, fitted to a real dataset, to disk."
    )
    simulate.add_argument("reference", help="real .h5ad with raw counts, or a saved profile")
    simulate.add_argument("--cells", type=int, required=True, help="how many cells to write")
    simulate.add_argument("--out", required=True, help="a store folder, or a file ending .h5ad")
    simulate.add_argument("--donors", type=int, default=100)
    simulate.add_argument("--cell-type-key", help="obs column of types (default: clustering)")
    simulate.add_argument("--donor-key", help="obs column of donors (donor effects fitted)")
    simulate.add_argument("--split-by", help="record a split grouped by donor (store output)")
    simulate.add_argument("--save-profile", help="also save the fitted profile folder here")
    simulate.add_argument("--chunk-size", type=int, default=50_000)
    simulate.add_argument("--seed", type=int, default=0)

    predict = command("predict", "Predict labels for every cell of a dataset.")
    input_options(predict)
    predict.add_argument("--model", required=True, help="checkpoint directory")
    predict.add_argument("--out", required=True, help=".csv, .tsv, .parquet or .h5ad to write")
    predict.add_argument("--unknown-threshold", type=float, help="label cells below it 'unknown'")
    predict.add_argument("--min-gene-coverage", type=float, help="default: the model's (0.5)")
    predict.add_argument("--chunk-size", type=int, default=8192, help="rows read at a time")
    predict.add_argument("--key-added", default="sclabel", help="prefix of the obs/obsm keys")
    predict.add_argument("--task", help="multi-task model: the label column to predict")
    predict.add_argument(
        "--resume", action="store_true", help="continue an interrupted streaming prediction"
    )
    predict.add_argument(
        "--int8", action="store_true", help="int8 dynamic quantization (faster on CPU)"
    )

    evaluate = command("evaluate", "Score a model against known labels and write a report.")
    input_options(evaluate)
    evaluate.add_argument("--model", required=True, help="checkpoint directory")
    evaluate.add_argument("--label-key", help="obs column with true labels (default: training's)")
    evaluate.add_argument("--split", choices=["train", "val", "test"], help="only these cells")
    evaluate.add_argument("--out", default="sclabel-report", help="report folder to write")
    evaluate.add_argument(
        "--ontology", action="store_true", help="add Cell Ontology-aware scores (offline CL)"
    )
    evaluate.add_argument("--ontology-key", help="obs column with CL ids of the true labels")
    evaluate.add_argument("--group-by", help="obs column (e.g. tissue) for a per-group table")
    evaluate.add_argument("--unknown-threshold", type=float)
    evaluate.add_argument("--min-gene-coverage", type=float)

    bench = command("benchmark", "Train several model families on one split; one table + plot.")
    input_options(bench)
    split_options(bench)
    bench.add_argument(
        "--models",
        default="linear,mlp,tabnet,celltypist,xgboost",
        help="comma-separated FAMILY[+aug][*N]: +aug donor augmentation, *N an N-member ensemble",
    )
    bench.add_argument("--ontology", action="store_true", help="add ontology-aware macro-F1")
    bench.add_argument("--ontology-key", help="obs column with CL ids of the true labels")
    harness_options(bench, "sclabel-benchmark")

    scaling = command("scaling", "Learning curves: nested training subsamples x model widths.")
    input_options(scaling)
    split_options(scaling)
    scaling.add_argument("--model", default="tabnet", help="family, e.g. tabnet or mlp+aug")
    scaling.add_argument("--fractions", default="0.15,0.3,0.5,0.7,1", help="of the training part")
    scaling.add_argument("--by", choices=["donor", "cell"], default="donor", help="subsample unit")
    scaling.add_argument("--widths", help="comma-separated widths (tabnet n_d, mlp width)")
    harness_options(scaling, "sclabel-scaling")

    info = command("info", "Describe a saved model.")
    info.add_argument("model", help="checkpoint directory")
    info.add_argument("--export-split", help="write the training split as CSV")
    info.add_argument("--json", action="store_true", help="print config.json and metrics")

    convert = command(
        "import-celltypist",
        "Convert a CellTypist model (.pkl) into a sclabel checkpoint; no pickle code is run.",
    )
    convert.add_argument("model", help="CellTypist model file (.pkl)")
    convert.add_argument("--out", required=True, help="checkpoint directory to write")

    prepare = command(
        "prepare", "Filter a labelled corpus as scTab did and add a donor-grouped split."
    )
    prepare.add_argument("input", help=".h5ad (or any format `sclabel train` reads)")
    prepare.add_argument("--backed", action="store_true", help="open an .h5ad without loading X")
    prepare.add_argument("--out", required=True, help=".h5ad to write (+ .prepare.json/.md)")
    prepare.add_argument("--label-key", required=True, help="obs column with cell types")
    prepare.add_argument("--donor-key", required=True, help="obs column with donors")
    prepare.add_argument("--primary-key", default="is_primary_data", help="obs column, True/False")
    prepare.add_argument(
        "--no-primary-filter", action="store_true", help="keep non-primary (duplicate) cells"
    )
    prepare.add_argument(
        "--assays", action="append", help="keep only this assay; repeat for several; none: all"
    )
    prepare.add_argument("--assay-key", default="assay", help="obs column with the assay")
    prepare.add_argument("--min-cells", type=int, default=5000, help="cells per cell type")
    prepare.add_argument("--min-donors", type=int, default=30, help="donors per cell type")
    prepare.add_argument(
        "--min-ancestors", type=int, default=7, help="Cell Ontology ancestors per type; 0: off"
    )
    prepare.add_argument("--ontology-key", help="obs column with CL ids of the labels")
    prepare.add_argument(
        "--split-fractions",
        type=float,
        nargs=3,
        default=[0.7, 0.15, 0.15],
        metavar=("TRAIN", "VAL", "TEST"),
        help="donor fractions",
    )
    prepare.add_argument("--split-column", default="split", help="obs column to write")
    prepare.add_argument("--seed", type=int, default=0)

    demo = command("demo", "Train, evaluate and report on scanpy's PBMC data (no download).")
    demo.add_argument("--out", default="sclabel-demo", help="folder for the model and report")
    demo.add_argument("--model", default="mlp", help="model family")
    demo.add_argument("--max-epochs", type=int, default=40)
    cli_foundation.add_parsers(command, input_options)
    cli_experiment.add_parsers(command, input_options)
    return parser


def _params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--param expects NAME=VALUE, got {pair!r}")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value  # a bare string such as gelu
    return params


def _model_params(args) -> dict:
    """--param pairs plus the pretrained families' --from and --freeze-layers."""
    params = _params(args.param)
    for name, value in (("from_dir", args.from_dir), ("freeze_layers", args.freeze_layers)):
        if value is not None:
            if args.model not in ("bert", "perceiver"):
                raise InputError(f"--{name.replace('_', '-')} is for --model bert or perceiver")
            params[name] = value
    return params


def _given(**options):
    """Only the options the user set, so a model family's own defaults are not overridden."""
    return {name: value for name, value in options.items() if value is not None}


def _devices(value: str):
    return value if value == "auto" else int(value)


def _read_anndata(args):
    """INPUT as an AnnData (file, or SOMA selection); a store is for train and predict only."""
    from sclabel.data.io import open_input
    from sclabel.data.store import Store

    filter_ = getattr(args, "obs_filter", None)  # prepare has no --obs-filter
    data = open_input(args.input, backed=args.backed, obs_filter=filter_)
    if isinstance(data, Store):
        msg = f"sclabel {args.command} reads .h5ad or SOMA input; a store works with train/predict"
        raise InputError(msg)
    return data


def _predict_options(args) -> dict:
    return {
        "layer": args.layer,
        "gene_key": args.gene_key,
        "unknown_threshold": args.unknown_threshold,
        "min_gene_coverage": args.min_gene_coverage,
        "progress": not args.quiet,
    }


def _run_train(args) -> None:
    from sclabel import train
    from sclabel.data.io import open_input
    from sclabel.data.store import Store
    from sclabel.training.api import CrossValidation, cross_validate

    if args.cv is not None:  # refused before the input is read and any training is spent
        given = [f for f in ("resume", "report", "export_split", "split_key") if getattr(args, f)]
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            msg = f"--cv makes its own splits and keeps no model; drop {flags}"
            raise InputError(msg)
        if args.cv < 2:
            raise InputError(f"--cv needs at least 2 folds, got {args.cv}")
        CrossValidation.check_out(args.out)
    data = open_input(args.input, backed=args.backed, obs_filter=args.obs_filter)
    if isinstance(data, Store) and args.report:
        raise InputError("--report needs an .h5ad; test metrics of a store run are in metrics.json")
    if isinstance(data, Store) and args.cv is not None:
        raise InputError("--cv reads an .h5ad; a store's split is fixed when the store is built")
    options = dict(
        split_by=args.split_by,
        donor_key=args.donor_key,
        augment=args.augment,
        model=args.model,
        model_params=_model_params(args),
        layer=args.layer,
        gene_key=args.gene_key,
        obsm_key=args.obsm_key,
        pca=args.pca,
        ensemble=args.ensemble,
        **_given(
            max_epochs=args.max_epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            grad_clip=args.grad_clip,
            patience=args.patience,
            seed=args.seed,
            accelerator=args.accelerator,
            devices=_devices(args.devices),
            precision=args.precision,
            strategy=args.strategy,
            num_nodes=args.num_nodes,
            parallel_members=args.parallel_members or None,
            progress=not args.quiet,
            loss=args.loss,
            focal_gamma=args.focal_gamma,
            upsample=args.upsample,
            task_weights=args.task_weights,
        ),
    )
    label_keys = [args.label_key, *args.also_label]
    if args.cv is not None:
        result = cross_validate(data, label_key=label_keys, k=args.cv, **options)
        if result.is_main_process:
            result.save(args.out)
            print(result.to_markdown())
            print(f"written to {args.out}/cv.json and cv.md")
        return
    model = train(
        data,
        label_key=label_keys,
        split_key=args.split_key,
        loader={"workers": args.workers} if isinstance(data, Store) else None,
        checkpoint_dir=Path(args.out).with_name(f".{Path(args.out).name}.training"),
        resume=args.resume,
        **options,
    )
    if not model.is_main_process:
        return
    model.save(args.out)
    print(f"model saved to {args.out}")
    if args.export_split:
        model.export_split(args.export_split)
        print(f"split written to {args.export_split}")
    if args.report:
        report = model.evaluate(
            open_input(args.input, backed=args.backed, obs_filter=args.obs_filter),
            split="test",
            out_dir=args.report,
            layer=args.layer,
            gene_key=args.gene_key,
            progress=not args.quiet,
        )
        print(f"test macro-F1 {report.metrics['macro_f1']:.4f}; report in {report.path}/report.md")


def _run_predict(args) -> None:
    import anndata as ad

    from sclabel import Model
    from sclabel._atomic import atomic_path
    from sclabel.data.io import open_input
    from sclabel.data.store import Store
    from sclabel.predict_stream import predict_to_file

    out = Path(args.out)
    if out.suffix.lower() not in {".csv", ".tsv", ".parquet", ".h5ad"}:
        raise InputError(f"--out must end in .csv, .tsv, .parquet or .h5ad, got {out.name}")
    model = Model.load(args.model)
    if args.int8:
        model = model.quantized()
    data = open_input(args.input, backed=args.backed, obs_filter=args.obs_filter)
    if isinstance(data, Store) or args.backed or args.resume:
        result = predict_to_file(
            model,
            data,
            out,
            key_added=args.key_added,
            chunk_size=args.chunk_size,
            resume=args.resume,
            task=args.task,
            **_predict_options(args),
        )
        print(f"{result.n_cells} cells predicted ({result.coverage:.1%} gene coverage)")
        print(result.label_counts.sort_values(ascending=False).head(10).to_string())
        print(f"written to {out}")
        return
    adata = data
    prediction = model.predict(
        adata, chunk_size=args.chunk_size, task=args.task, **_predict_options(args)
    )
    if out.suffix.lower() == ".h5ad":
        if adata.isbacked:  # copying a huge matrix is not what streaming is for
            adata = ad.AnnData(obs=adata.obs[[]].copy())
            log.info("backed input: %s holds the annotations without X", out)
        prediction.to_adata(adata, key_added=args.key_added)
        with atomic_path(out) as tmp:
            adata.write_h5ad(tmp)
    else:
        prediction.to_table(out)
    counts = prediction.to_frame()["label"].value_counts()
    print(f"{len(prediction.obs_names)} cells predicted ({prediction.coverage:.1%} gene coverage)")
    print(counts.head(10).to_string())
    print(f"written to {out}")


def _run_evaluate(args) -> None:
    from sclabel import Model

    model = Model.load(args.model)
    report = model.evaluate(
        _read_anndata(args),
        label_key=args.label_key,
        split=args.split,
        out_dir=args.out,
        ontology=args.ontology,
        ontology_key=args.ontology_key,
        group_by=args.group_by,
        **_predict_options(args),
    )
    m = report.metrics
    print(f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, ECE {m['ece']:.4f}")
    if "ontology" in m:
        print(f"Cell Ontology-aware macro-F1 {m['ontology']['macro_f1']:.4f}")
    print(f"report written to {report.path}/report.md")


def _harness_data(args):
    """Normalized train/val/test matrices for the benchmark and scaling commands."""
    from sclabel.config import DataConfig
    from sclabel.training.api import load_training_data

    adata = _read_anndata(args)
    config = DataConfig(
        label_key=args.label_key,
        split_by=args.split_by,
        split_key=args.split_key,
        layer=args.layer,
        gene_key=args.gene_key,
    )
    data = load_training_data(
        adata, config, seed=args.seed, donor_key=args.donor_key, progress=not args.quiet
    )
    options = _given(
        max_epochs=args.max_epochs, patience=args.patience, seed=args.seed, progress=not args.quiet
    )
    params: dict[str, dict] = {}
    for name, value in _params(args.param).items():
        family, dot, key = name.partition(".")
        if not dot:
            raise InputError(f"--param here expects FAMILY.NAME=VALUE, got {name!r}")
        params.setdefault(family, {})[key] = value
    return adata, data, options, params


def _run_benchmark(args) -> None:
    from sclabel.benchmark import plot_benchmark, run_benchmark, write_table

    adata, data, options, params = _harness_data(args)
    ids = None
    if args.ontology_key is not None:
        if args.ontology_key not in adata.obs.columns:
            raise InputError(f"obs column {args.ontology_key!r} not found")
        test_cells = data.split.index[data.split.to_numpy() == "test"]
        ids = adata.obs.loc[test_cells, args.ontology_key].astype(object).to_numpy()
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


def _run_scaling(args) -> None:
    from sclabel.benchmark import Variant, write_table
    from sclabel.scaling import plot_learning_curve, run_scaling

    _, data, options, params = _harness_data(args)
    try:
        fractions = [float(f) for f in args.fractions.split(",")]
        widths = [int(w) for w in args.widths.split(",")] if args.widths else None
    except ValueError as err:
        raise InputError(f"--fractions/--widths must be comma-separated numbers: {err}") from err
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


def _run_info(args) -> None:
    from sclabel import Model

    model = Model.load(args.model)
    if args.json:
        print(json.dumps({"config": model.config_dict(), "metrics": model.metrics}, indent=2))
    else:
        print(model.summary())
    if args.export_split:
        model.export_split(args.export_split)
        print(f"split written to {args.export_split}")


def _run_prepare(args) -> None:
    from sclabel.prepare import check_out, prepare, write

    check_out(args.out)  # before the (possibly long) read
    adata, report = prepare(
        _read_anndata(args),
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


def _run_store(args) -> None:
    from sclabel.data.soma import is_soma, open_soma
    from sclabel.data.store_build import build_store

    sources = [open_soma(p, obs_filter=args.obs_filter) if is_soma(p) else p for p in args.inputs]
    if args.obs_filter and not any(is_soma(p) for p in args.inputs):
        raise InputError("--obs-filter applies to SOMA inputs only")
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
    size = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())
    print(f"{store.n_cells} cells x {store.meta['n_genes']} genes, {size / 1e9:.2f} GB")
    print(f"columns: {', '.join(store.columns)}")
    print(f"written to {store.path}")


def _run_simulate(args) -> None:
    from tqdm.auto import tqdm

    from sclabel import read
    from sclabel.data.h5ad_writer import write_h5ad_chunks
    from sclabel.data.store_build import build_store
    from sclabel.scale_data import GeneratedSource, ScaleProfile, fit_profile, generate

    if args.cells < 1:
        raise InputError("--cells must be at least 1")
    reference = Path(args.reference)
    if (reference / "profile.json").exists():
        profile = ScaleProfile.load(reference)
    else:
        adata = read(reference)
        profile = fit_profile(
            adata, cell_type_key=args.cell_type_key, donor_key=args.donor_key, seed=args.seed
        )
    if args.save_profile:
        profile.save(args.save_profile)
    options = {"n_donors": args.donors, "seed": args.seed}
    if args.out.lower().endswith(".h5ad"):
        if args.split_by:
            raise InputError("--split-by records a split in a store; drop it for .h5ad output")
        chunks = generate(profile, args.cells, chunk_size=args.chunk_size, **options)
        bar = tqdm(total=args.cells, unit="cell", desc="simulating", disable=args.quiet)
        columns = GeneratedSource.obs_columns
        write_h5ad_chunks(
            ((X, obs[columns]) for X, obs in chunks if bar.update(X.shape[0]) or True),
            profile.var,
            args.out,
        )
        bar.close()
    else:
        build_store(
            [GeneratedSource(profile, args.cells, **options)],
            args.out,
            label_key="cell_type" if args.split_by else None,
            split_by=args.split_by,
            seed=args.seed,
            chunk_size=args.chunk_size,
            progress=not args.quiet,
        )
    print(f"{args.cells} cells of {len(profile.cell_types)} types written to {args.out}")


def _run_demo(args) -> None:
    from sclabel.demo import run_demo

    run_demo(args.out, model=args.model, max_epochs=args.max_epochs, progress=not args.quiet)


def _run_import_celltypist(args) -> None:
    from sclabel.celltypist_import import import_celltypist

    model = import_celltypist(args.model)
    model.save(args.out)
    print(f"{model!r} written to {args.out}")


RUNNERS = {
    "train": _run_train,
    "predict": _run_predict,
    "evaluate": _run_evaluate,
    "info": _run_info,
    "benchmark": _run_benchmark,
    "scaling": _run_scaling,
    "prepare": _run_prepare,
    "demo": _run_demo,
    "store": _run_store,
    "simulate": _run_simulate,
    "import-celltypist": _run_import_celltypist,
    **cli_foundation.RUNNERS,
    **cli_experiment.RUNNERS,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not log.handlers:  # our own handler: leave the root logger (and Lightning's) alone
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("sclabel: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        RUNNERS[args.command](args)
    except (InputError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
