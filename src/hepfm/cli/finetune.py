"""``hepfm finetune``: few-label finetuning, linear probing, or the from-scratch baseline."""

from __future__ import annotations

import argparse

from hepfm.cli.config_flags import add_config_flags, config_delta


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="finetune a pretrained backbone on few labels (or frozen / scratch baselines)",
        description="Train a tagger (or event classifier) from a pretrained backbone on N class-balanced "
        "labeled jets (or events). "
        "--mode finetune trains backbone and head; frozen trains the head only "
        "(--head linear = linear probe); scratch re-initialises the same architecture. "
        "Model selection on --val only.",
        epilog="example: hepfm finetune --pretrained runs/clr --data train.h5 --val val.h5 --n-labels 1000 "
        "--mode finetune --head linear --out runs/ft",
    )
    p.add_argument(
        "--pretrained", required=True, help="a hepfm pretrain run directory (or backbone.safetensors)"
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--n-labels", type=int, help="labeled jets to use (class-balanced, seeded); default all")
    p.add_argument("--mode", default="finetune", choices=("finetune", "frozen", "scratch", "random"),
                   help="finetune | frozen (linear probe with --head linear) | scratch | random (the random "
                        "initialisation, frozen: the probe's control)")
    p.add_argument("--preset", help="finetune preset or YAML file (default: events-cpu for a backbone "
                   "pretrained on events, cpu-small otherwise)")
    add_config_flags(p, "finetune")
    p.add_argument("--restart", action="store_true",
                   help="discard the run already in --out (its checkpoints, metrics, weights) and start over")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hepfm.workflows.finetune import finetune

    s = finetune(args.pretrained, args.preset, config_delta(args, "finetune"), args.out, mode=args.mode,
                 n_labels=args.n_labels, restart=args.restart, progress=not args.no_progress)
    print(f"{args.mode}: {s['steps']} steps in {s['seconds']:.0f} s; best val {s['best_metric']:.4f} at step "
          f"{s['best_step']}; labels per class {s['per_class']}; run dir {s['run_dir']}")
    return 0
