"""``hepfm study fewshot``: pretrained vs scratch at few labels, over objectives, modes, N and seeds."""

from __future__ import annotations

import argparse
from pathlib import Path


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="run a study (fewshot: pretrained vs scratch at few labels)",
        description="fewshot: pretrain each objective once, then finetune / frozen-probe / train from "
        "scratch on N class-balanced labels for each seed, evaluate on the test files, and write results.md "
        "and results.json (mean ± std over seeds). Re-running resumes: finished runs are reused.",
        epilog="example: hepfm study fewshot --pretrain-data pre.h5 --train train.h5 --val val.h5 "
        "--test test.h5 --objectives jetclr,mpm,jepa --n-labels 1000,10000 --seeds 1,2,3 "
        "--out studies/fewshot",
    )
    p.add_argument("kind", choices=("fewshot",))
    p.add_argument("--pretrain-data", nargs="+", required=True)
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--val", nargs="+", required=True)
    p.add_argument("--test", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--objectives", type=_names, default=["jetclr"], help="comma-separated, among {objectives}"
    )
    p.add_argument("--modes", type=_names, default=["finetune", "frozen", "scratch"])
    p.add_argument("--n-labels", type=_ints, default=[1000])
    p.add_argument("--seeds", type=_ints, default=[1, 2, 3])
    p.add_argument("--head", default="linear", help="one of {heads}")
    p.add_argument("--pretrain-preset")
    p.add_argument("--finetune-preset", default="cpu-small")
    p.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every pretraining run, e.g. train.max_steps=2000")
    p.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hepfm.studies.fewshot import FewShotStudy, markdown_table, run_study

    study = FewShotStudy(
        out=Path(args.out), pretrain_data=args.pretrain_data, train=args.train, val=args.val, test=args.test,
        objectives=args.objectives, modes=args.modes, n_labels=args.n_labels, seeds=args.seeds,
        pretrain_preset=args.pretrain_preset, pretrain_overrides=args.pretrain_set,
        finetune_preset=args.finetune_preset, finetune_overrides=args.finetune_set, head=args.head,
    )
    result = run_study(study, progress=args.progress)
    print(markdown_table(result["table"]))
    print(f"-> {study.out}/results.md, results.json")
    return 0
