"""`sclabel info`, `import-celltypist` and `import-sctab`: look at and bring in saved models."""

from __future__ import annotations

import argparse
import json

from sclabel.cli._options import Command


def info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint directory")
    p.add_argument("--export-split", help="write the training split as CSV")
    p.add_argument("--json", action="store_true", help="print config.json and metrics")
    p.add_argument("--short", action="store_true", help="a few lines instead of the model card")


def run_info(args) -> None:
    from sclabel.inference.model import Model

    model = Model.load(args.model)
    if args.json:
        print(json.dumps({"config": model.config_dict(), "metrics": model.metrics}, indent=2))
    elif args.short:
        print(model.summary())
    else:
        print(model.card())
    if args.export_split:
        model.export_split(args.export_split)
        print(f"split written to {args.export_split}")


def import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="CellTypist model file (.pkl)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")


def run_import_celltypist(args) -> None:
    from sclabel.inference.celltypist import import_celltypist
    from sclabel.io.atomic import check_dir

    check_dir(args.out, marker="config.json", what="checkpoint")
    model = import_celltypist(args.model)
    model.save(args.out)
    print(f"{model!r} written to {args.out}")


def sctab_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="scTab Lightning checkpoint (.ckpt)")
    p.add_argument("--genes", required=True, help="scTab's var.parquet (feature_id in order)")
    p.add_argument("--classes", required=True, help="scTab's cell_type.parquet (label column)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")


def run_import_sctab(args) -> None:
    from sclabel.inference.sctab import import_sctab
    from sclabel.io.atomic import check_dir

    check_dir(args.out, marker="config.json", what="checkpoint")
    model = import_sctab(args.checkpoint, genes=args.genes, classes=args.classes)
    model.save(args.out)
    print(f"{model!r} written to {args.out}")


def zoo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "get"], help="list the models, or get one")
    p.add_argument("name", nargs="?", help="model name for get, e.g. Immune_All_Low")
    p.add_argument("--cache", help="cache folder (default: $SCLABEL_CACHE or ~/.cache/sclabel)")
    p.add_argument("--index-url", help="the model index (default: CellTypist's models.json)")


def run_zoo(args) -> None:
    from sclabel.errors import InputError
    from sclabel.inference import zoo

    if args.action == "list":
        if args.name:
            raise InputError("`sclabel models list` takes no name; use `sclabel models get NAME`")
        table = zoo.list_models(url=args.index_url, cache=args.cache)
        table["details"] = table["details"].str.slice(0, 60)
        print(table.to_string(index=False))
        return
    if not args.name:
        raise InputError("name the model to get, e.g. `sclabel models get Immune_All_Low`")
    folder = zoo.fetch(args.name, url=args.index_url, cache=args.cache)
    print(f"{args.name}: checkpoint at {folder}")
    print(f"use it with: sclabel predict QUERY.h5ad --model celltypist:{folder.name}")


COMMANDS = [
    Command(
        "info",
        "Describe a saved model.",
        "sclabel info my-model --export-split split.csv",
        info_arguments,
        run_info,
    ),
    Command(
        "import-celltypist",
        "Convert a CellTypist model (.pkl) into a sclabel checkpoint; no pickle code is run.",
        "sclabel import-celltypist Immune_All_Low.pkl --out immune-model",
        import_arguments,
        run_import_celltypist,
    ),
    Command(
        "import-sctab",
        "Convert an scTab checkpoint (.ckpt) into a sclabel tabnet checkpoint; no pickle "
        "code is run.",
        "sclabel import-sctab scTab/run5/val_f1_macro_epoch=41.ckpt --genes var.parquet "
        "--classes cell_type.parquet --out sctab-model",
        sctab_arguments,
        run_import_sctab,
    ),
    Command(
        "models",
        "CellTypist's published models by name: list them, or download, verify and convert "
        "one (kept in a cache; then --model celltypist:NAME works anywhere).",
        "sclabel models get Immune_All_Low",
        zoo_arguments,
        run_zoo,
    ),
]
