"""``hepfm study run STUDY.yaml``: a declared grid of pretraining and finetuning runs, with its report;
``hepfm study fewshot``: the same from flags, for one labeled task."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from hepfm.studies.spec import BACKENDS

    p = sub.add_parser(
        "study",
        help="run a study: a grid of pretraining and finetuning runs with its report",
        description="run: the grid a study file declares (pretraining objectives x sizes, tasks, modes, "
        "heads, N labels, seeds, baselines), in parallel, with results.csv/json and report.html/md. "
        "fewshot: one labeled task from flags (writes the study file it stands for and runs it). "
        "Re-running resumes: finished cells are reused.",
    )
    kinds = p.add_subparsers(dest="kind", required=True, metavar="{run,fewshot,report}")
    r = kinds.add_parser(
        "run", help="run the grid a study YAML declares",
        description="Run (or resume) the study a YAML file declares; see docs/studies.md for its keys. "
        "Shipped presets: demo, cpu, seed000-jetclass-toptag (give the name instead of a file).",
        epilog="example: hepfm study run study.yaml --out studies/mine --workers 2",
    )
    r.add_argument("study", help="a study YAML file or a shipped preset's name")
    r.add_argument("--out", required=True)
    r.add_argument("--data-dir", help="folder of the study's relative file names (default: the YAML's "
                   "data_dir, relative to the YAML file)")
    r.add_argument("--workers", type=int, help="cells run in parallel (overrides executor.workers)")
    r.add_argument("--backend", choices=BACKENDS, help="overrides executor.backend")
    r.add_argument("--progress", action="store_true")
    r.set_defaults(func=run)

    f = kinds.add_parser(
        "fewshot", help="pretrained vs scratch at few labels, one task, from flags",
        description="Pretrain each objective once, then finetune / frozen-probe / train from scratch on N "
        "class-balanced labels for each seed, next to trees on high-level features, and report.",
        epilog="example: hepfm study fewshot --pretrain-data pre.h5 --train train.h5 --val val.h5 "
        "--test test.h5 --objectives jetclr,mpm,jepa --n-labels 1000,10000 --seeds 1,2,3 "
        "--out studies/fewshot",
    )
    f.add_argument("--pretrain-data", nargs="+", required=True)
    f.add_argument("--train", nargs="+", required=True)
    f.add_argument("--val", nargs="+", required=True)
    f.add_argument("--test", nargs="+", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--objectives", type=_names, default=["jetclr"],
                   help="comma-separated, among {objectives}")
    f.add_argument("--modes", type=_names, default=["finetune", "frozen", "scratch"])
    f.add_argument("--n-labels", type=_ints, default=[1000])
    f.add_argument("--seeds", type=_ints, default=[1, 2, 3])
    f.add_argument("--head", default="linear", help="one of {heads}")
    f.add_argument("--pretrain-preset")
    f.add_argument("--finetune-preset", default="cpu-small")
    f.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every pretraining run, e.g. train.max_steps=2000")
    f.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE")
    f.add_argument("--no-baseline", action="store_true", help="skip the trees on high-level features")
    f.add_argument("--workers", type=int)
    f.add_argument("--backend", choices=BACKENDS, default="local")
    f.add_argument("--progress", action="store_true")
    f.set_defaults(func=run)

    g = kinds.add_parser(
        "report", help="write a finished study's report again from its results.json",
        description="Re-render report.md, report.html, the CSV files and the figures of a study directory "
        "from its results.json (after an upgrade of hepfm's report, or to regenerate deleted files); "
        "nothing is trained or evaluated.",
    )
    g.add_argument("dir", help="the study's --out directory")
    g.set_defaults(func=report)


def run(args: argparse.Namespace) -> int:
    from hepfm.errors import HepfmInputError

    command = "hepfm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.workers is not None and args.workers < 1:
        raise HepfmInputError(f"--workers must be >= 1, got {args.workers}")
    if args.kind == "run":
        from hepfm.studies.runner import run_study
        from hepfm.studies.spec import load_spec

        spec, _ = load_spec(args.study, args.data_dir)
        if args.workers is not None:
            spec.executor.workers = args.workers
        if args.backend is not None:
            spec.executor.backend = args.backend
        result = run_study(spec, args.out, progress=args.progress, command=command)
    else:
        from hepfm.studies.fewshot import fewshot_spec, run_fewshot

        content = fewshot_spec(
            pretrain_data=args.pretrain_data, train=args.train, val=args.val, test=args.test,
            objectives=args.objectives, modes=args.modes, n_labels=args.n_labels, seeds=args.seeds,
            head=args.head, pretrain_preset=args.pretrain_preset, pretrain_overrides=args.pretrain_set,
            finetune_preset=args.finetune_preset, finetune_overrides=args.finetune_set,
            baselines=[] if args.no_baseline else ["bdt"], workers=args.workers, backend=args.backend)
        result = run_fewshot(args.out, content, progress=args.progress, command=command)
    print_result(result, Path(args.out))
    return 0


def report(args: argparse.Namespace) -> int:
    import json

    from hepfm.errors import HepfmInputError
    from hepfm.studies.report import write_report

    path = Path(args.dir) / "results.json"
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise HepfmInputError("no results.json: not a finished study directory", path) from None
    except ValueError as err:
        raise HepfmInputError(f"unreadable results.json: {err}", path) from None
    write_report(result, Path(args.dir))
    print(result.get("summary", ""))
    print(f"-> {Path(args.dir) / 'report.html'} (and report.md, results.csv, cells.csv)")
    return 0


def print_result(result: dict[str, Any], out: Path) -> None:
    from hepfm.studies.report import cells_markdown

    print(cells_markdown(result["cells"]))
    failed = [r for r in result["runs"] + result["pretraining"] if r.get("status") == "failed"]
    if failed:
        print(f"{len(failed)} cell(s) failed; reasons in the report")
    print(result["summary"])
    print(f"-> {out / 'report.html'} (and report.md, results.csv, results.json)")
