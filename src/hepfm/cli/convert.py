"""``hepfm convert IN... --to FORMAT --out OUT``: re-write jet files in another format."""

from __future__ import annotations

import argparse
import json
import sys

from hepfm.cli.inspect import positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from hepfm.data.formats import WRITERS

    p = subparsers.add_parser(
        "convert",
        help="convert jet files between hepfm HDF5, Top Tagging HDF5 and JetClass ROOT, events to NanoAOD",
        description=(
            "Stream jets from one or more files (any supported format, detected from the content) "
            "into one file in another format, e.g. a JetClass-layout ROOT file that weaver-core "
            "reads, or events of reconstructed objects into a NanoAOD-like ROOT file (--to nanoaod). "
            "Bad jets are an error; the output appears only when complete."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="input files or glob patterns")
    p.add_argument("--to", required=True, choices=sorted(WRITERS.names()), help="output format")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--max-jets", type=positive_int, metavar="N", help="convert at most N jets")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from hepfm.data.convert import convert_files

    summary = convert_files(args.inputs, args.out, args.to, max_jets=args.max_jets)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        item = "events" if summary["format"] == "nanoaod" else "jets"
        print(f"wrote {summary['n_jets']} {item} to {summary['out']} ({summary['format']})")
    return 0
