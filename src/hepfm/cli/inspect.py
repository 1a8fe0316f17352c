"""``hepfm inspect FILE... [--json] [--skip-bad] [--max-jets N]``: summarise jet files."""

from __future__ import annotations

import argparse
import json
import sys


def positive_int(text: str) -> int:
    """argparse ``type`` for counts such as ``--max-jets`` (shared with ``hepfm convert``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "inspect",
        help="summarise jet files: format, jets, classes, multiplicities, jet masses, bad jets",
        description=(
            "Summarise jet files (hepfm HDF5, Top Tagging HDF5, JetClass ROOT; the format is detected "
            "from the content). Bad jets (NaN/inf, no constituents, E < |p|, invalid labels, ...) are "
            "an error unless --skip-bad is given."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="files or glob patterns (quote the patterns)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--skip-bad", action="store_true", help="skip bad jets and report how many per reason")
    p.add_argument("--max-jets", type=positive_int, metavar="N", help="read at most N jets of each file")
    p.add_argument("--format", metavar="NAME", help="force a format (one of {formats})")
    p.add_argument(
        "--chunk-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="jets per read (default 10000; bounds memory)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from hepfm.data.inspect import CHUNK_SIZE, inspect_files, render_text
    from hepfm.io import json_default

    summary = inspect_files(
        args.files,
        skip_bad=args.skip_bad,
        max_jets=args.max_jets,
        chunk_size=args.chunk_size or CHUNK_SIZE,
        format=args.format,
    )
    if args.json:
        json.dump(summary, sys.stdout, indent=2, default=json_default)
        sys.stdout.write("\n")
    else:
        print(render_text(summary))
    return 0
