"""``hepfm pretrain``: pretrain a backbone with a self-supervised (or supervised) objective."""

from __future__ import annotations

import argparse
import json

from hepfm.cli.train import flags_to_delta


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="pretrain a backbone (jetclr, mpm, jepa, supervised)",
        description="Pretrain a backbone on (unlabeled) jets; labels are ignored unless --objective supervised. "
        "Presets: <objective>-cpu (default) and <objective>-paper (GPU). Re-running into --out resumes.",
        epilog="example: hepfm pretrain --objective jetclr --data 'pre_*.h5' --backbone transformer-small --out runs/clr",
    )
    p.add_argument("--objective", required=True, help="jetclr, mpm, jepa or supervised")
    p.add_argument("--data", nargs="+", required=True, help="training files (globs allowed)")
    p.add_argument("--val", nargs="+", help="validation files (selects the exported backbone on validation loss)")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", help="preset name or YAML file (default: <objective>-cpu)")
    p.add_argument("--backbone")
    p.add_argument("--features")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--max-particles", type=int)
    p.add_argument("--n-train", type=int, help="use only the first N jets")
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("--streaming", action="store_true", help="stream from disk (data larger than memory)")
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--restart", action="store_true",
                   help="discard the run already in --out (its checkpoints, metrics, weights) and start over")
    p.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. objective.options.temperature=0.1")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hepfm.workflows.pretrain import pretrain

    extra: dict = {"data.train": args.data, "objective.name": args.objective}
    if args.val:
        extra["data.val"] = args.val
    if args.streaming:
        extra["data.streaming"] = True
    if args.skip_bad:
        extra["data.skip_bad"] = True
    args.head = None
    preset = args.preset or f"{args.objective}-cpu"
    s = pretrain(preset, flags_to_delta(args, extra), args.out, restart=args.restart,
                 progress=not args.no_progress)
    print(f"pretrained {s['objective']} for {s['steps']} steps in {s['seconds']:.0f} s "
          f"({s['jets_per_second']:.0f} jets/s); backbone -> {s['run_dir']}/backbone.safetensors")
    print(json.dumps({k: s[k] for k in ("best_metric", "best_step")}))
    return 0
