"""ParT trained by hepfm vs ParT trained by weaver-core, on the same files with the same budget.

Both sides train their own code end to end: hepfm with ``hepfm train`` / ``hepfm evaluate``
(hepfm's ParticleTransformer, loader, features and engine), weaver-core with its own ``weaver``
command (weaver's ParticleTransformer, data pipeline from ``benchmarks/weaver/top_kin.yaml``, its
training loop; network config ``benchmarks/weaver/part_net.py``). The same: inputs (ParT's 7
``kin`` features, the 4 pair features, the particle cap), model shape (``--size``), optimizer
(Ranger as weaver's: betas 0.95/0.999, eps 1e-5, Lookahead 6/0.5, ``--lr``, decoupled weight
decay 0.01 off biases and norms, no gradient clipping), optimizer steps and batch
size, learning-rate shape (flat, then decay to 1 % over the last 30 %: weaver's ``flat+decay`` per
pseudo-epoch of ``--epochs``, hepfm's ``flat-anneal``), model selection on the validation file
only, evaluation on the test file with the same metric code. "Within noise" is judged from mean ±
std over ``--seeds`` for each side and the difference of the means in standard errors. (weaver has
no seed option: its runs differ by their random initialisation, as hepfm's differ by ``--seed``.)

The input files must be in the JetClass ROOT layout with ``label_QCD``/``label_Top`` branches,
which weaver reads; hepfm reads the same files. Other files (e.g. from ``hepfm generate toptag``)
are converted first with ``hepfm convert --to jetclass-root`` into ``--out``.

Usage (CPU, ParT-small, ~20 min per run-pair on one core at the defaults)::

    python benchmarks/side_by_side_part.py --train train.h5 --val val.h5 --test test.h5 \\
        --out sbs --size small --steps 600 --batch-size 256 --max-particles 64 --seeds 1 2 3

Paper size on a GPU: ``--size paper --steps 48000 --batch-size 512 --max-particles 128
--device cuda`` (hepfm's ``part-toptag`` recipe; weaver gets ``--gpus 0``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WEAVER_DIR = HERE / "weaver"
SIZES = {"small": "part-small", "paper": "part"}
METRICS = ("auc", "accuracy", "rej30", "rej50")


def _bin(name: str) -> str:
    """The console script ``name`` next to this interpreter (the venv's), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _is_root(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"root"


def as_root(path: str, out: Path) -> Path:
    """``path`` itself if it is a ROOT file, else its conversion to the JetClass ROOT layout."""
    p = Path(path)
    if _is_root(p):
        return p
    target = out / "data" / (p.stem + ".root")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [_bin("hepfm"), "convert", str(p), "--to", "jetclass-root", "--out", str(target)], check=True
        )
    return target


def n_jets(path: Path) -> int:
    import uproot

    with uproot.open(path) as f:
        return int(f["tree"].num_entries)


def weaver_data_config(out: Path, max_particles: int) -> Path:
    """weaver's data config with the input length set to ``max_particles``."""
    text = (WEAVER_DIR / "top_kin.yaml").read_text()
    text = re.sub(r"length: \d+", f"length: {max_particles}", text)
    path = out / f"top_kin_{max_particles}.yaml"
    path.write_text(text)
    return path


def run_logged(cmd: list[str], log: Path, env: dict) -> float:
    """Run ``cmd`` with stdout+stderr to ``log``; returns wall seconds; raises with the log tail."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}); log {log}:\n{tail}")
    return wall


def run_hepfm(args: argparse.Namespace, files: dict, seed: int, env: dict) -> dict:
    run = args.out / f"hepfm_seed{seed}"
    result = run / "side_by_side.json"
    if result.exists():
        return json.loads(result.read_text())
    eval_every = max(1, args.steps // args.epochs)
    cmd = [
        _bin("hepfm"), "train", "--data", str(files["train"]), "--val", str(files["val"]), "--out", str(run),
        "--backbone", SIZES[args.size], "--head", "linear", "--features", "kin",
        "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--max-particles", str(args.max_particles), "--seed", str(seed), "--device", args.device,
        "--no-progress",
        # weaver's Ranger: RAdam betas (0.95, 0.999), eps 1e-5, Lookahead k=6 alpha=0.5; no clipping
        "-o", "train.optim.name=ranger", "-o", "train.optim.weight_decay=0.01",
        "-o", "train.optim.betas=[0.95,0.999]", "-o", "train.optim.eps=1.0e-5", "-o", "train.clip_grad=0",
        "-o", "train.schedule.name=flat-anneal", "-o", "train.schedule.anneal_start=0.7",
        "-o", "train.schedule.min_lr_ratio=0.01", "-o", "train.schedule.warmup_steps=0",
        "-o", f"train.eval_every={eval_every}", "-o", f"train.ckpt_every={eval_every}",
        "-o", "train.amp=auto",
    ]
    run.mkdir(parents=True, exist_ok=True)
    wall = run_logged(cmd, run.parent / f"hepfm_seed{seed}.train.log", env)
    ev = [_bin("hepfm"), "evaluate", str(run), "--data", str(files["test"]), "--name", "test", "--no-plots",
          "--json"]
    wall += run_logged(ev, run.parent / f"hepfm_seed{seed}.eval.log", env)
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    out = {"framework": "hepfm", "seed": seed, "train_s": wall, **{k: metrics[k] for k in METRICS}}
    result.write_text(json.dumps(out, indent=2))
    return out


def weaver_metrics(pred: Path) -> dict:
    import numpy as np
    import uproot

    from hepfm.evaluation.metrics import binary_metrics

    with uproot.open(pred) as f:
        a = f["Events"].arrays(["label_Top", "score_label_Top", "score_label_QCD"], library="np")
    is_top = a["label_Top"].astype(bool)
    score = a["score_label_Top"].astype(np.float64)
    acc = float(((score > a["score_label_QCD"]) == is_top).mean())
    return {"accuracy": acc, **binary_metrics(score, is_top)}


def run_weaver(args: argparse.Namespace, files: dict, seed: int, env: dict, data_config: Path) -> dict:
    run = args.out / f"weaver_seed{seed}"
    result = run / "side_by_side.json"
    if result.exists():
        return json.loads(result.read_text())
    if run.exists():  # weaver cannot resume from a half run: start it again
        shutil.rmtree(run)
    run.mkdir(parents=True)
    pred = run / "pred.root"
    per_epoch = args.steps * args.batch_size // args.epochs
    cmd = [
        _bin("weaver"),
        "--data-train", str(files["train"]), "--data-val", str(files["val"]),
        "--data-test", str(files["test"]),
        "--data-config", str(data_config), "--network-config", str(WEAVER_DIR / "part_net.py"),
        "--network-option", "size", repr(args.size), "--model-prefix", str(run / "net"),
        "--num-epochs", str(args.epochs), "--samples-per-epoch", str(per_epoch),
        "--samples-per-epoch-val", str(n_jets(files["val"])), "--batch-size", str(args.batch_size),
        "--optimizer", "ranger", "--start-lr", str(args.lr), "--optimizer-option", "weight_decay", "0.01",
        "--lr-scheduler", "flat+decay",
        "--gpus", "" if args.device == "cpu" else "0", "--num-workers", "1",
        "--predict-output", str(pred.resolve()), "--log-file", str(run / "weaver.log"),
    ]
    if args.device != "cpu":
        cmd += ["--use-amp"]
    env = dict(env, PYTHONHASHSEED=str(seed))
    wall = run_logged(cmd, args.out / f"weaver_seed{seed}.log", env)
    out = {"framework": "weaver-core", "seed": seed, "train_s": wall, **weaver_metrics(pred)}
    result.write_text(json.dumps(out, indent=2))
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def table(rows: list[dict]) -> str:
    lines = ["| framework | seed | AUC | accuracy | 1/eps_B @ 0.3 | 1/eps_B @ 0.5 | wall s (train + test) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['framework']} | {r['seed']} | {r['auc']:.4f} | {r['accuracy']:.4f} | "
                     f"{r['rej30']:.0f} | {r['rej50']:.1f} | {r['train_s']:.0f} |")
    summary = {}
    for fw in dict.fromkeys(r["framework"] for r in rows):
        sel = [r for r in rows if r["framework"] == fw]
        stats = {k: _mean_std([r[k] for r in sel]) for k in (*METRICS, "train_s")}
        summary[fw] = (stats, len(sel))
        s = {k: f"{m:.4f} ± {sd:.4f}" for k, (m, sd) in stats.items() if k in ("auc", "accuracy")}
        lines.append(f"| **{fw}** mean ± std | {len(sel)} | {s['auc']} | {s['accuracy']} | "
                     f"{stats['rej30'][0]:.0f} ± {stats['rej30'][1]:.0f} | "
                     f"{stats['rej50'][0]:.1f} ± {stats['rej50'][1]:.1f} | {stats['train_s'][0]:.0f} |")
    if len(summary) == 2:
        (sa, na), (sb, nb) = summary.values()
        lines.append("")
        for k in METRICS:
            diff = sa[k][0] - sb[k][0]
            se = math.sqrt(sa[k][1] ** 2 / na + sb[k][1] ** 2 / nb) if na > 1 and nb > 1 else float("nan")
            lines.append(f"- {k}: hepfm - weaver = {diff:+.4f} ({diff / se:+.1f} standard errors)"
                         if math.isfinite(se) and se > 0 else f"- {k}: hepfm - weaver = {diff:+.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-particles", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10, help="weaver pseudo-epochs (validations) per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per run")
    p.add_argument("--only", choices=["hepfm", "weaver"], help="run one side only")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    files = {k: as_root(getattr(args, k), args.out) for k in ("train", "val", "test")}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    data_config = weaver_data_config(args.out, args.max_particles)
    rows = []
    for seed in args.seeds:
        if args.only != "weaver":
            rows.append(run_hepfm(args, files, seed, env))
            print(json.dumps(rows[-1]), flush=True)
        if args.only != "hepfm":
            rows.append(run_weaver(args, files, seed, env, data_config))
            print(json.dumps(rows[-1]), flush=True)
    rows.sort(key=lambda r: (r["framework"] != "hepfm", r["seed"]))
    text = table(rows)
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
