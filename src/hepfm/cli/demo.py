"""``hepfm demo``: the main job on the embedded default (generate, pretrain, finetune / frozen / scratch
and trees at two label counts and three seeds, report)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: generate jets, pretrain, finetune vs scratch over seeds, report",
        description="Generates Top-Tagging-like jets with Pythia 8 + FastJet (an unlabeled pretraining set "
        "and small labeled sets), pretrains a backbone (JetCLR by default), finetunes and linear-probes it "
        "on 100 and 1000 labels next to the same architecture trained from scratch and trees on high-level "
        "features, 3 seeds each, evaluates all on the same test jets, prints the table with spreads and "
        "writes report.html. About 10 minutes on 2 CPU cores; re-running reuses finished steps.",
    )
    p.add_argument("--out", default="hepfm-demo")
    p.add_argument("--workers", type=int, default=2, help="generation workers and parallel study cells")
    p.add_argument("--seed", type=int, default=1, help="generation and pretraining seed")
    p.add_argument("--seeds", type=_ints, default=(1, 2, 3), help="finetuning seeds, comma-separated")
    p.add_argument("--objective", default="jetclr", help="one of {objectives}")
    p.add_argument("--n-labels", type=_ints, default=(100, 1000), help="label counts, comma-separated")
    p.add_argument("--detector", default="none", help="generator detector preset (none, cms, atlas)")
    p.add_argument("--pretrain-steps", type=int)
    p.add_argument("--finetune-steps", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hepfm.cli.study import print_result
    from hepfm.studies.demo import demo

    r = demo(args.out, workers=args.workers, seed=args.seed, seeds=args.seeds, objective=args.objective,
             n_labels=args.n_labels, pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps,
             detector=args.detector, progress=not args.no_progress,
             command="hepfm " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print_result(r, Path(args.out) / "study")
    print(f"total {r['seconds']['total']:.0f} s (generation {r['seconds']['generation']:.0f} s)")
    return 0
