"""``hepfm pretrain``: pretrain a backbone with a self-supervised (or supervised) objective."""

from __future__ import annotations

import argparse
import json

from hepfm.cli.config_flags import add_config_flags, config_delta


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone with a self-supervised (or supervised) objective",
        description="Pretrain a backbone on (unlabeled) jets; labels are ignored unless --objective "
        "supervised. Presets: <objective>-cpu (default) and <objective>-paper (GPU). Re-running into --out "
        "resumes.",
        epilog="example: hepfm pretrain --objective jetclr --data 'pre_*.h5' --backbone transformer-small "
        "--out runs/clr",
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", help="preset name or YAML file (default: <objective>-cpu)")
    add_config_flags(p, "pretrain")
    p.add_argument("--restart", action="store_true",
                   help="discard the run already in --out (its checkpoints, metrics, weights) and start over")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hepfm.workflows.pretrain import pretrain

    preset = args.preset or f"{args.objective}-cpu"
    s = pretrain(preset, config_delta(args, "pretrain"), args.out, restart=args.restart,
                 progress=not args.no_progress)
    print(f"pretrained {s['objective']} for {s['steps']} steps in {s['seconds']:.0f} s "
          f"({s['jets_per_second']:.0f} jets/s); backbone -> {s['run_dir']}/backbone.safetensors")
    print(json.dumps({k: s[k] for k in ("best_metric", "best_step")}))
    return 0
