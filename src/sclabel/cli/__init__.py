"""The command line: parse arguments and call the library; nothing else happens here.

Each command is a `Command` record in one of this package's modules (train, predict and
evaluate, models, data, studies, experiment, foundation). Errors a user can fix print one
line and exit 2; `--debug` shows the traceback. Parsing imports no heavy library, so
`sclabel --help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sclabel.cli import data, experiment, foundation, models, predict, studies, train
from sclabel.cli._options import HelpFormatter
from sclabel.errors import InputError

log = logging.getLogger("sclabel")
COMMANDS = {
    command.name: command
    for module in (train, predict, models, data, studies, foundation, experiment)
    for command in module.COMMANDS
}
EXAMPLES = {name: command.example for name, command in COMMANDS.items()}


class _Parser(argparse.ArgumentParser):
    """A usage error (a missing or unknown option, a bad choice or number) prints one line,
    as every other error does, and exits 2; the sub-commands get this parser too."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see: {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sclabel",
        description="Train and apply cell-level classifiers to single-cell RNA-seq data.",
        epilog="Example: " + EXAMPLES["train"],
    )
    parser.add_argument("--version", action="version", version=f"sclabel {_version()}")
    # accepted before or after the command; SUPPRESS keeps a sub-command from resetting them
    common = argparse.ArgumentParser(add_help=False)
    for p, default in ((parser, False), (common, argparse.SUPPRESS)):
        p.add_argument("--debug", action="store_true", default=default, help="show tracebacks")
        p.add_argument("--quiet", action="store_true", default=default, help="no progress/info")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=f"Example: {command.example}",
            formatter_class=HelpFormatter,
            parents=[common],
        )
        command.arguments(p)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sclabel")
    except PackageNotFoundError:  # pragma: no cover - a source tree without an install
        return "unknown"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (a caller may redirect it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not log.handlers:  # our own handler: leave the root logger (and Lightning's) alone
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("sclabel: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        COMMANDS[args.command].run(args)
    except (InputError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
