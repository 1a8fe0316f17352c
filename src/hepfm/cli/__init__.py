"""The ``hepfm`` command line: thin subcommands over library functions.

Each subcommand lives in its own module here and exposes ``add_parser(subparsers)`` which sets
``func`` on its parser. User errors (:class:`HepfmInputError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from hepfm import __version__
from hepfm.errors import HepfmInputError

#: Subcommand modules, in the order ``hepfm --help`` lists them.
SUBCOMMANDS = ("generate", "inspect", "convert", "train", "evaluate", "pretrain", "finetune", "embed", "study", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hepfm",
        description="Foundation models for particle physics: generate jets, pretrain, finetune, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"hepfm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"hepfm.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # its thread-count notice is noise here
    try:
        return int(args.func(args) or 0)
    except HepfmInputError as err:
        print(f"hepfm {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"hepfm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
