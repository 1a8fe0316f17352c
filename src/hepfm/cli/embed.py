"""``hepfm embed``: representation diagnostics of a backbone (collapse, rank, k-NN / linear probes, map)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed", help="embedding diagnostics of a pretrained backbone",
        description="Mean pairwise cosine similarity (collapse check), per-dimension std, effective rank, "
        "k-NN and linear-probe accuracy (if the data has labels), and a t-SNE/UMAP map coloured by class.",
        epilog="example: hepfm embed runs/clr --data test.h5 --n-jets 2000",
    )
    p.add_argument("run", help="pretrain or classifier run directory, or a .safetensors file")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--n-jets", type=int, default=2000)
    p.add_argument("--name")
    p.add_argument("--method", default="tsne", choices=("tsne", "umap"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hepfm.workflows.embed import embed

    r = embed(
        args.run, args.data, n_jets=args.n_jets, name=args.name, method=args.method, plot=not args.no_plot
    )
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        keys = ("n_jets", "mean_pairwise_cosine", "effective_rank", "std_mean", "dead_dim_fraction",
                "knn_accuracy", "linear_probe_accuracy")
        print(
            "  ".join(f"{k}={r[k]:.4g}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in keys if k in r)
        )
        print(f"-> {r['out']}")
    return 0
