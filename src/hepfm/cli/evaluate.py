"""``hepfm evaluate``: accuracy, AUC and background rejection of a run's best model on test data."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a trained tagger on test files",
        description="Writes RUN_DIR/eval/<name>/metrics.json (accuracy, auc, rej30, rej50, n_jets; "
        "one-vs-rest for multi-class) and ROC / score plots.",
        epilog="example: hepfm evaluate runs/part --data test.h5 --json",
    )
    p.add_argument("run_dir", help="a run directory from hepfm train/finetune (or a .safetensors file)")
    p.add_argument("--data", nargs="+", required=True, help="test files (globs allowed)")
    p.add_argument("--name", help="name of the evaluation folder (default: the first file's stem)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hepfm.workflows.classify import evaluate

    m = evaluate(args.run_dir, args.data, name=args.name, batch_size=args.batch_size, skip_bad=args.skip_bad,
                 plots=not args.no_plots)
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "data"}, indent=2))
    else:
        item = "events" if m.get("input_kind") == "events" else "jets"
        print(f"{m['n_jets']} {item}: accuracy {m['accuracy']:.4f}  AUC {m['auc']:.4f}  "
              f"1/eps_B @ eps_S=0.3: {m['rej30']:.1f}  @ 0.5: {m['rej50']:.1f}  -> {m['out']}/metrics.json")
    return 0
