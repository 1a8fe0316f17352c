"""``hepfm train``: supervised tagger training (YAML preset + a few flags + dotted overrides)."""

from __future__ import annotations

import argparse
import json

from hepfm.training.config import apply_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a supervised jet tagger",
        description="Train a tagger on labeled jets. Re-running with the same --out resumes exactly from the "
        "last checkpoint. Presets: cpu-small (default), part-toptag (the official ParT recipe; GPU).",
        epilog="example: hepfm train --data train.h5 --val val.h5 --backbone part --out runs/part "
        "-o train.max_steps=2000 -o train.optim.lr=5e-4",
    )
    p.add_argument("--data", nargs="+", required=True, help="training files (globs allowed)")
    p.add_argument("--val", nargs="+", required=True, help="validation files (model selection only)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", default="cpu-small", help="preset name or YAML file")
    p.add_argument("--backbone", help="registry name, e.g. part, part-small, particle_net, pfn, transformer")
    p.add_argument("--head", help="linear, mlp, mean, class-attention, flatten")
    p.add_argument("--features", help="kin, kinpid, full, jetclr")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--max-particles", type=int)
    p.add_argument("--n-train", type=int, help="use only the first N training jets")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--streaming", action="store_true", help="stream training data from disk (bigger than memory)")
    p.add_argument("--skip-bad", action="store_true", help="skip bad jets instead of stopping")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run")
    p.add_argument("--restart", action="store_true",
                   help="discard the run already in --out (its checkpoints, metrics, weights) and start over")
    p.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. train.optim.name=ranger (repeatable)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


FLAG_KEYS = {
    "backbone": "model.backbone", "head": "model.head", "features": "data.features", "steps": "train.max_steps",
    "batch_size": "data.batch_size", "lr": "train.optim.lr", "max_particles": "data.max_particles",
    "n_train": "data.n_train", "seed": "train.seed", "device": "train.device",
}


def flags_to_delta(args: argparse.Namespace, extra: dict[str, object]) -> dict:
    delta: dict = {}
    items = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in FLAG_KEYS.items()
             if getattr(args, flag, None) is not None]
    items += [f"{k}={json.dumps(v)}" for k, v in extra.items()]
    return apply_overrides(delta, items + list(args.overrides))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hepfm.errors import HepfmInputError
    from hepfm.workflows.classify import train

    if args.no_resume and not args.restart and (Path(args.out) / "checkpoints" / "last.pt").exists():
        raise HepfmInputError("run directory already holds a run (drop --no-resume to continue it)", args.out)
    extra = {"data.train": args.data, "data.val": args.val}
    if args.streaming:
        extra["data.streaming"] = True
    if args.skip_bad:
        extra["data.skip_bad"] = True
    summary = train(args.preset, flags_to_delta(args, extra), args.out, restart=args.restart,
                    progress=not args.no_progress)
    print(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s ({summary['jets_per_second']:.0f} jets/s); "
          f"best val {summary['best_metric']:.4f} at step {summary['best_step']}; run dir {summary['run_dir']}")
    return 0
