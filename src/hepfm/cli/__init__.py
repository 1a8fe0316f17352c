"""The ``hepfm`` command line: thin subcommands over library functions.

Each subcommand lives in its own module here and exposes ``add_parser(subparsers)`` which sets
``func`` on its parser. User errors (:class:`HepfmInputError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from hepfm._version import __version__
from hepfm.errors import HepfmInputError
from hepfm.io import is_output_error

#: Subcommand modules, in the order ``hepfm --help`` lists them.
SUBCOMMANDS = (
    "generate", "inspect", "convert", "train", "evaluate", "pretrain", "finetune", "embed", "study", "demo",
)


def _registry_names() -> dict[str, str]:
    """Placeholder -> the registered names, for help texts. Imported only when help is shown: the
    registries pull in torch, which every other command start would pay for."""
    from hepfm.data.features import FEATURE_SETS
    from hepfm.data.formats import FORMATS, WRITERS
    from hepfm.heads import HEADS
    from hepfm.models import BACKBONES
    from hepfm.objectives.registry import objective_names

    names = {"backbones": BACKBONES.names(), "heads": HEADS.names(), "features": FEATURE_SETS.names(),
             "objectives": objective_names(), "formats": FORMATS.names(), "writers": WRITERS.names()}
    return {f"{{{key}}}": ", ".join(sorted(value)) for key, value in names.items()}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (``hepfm train: error: ...``, exit 2), pointing at ``--help``.

    Help texts name registries as ``{backbones}``, ``{heads}``, ``{features}``, ``{objectives}``,
    ``{formats}`` or ``{writers}``; ``--help`` fills in the registered names, so a new backbone (or
    head, objective, ...) appears there without anyone editing a help string.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        texts = [a for a in self._actions if a.help and "{" in a.help]
        if texts or (self.description and "{" in self.description):
            names = _registry_names()
            for action in texts:
                action.help = _fill(action.help or "", names)
            self.description = _fill(self.description or "", names) or None
        return super().format_help()


def _fill(text: str, names: dict[str, str]) -> str:
    for key, value in names.items():
        text = text.replace(key, value)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
        code = int(args.func(args) or 0)
        # a reader that left (`| head`) surfaces here, as a quiet exit, rather than in the interpreter's
        # final flush ("Exception ignored ... BrokenPipeError", status 120)
        sys.stdout.flush()
        return code
    except HepfmInputError as err:
        print(f"hepfm {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if isinstance(err, BrokenPipeError):  # e.g. `hepfm inspect --json | head`: the reader left
            _silence_stdout()
            return 0
        if not is_output_error(err):
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"hepfm {args.command}: error: {where}cannot write output ({err.strerror}); "
            "nothing partial was kept",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"hepfm {args.command}: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush cannot fail."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
