"""``hepfm demo``: the main job on the embedded default (generate, pretrain, finetune vs scratch, compare)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: generate jets, pretrain, finetune vs scratch, print the comparison",
        description="Generates Top-Tagging-like jets with Pythia 8 + FastJet (an unlabeled pretraining set "
        "and small labeled sets), pretrains a backbone (JetCLR by default), finetunes it on a few labels "
        "next to the same architecture trained from scratch on the same labels, evaluates both on the same "
        "test jets and prints the table. About 10 minutes on 2 CPU cores; re-running reuses finished steps.",
    )
    p.add_argument("--out", default="hepfm-demo")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--objective", default="jetclr", help="one of {objectives}")
    p.add_argument("--n-labels", type=int, default=200)
    p.add_argument("--backbone", default="part-small", help="one of {backbones}")
    p.add_argument("--max-particles", type=int, default=32, help="hardest constituents kept per jet")
    p.add_argument("--pretrain-steps", type=int, default=1200)
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hepfm.studies.demo import demo

    r = demo(args.out, workers=args.workers, seed=args.seed, objective=args.objective, n_labels=args.n_labels,
             pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps, backbone=args.backbone,
             max_particles=args.max_particles, progress=not args.no_progress)
    print(r["markdown"])
    print(f"total {r['seconds']['total']:.0f} s (generation {r['seconds']['generation']:.0f} s); "
          f"results in {args.out}/study/results.md")
    return 0
