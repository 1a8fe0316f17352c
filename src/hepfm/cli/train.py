"""``hepfm train``: supervised tagger training (YAML preset + a few flags + dotted overrides)."""

from __future__ import annotations

import argparse

from hepfm.cli.config_flags import add_config_flags, config_delta


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a supervised jet tagger",
        description="Train a tagger on labeled jets. Re-running with the same --out resumes exactly from the "
        "last checkpoint. Presets: cpu-small (default), part-toptag (the official ParT recipe; GPU).",
        epilog="example: hepfm train --data train.h5 --val val.h5 --backbone part --out runs/part "
        "-o train.max_steps=2000 -o train.optim.lr=5e-4",
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", default="cpu-small", help="preset name or YAML file")
    add_config_flags(p, "train")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run")
    p.add_argument("--restart", action="store_true",
                   help="discard the run already in --out (its checkpoints, metrics, weights) and start over")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hepfm.errors import HepfmInputError
    from hepfm.workflows.classify import train

    if args.no_resume and not args.restart and (Path(args.out) / "checkpoints" / "last.pt").exists():
        raise HepfmInputError("run directory already holds a run (drop --no-resume to continue it)", args.out)
    summary = train(args.preset, config_delta(args, "train"), args.out, restart=args.restart,
                    progress=not args.no_progress)
    print(
        f"trained {summary['steps']} steps in {summary['seconds']:.0f} s "
        f"({summary['jets_per_second']:.0f} jets/s); best val {summary['best_metric']:.4f} "
        f"at step {summary['best_step']}; run dir {summary['run_dir']}"
    )
    return 0
