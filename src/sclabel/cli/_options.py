"""What every command shares: the command record, option groups and argument parsing helpers.

Commands are `Command` records (name, help, example, the options it adds, what it runs);
`sclabel.cli` assembles the parser from them. Option groups (input, split, hardware,
training, harness) are defined once here and added to each command that takes them, so a
flag means the same thing and says the same help everywhere.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass

from sclabel.errors import InputError


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    example: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only when there is one to show: not "(default: None)", and not a
    second one when the help text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input", help=".h5ad, 10x directory, 10x .h5, .csv, .tsv, a SOMA experiment or a store"
    )
    p.add_argument("--obs-filter", help="SOMA input: obs value filter, e.g. \"tissue == 'blood'\"")
    p.add_argument("--layer", help="matrix to use instead of X: a layer name or 'raw'")
    p.add_argument("--gene-key", help="var column with gene ids ('var_names' for the index)")
    p.add_argument("--backed", action="store_true", help="stream an .h5ad from disk")


def values_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input",
        dest="values",
        choices=["counts", "log1p", "log2", "normalized"],
        help="what the matrix holds, instead of detecting it; normalized: per-cell-scaled "
        "values that are not logged (CPM, TPM, FPKM), rescaled per cell and log1p'd",
    )


def split_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-key", required=True, help="obs column with the labels")
    p.add_argument("--split-by", help="obs column with donors/samples for a grouped split")
    p.add_argument("--split-key", help="obs column of train/val/test (from sclabel prepare)")
    p.add_argument("--donor-key", help="obs column with donors for --augment (default: split-by)")


def hardware_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accelerator", default="cpu", help="cpu, gpu, cuda, mps or auto")
    p.add_argument("--devices", default="1", help="number of devices or 'auto'")
    p.add_argument("--precision", default="32-true", help="e.g. 32-true, bf16-mixed, 16-mixed")
    p.add_argument("--strategy", default="auto", help="e.g. ddp (with --devices N), auto")
    p.add_argument("--num-nodes", type=int, default=1, help="machines (torchrun/SLURM set ranks)")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: OMP_NUM_THREADS, else 1 for models under 20M "
        "parameters and every core above; benchmarks/RESULTS.md 'Threads')",
    )


def epoch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-epochs", type=int, help="most epochs to train (default 30)")
    p.add_argument("--patience", type=int, help="epochs without a better val F1 (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, weights and batches")


def harness_options(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="FAMILY.NAME=VALUE",
        help="a family's hyperparameter, repeatable (e.g. --param tabnet.n_d=64)",
    )
    epoch_options(p)
    p.add_argument("--out", default=out, help="folder for the table (.csv/.md/.json) and plot")


def params(pairs: list[str]) -> dict:
    """--param NAME=VALUE pairs; values are JSON where they parse (numbers, lists, ...)."""
    parsed = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--param expects NAME=VALUE, got {pair!r}")
        try:
            parsed[name] = json.loads(value)
        except json.JSONDecodeError:
            parsed[name] = value  # a bare string such as gelu
    return parsed


def family_params(pairs: list[str]) -> dict[str, dict]:
    """--param FAMILY.NAME=VALUE pairs, grouped by family."""
    grouped: dict[str, dict] = {}
    for name, value in params(pairs).items():
        family, dot, key = name.partition(".")
        if not dot:
            raise InputError(f"--param here expects FAMILY.NAME=VALUE, got {name!r}")
        grouped.setdefault(family, {})[key] = value
    return grouped


def given(**options):
    """Only the options the user set, so a model family's own defaults are not overridden."""
    return {name: value for name, value in options.items() if value is not None}


def devices(value: str):
    return value if value == "auto" else int(value)


def hardware(args) -> dict:
    return {
        "accelerator": args.accelerator,
        "devices": devices(args.devices),
        "precision": args.precision,
        "strategy": args.strategy,
        "num_nodes": args.num_nodes,
        "threads": args.threads,
    }


def open_data(args):
    """INPUT as the library opens it: a store, a SOMA selection or a file (backed or not)."""
    from sclabel.io.read import open_input

    backed, obs_filter = getattr(args, "backed", False), getattr(args, "obs_filter", None)
    layer = getattr(args, "layer", None)
    return open_input(args.input, backed=backed, obs_filter=obs_filter, layer=layer)


def read_anndata(args):
    """INPUT as an AnnData (file, or SOMA selection); a store is for train and predict only."""
    from sclabel.store.format import Store

    data = open_data(args)
    if isinstance(data, Store):
        msg = f"sclabel {args.command} reads .h5ad or SOMA input; a store works with train/predict"
        raise InputError(msg)
    return data


def unknown_threshold(value: str):
    """--unknown-threshold: a probability, or "auto"/"auto:P" (chosen on the validation
    cells to hold precision P, 0.95 by default)."""
    if value.startswith("auto"):
        return value
    try:
        return float(value)
    except ValueError:
        msg = (
            "--unknown-threshold takes a number between 0 and 1, 'auto' or 'auto:P' "
            f"(e.g. auto:0.99), got {value!r}"
        )
        raise argparse.ArgumentTypeError(msg) from None


def answer_options(p: argparse.ArgumentParser) -> None:
    """How probabilities become answers: shared by predict and evaluate."""
    values_option(p)
    p.add_argument(
        "--unknown-threshold",
        type=unknown_threshold,
        help="label cells whose confidence is below it 'unknown'; 'auto': the threshold that "
        "kept 95%% precision on the model's validation cells ('auto:0.99': 99%%)",
    )
    p.add_argument("--min-gene-coverage", type=float, help="default: the model's (0.5)")
    p.add_argument(
        "--uncalibrated",
        action="store_true",
        help="the network's own probabilities, not temperature-scaled ones",
    )


def set_options(p: argparse.ArgumentParser) -> None:
    """Conformal prediction sets: shared by predict and annotate."""
    p.add_argument(
        "--coverage",
        type=float,
        help="add each cell's conformal prediction set holding the truth with this "
        "probability (e.g. 0.9); sets of 2+ or 0 classes mark uncertain cells",
    )
    p.add_argument(
        "--sets",
        choices=["weighted", "split"],
        help="how sets reach --coverage: 'weighted' (default) re-weights the model's "
        "validation cells to the query's confidences, so coverage holds on a query from "
        "another plate or donor; 'split': plain split conformal, exact when the query is "
        "like the validation cells",
    )


def set_values(args) -> dict:
    if args.sets is not None and args.coverage is None:
        raise InputError(f"--sets {args.sets} says how prediction sets are made: add --coverage "
                         "(e.g. 0.9)")  # fmt: skip
    return {"coverage": args.coverage, "sets": args.sets or "weighted"}


def predict_options(args) -> dict:
    return {
        "layer": args.layer,
        "gene_key": args.gene_key,
        "unknown_threshold": args.unknown_threshold,
        "min_gene_coverage": args.min_gene_coverage,
        "values": args.values,
        "calibrated": not args.uncalibrated,
        "progress": not args.quiet,
    }
