"""`sclabel train`: a classifier (or a k-fold cross-validation) from a labelled dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from sclabel.cli._options import (
    Command,
    epoch_options,
    given,
    hardware,
    hardware_options,
    input_options,
    open_data,
    params,
    split_options,
    values_option,
)
from sclabel.config import LOSSES
from sclabel.errors import InputError


def arguments(p: argparse.ArgumentParser) -> None:
    input_options(p)
    values_option(p)
    genes = p.add_mutually_exclusive_group()
    genes.add_argument("--genes", help="train on these genes only: a file, one id per line")
    genes.add_argument(
        "--genes-from",
        metavar="QUERY",
        help="train on the genes this dataset (.h5ad) shares with the input, e.g. the query "
        "the model is for, so it covers that query fully",
    )
    split_options(p)
    p.add_argument(
        "--model",
        default="auto",
        help="model family: auto (default: fits linear, celltypist-style LR and mlp and keeps "
        "the best on validation cells), linear, mlp, ffn, tabnet, celltypist, bert or perceiver",
    )
    p.add_argument(
        "--from",
        dest="from_dir",
        help="bert/perceiver: a pretrained folder (sclabel pretrain, or Geneformer's)",
    )
    p.add_argument(
        "--tokenizer",
        help="bert/perceiver: the folder with the gene vocabulary when --from has none "
        "(Geneformer: its token_dictionary*.pkl and gene_median_dictionary*.pkl)",
    )
    p.add_argument(
        "--freeze-layers", type=int, help="bert/perceiver: freeze embeddings + first N layers"
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="model hyperparameter, repeatable (e.g. --param depth=3 --param dropout=0.1)",
    )
    p.add_argument(
        "--also-label",
        action="append",
        default=[],
        metavar="KEY",
        help="another label column with its own head on the shared encoder (multi-task; "
        "repeatable), e.g. --label-key severity --also-label state",
    )
    p.add_argument(
        "--task-weights",
        type=float,
        nargs="+",
        metavar="W",
        help="multi-task loss weights, --label-key first (default: 1 each)",
    )
    p.add_argument(
        "--obsm-key", help="train on this obsm embedding (scGPT, scVI, sclabel embed) not genes"
    )
    p.add_argument(
        "--pca", type=int, help="train on N principal components fitted on training cells"
    )
    p.add_argument(
        "--ensemble", type=int, default=1, help="train N members (seeds seed..seed+N-1), average"
    )
    p.add_argument("--augment", action="store_true", help="scTab's donor-difference augmentation")
    p.add_argument("--out", default="sclabel-model", help="checkpoint directory to write")
    p.add_argument("--report", help="also write an evaluation report of the test split here")
    p.add_argument("--export-split", help="also write the train/val/test split as CSV")
    epoch_options(p)
    p.add_argument(
        "--batch-size", type=int, help="default: training cells / 20, clipped to [32, 256]"
    )
    p.add_argument("--lr", type=float, help="learning rate (default 3e-3; tabnet 0.005, as scTab)")
    p.add_argument(
        "--weight-decay", type=float, help="AdamW weight decay (default 0.01; tabnet 0.05)"
    )
    p.add_argument("--grad-clip", type=float, help="max gradient norm (default none; tabnet 1.0)")
    hardware_options(p)
    p.add_argument("--workers", type=int, default=1, help="store input: reader threads")
    p.add_argument(
        "--parallel-members",
        action="store_true",
        help="with --ensemble and --devices N: train members one per device, not with DDP",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue a killed run (state kept per epoch)"
    )
    p.add_argument(
        "--loss", choices=LOSSES, help="training loss (default weighted_ce; ce with --upsample)"
    )
    p.add_argument("--focal-gamma", type=float, help="focal loss exponent (default 2)")
    p.add_argument(
        "--upsample",
        type=float,
        nargs="?",
        const=1.0,
        metavar="TARGET",
        help="repeat training cells of classes below TARGET x the largest class (bare: 1)",
    )
    p.add_argument(
        "--cv",
        type=int,
        metavar="K",
        help="K-fold cross-validation (by --split-by groups): cv.json + cv.md in --out, no model",
    )


def model_params(args) -> dict:
    """--param pairs plus the pretrained families' --from and --freeze-layers."""
    from sclabel.models import check_family

    values = params(args.param)
    flags = {"from_dir": "from", "tokenizer": "tokenizer", "freeze_layers": "freeze-layers"}
    for name, flag in flags.items():
        if (value := getattr(args, name)) is not None:
            if args.model == "auto":  # the default compares families that take no --from
                raise InputError(f"--{flag} is for --model bert or perceiver; name the family")
            check_family(args.model, pretrained_option=flag)
            values[name] = value
    return values


def run(args) -> None:
    from sclabel.evaluation.report import check_report_dir
    from sclabel.io.atomic import check_dir
    from sclabel.store.format import Store
    from sclabel.training.cv import check_cv_request, cross_validate
    from sclabel.training.train import train

    out = Path(args.out)
    # every output is judged before the input is read and any training is spent
    if args.cv is not None:
        check_cv_request(args.cv, out, resume=args.resume, report=args.report,
                         export_split=args.export_split, split_key=args.split_key)  # fmt: skip
    else:
        check_dir(out, marker="config.json", what="checkpoint")
    if args.report:
        check_report_dir(args.report)
    options = dict(
        split_by=args.split_by,
        donor_key=args.donor_key,
        augment=args.augment,
        model=args.model,
        model_params=model_params(args),
        layer=args.layer,
        gene_key=args.gene_key,
        values=args.values,
        genes=args.genes or args.genes_from,
        obsm_key=args.obsm_key,
        pca=args.pca,
        ensemble=args.ensemble,
        **hardware(args),
        **given(
            max_epochs=args.max_epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            grad_clip=args.grad_clip,
            patience=args.patience,
            seed=args.seed,
            parallel_members=args.parallel_members or None,
            progress=not args.quiet,
            loss=args.loss,
            focal_gamma=args.focal_gamma,
            upsample=args.upsample,
            task_weights=args.task_weights,
        ),
    )
    data = open_data(args)
    from_store = isinstance(data, Store)
    if from_store and args.report:
        raise InputError("--report needs an .h5ad; test metrics of a store run are in metrics.json")
    label_keys = [args.label_key, *args.also_label]
    if args.cv is not None:
        result = cross_validate(data, label_key=label_keys, k=args.cv, **options)
        if result.is_main_process:
            result.save(out)
            print(result.to_markdown())
            print(f"written to {out}/cv.json and cv.md")
        return
    model = train(
        data,
        label_key=label_keys,
        split_key=args.split_key,
        loader={"workers": args.workers} if from_store else None,
        checkpoint_dir=out.with_name(f".{out.name}.training"),
        resume=args.resume,
        out=out,
        data_name=Path(args.input).name,
        **options,
    )
    if not model.is_main_process:
        return
    print(f"model saved to {out}")
    if args.export_split:
        model.export_split(args.export_split)
        print(f"split written to {args.export_split}")
    if args.report:
        report = model.evaluate(
            open_data(args),
            split="test",
            out_dir=args.report,
            layer=args.layer,
            gene_key=args.gene_key,
            progress=not args.quiet,
        )
        print(f"test macro-F1 {report.metrics['macro_f1']:.4f}; report in {report.path}/report.md")


COMMANDS = [
    Command(
        "train",
        "Train a classifier on a labelled dataset.",
        "sclabel train atlas.h5ad --label-key cell_type --split-by donor --out my-model",
        arguments,
        run,
    )
]
