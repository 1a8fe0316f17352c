"""``hepfm finetune``: few-label finetuning, linear probing, or the from-scratch baseline."""

from __future__ import annotations

import argparse

from hepfm.training.config import apply_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="finetune a pretrained backbone on few labels (or frozen / scratch baselines)",
        description="Train a tagger from a pretrained backbone on N class-balanced labeled jets. "
        "--mode finetune trains backbone and head; frozen trains the head only (--head linear = linear probe); "
        "scratch re-initialises the same architecture. Model selection on --val only.",
        epilog="example: hepfm finetune --pretrained runs/clr --data train.h5 --val val.h5 --n-labels 1000 "
        "--mode finetune --head linear --out runs/ft",
    )
    p.add_argument("--pretrained", required=True, help="a hepfm pretrain run directory (or backbone.safetensors)")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--val", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n-labels", type=int, help="labeled jets to use (class-balanced, seeded); default all")
    p.add_argument("--mode", default="finetune", choices=("finetune", "frozen", "scratch"))
    p.add_argument("--head", default=None, help="linear, mlp, mean, class-attention, flatten")
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--backbone-lr-scale", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--restart", action="store_true",
                   help="discard the run already in --out (its checkpoints, metrics, weights) and start over")
    p.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from hepfm.workflows.finetune import finetune

    items = [f"data.train={json.dumps(args.data)}", f"data.val={json.dumps(args.val)}"]
    for flag, key in (("head", "head.name"), ("steps", "train.max_steps"), ("batch_size", "data.batch_size"),
                      ("lr", "train.optim.lr"), ("backbone_lr_scale", "finetune.backbone_lr_scale"),
                      ("seed", "train.seed"), ("device", "train.device")):
        if getattr(args, flag) is not None:
            items.append(f"{key}={json.dumps(getattr(args, flag))}")
    if args.skip_bad:
        items.append("data.skip_bad=true")
    delta = apply_overrides({}, items + list(args.overrides))
    s = finetune(args.pretrained, args.preset, delta, args.out, mode=args.mode, n_labels=args.n_labels,
                 restart=args.restart, progress=not args.no_progress)
    print(f"{args.mode}: {s['steps']} steps in {s['seconds']:.0f} s; best val {s['best_metric']:.4f} at step "
          f"{s['best_step']}; labels per class {s['per_class']}; run dir {s['run_dir']}")
    return 0
