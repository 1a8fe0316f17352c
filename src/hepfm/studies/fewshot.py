"""The few-label study: does pretraining save labels?

For each objective: pretrain once; then for each number of labels N and seed, finetune the
pretrained backbone (``finetune`` and ``frozen`` modes) and train the same architecture from scratch
on the same N class-balanced labels; evaluate all on the same test files. Results are aggregated as
mean +- std over seeds into ``results.json`` and a Markdown table ``results.md``. Every finished
piece is skipped when the study is re-run, so an interrupted study resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hepfm.io import atomic_path, write_json_atomic
from hepfm.training.config import apply_overrides
from hepfm.workflows.classify import evaluate
from hepfm.workflows.finetune import finetune
from hepfm.workflows.pretrain import pretrain

log = logging.getLogger(__name__)
METRICS = ("accuracy", "auc", "rej50", "rej30")


@dataclass
class FewShotStudy:
    out: Path
    pretrain_data: list[str]
    train: list[str]
    val: list[str]
    test: list[str]
    objectives: list[str] = field(default_factory=lambda: ["jetclr"])
    modes: list[str] = field(default_factory=lambda: ["finetune", "frozen", "scratch"])
    n_labels: list[int] = field(default_factory=lambda: [1000])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    pretrain_preset: str | None = None  # default <objective>-cpu
    pretrain_overrides: list[str] = field(default_factory=list)
    finetune_preset: str = "cpu-small"
    finetune_overrides: list[str] = field(default_factory=list)
    head: str = "linear"

    def pretrain_dir(self, objective: str) -> Path:
        return self.out / "pretrain" / objective

    def finetune_dir(self, objective: str, mode: str, n: int, seed: int) -> Path:
        owner = scratch_key(self.pretrain_dir(objective)) if mode == "scratch" else objective
        return self.out / "finetune" / owner / mode / f"n{n}" / f"seed{seed}"


def architecture_key(pretrained: Path) -> str:
    """``<backbone>-<features>-<hash>`` of a pretrained run: what its from-scratch baseline re-initialises.

    Objectives whose backbone, options, inputs and particle cap agree share one set of scratch runs
    (the same architecture re-initialised is the same baseline); objectives with different inputs
    (e.g. JetCLR's raw eta/phi) get their own, so every comparison is like for like.
    """
    spec = json.loads((pretrained / "backbone.json").read_text())
    sig = {k: spec.get(k) for k in ("backbone", "features", "max_particles")}
    digest = hashlib.sha1(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:6]
    return f"{spec['backbone']['name']}-{spec['features']['name']}-{digest}"


def scratch_key(pretrained: Path) -> str:
    """The folder of the from-scratch runs a pretrained run is compared with."""
    return f"scratch-{architecture_key(pretrained)}"


def _done(run: Path) -> dict[str, Any] | None:
    path = run / "eval" / "test" / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def run_study(s: FewShotStudy, progress: bool = False) -> dict[str, Any]:
    s.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for objective in s.objectives:
        pdir = s.pretrain_dir(objective)
        if not (pdir / "backbone.safetensors").exists():
            log.info("pretraining %s -> %s", objective, pdir)
            delta = apply_overrides({}, [f"data.train={json.dumps(s.pretrain_data)}", f"objective.name={objective}",
                                         *s.pretrain_overrides])
            pretrain(s.pretrain_preset or f"{objective}-cpu", delta, pdir, progress=progress)
        baseline = f"({architecture_key(pdir)})"  # how the table names the matching scratch rows
        for n in s.n_labels:
            for seed in s.seeds:
                for mode in s.modes:
                    run = s.finetune_dir(objective, mode, n, seed)
                    metrics = _done(run)
                    if metrics is None:
                        log.info("%s %s n=%d seed=%d -> %s", objective, mode, n, seed, run)
                        delta = apply_overrides({}, [
                            f"data.train={json.dumps(s.train)}", f"data.val={json.dumps(s.val)}",
                            f"head.name={s.head}", f"train.seed={seed}", *s.finetune_overrides])
                        finetune(pdir, s.finetune_preset, delta, run, mode=mode, n_labels=n, progress=progress)
                        metrics = evaluate(run, s.test, name="test", plots=False)
                    rows.append({"objective": baseline if mode == "scratch" else objective, "mode": mode,
                                 "n_labels": n, "seed": seed, "baseline": baseline,
                                 **{k: metrics[k] for k in METRICS}})
    table = aggregate(rows)
    cost = pretraining_cost(s)
    result = {"rows": rows, "table": table, "pretraining": cost,
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(s).items()}}
    write_json_atomic(s.out / "results.json", result)
    with atomic_path(s.out / "results.md") as tmp:
        tmp.write_text(markdown_table(table) + cost_lines(cost))
    return result


def pretraining_cost(s: FewShotStudy) -> dict[str, dict[str, Any]]:
    """Steps, wall time, throughput and hardware of each objective's pretraining (its train_summary)."""
    keys = ("steps", "seconds", "jets_per_second", "device", "n_backbone_parameters")
    out = {}
    for objective in s.objectives:
        path = s.pretrain_dir(objective) / "train_summary.json"
        if path.exists():
            summary = json.loads(path.read_text())
            out[objective] = {k: summary.get(k) for k in keys}
    return out


def cost_lines(cost: dict[str, dict[str, Any]]) -> str:
    lines = [f"- pretraining {obj}: {c['steps']} steps in {c['seconds']:.0f} s ({c['jets_per_second']:.0f} jets/s"
             f"{', ' + c['device'] if c.get('device') else ''})" for obj, c in cost.items()]
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (objective, mode, n_labels); scratch rows are shared by objectives
    with the same architecture (their ``objective`` is the architecture key in parentheses)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    seen: set[tuple] = set()
    for r in rows:
        key = (r["objective"], r["mode"], r["n_labels"])
        if (key, r["seed"]) in seen:
            continue
        seen.add((key, r["seed"]))
        groups.setdefault(key, []).append(r)
    table = []
    for (objective, mode, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        entry: dict[str, Any] = {"objective": objective, "mode": mode, "n_labels": n, "n_seeds": len(rs),
                                 "baseline": rs[0].get("baseline", "")}
        for k in METRICS:
            v = np.array([r[k] for r in rs], dtype=float)
            finite = v[np.isfinite(v)]
            entry[k] = float(finite.mean()) if len(finite) else float("inf")
            entry[f"{k}_std"] = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
        table.append(entry)
    scratch = {(t["objective"], t["n_labels"]): t for t in table if t["mode"] == "scratch"}
    for t in table:  # the gain over the matching from-scratch baseline (same architecture, same N)
        ref = scratch.get((t["baseline"], t["n_labels"]))
        t["auc_minus_scratch"] = t["auc"] - ref["auc"] if ref and t["mode"] != "scratch" else None
    return table


def markdown_table(table: list[dict[str, Any]]) -> str:
    head = ("| N labels | objective | mode | seeds | accuracy | AUC | 1/eps_B @ 0.5 | 1/eps_B @ 0.3 | "
            "AUC - scratch |\n")
    head += "|---|---|---|---|---|---|---|---|---|\n"
    lines = []
    for t in table:
        cells = [f"{t[k]:.4f} ± {t[k + '_std']:.4f}" if k in ("accuracy", "auc") else f"{t[k]:.1f} ± {t[k + '_std']:.1f}"
                 for k in METRICS]
        gain = t.get("auc_minus_scratch")
        cells.append("" if gain is None else f"{gain:+.4f}")
        lines.append(f"| {t['n_labels']} | {t['objective']} | {t['mode']} | {t['n_seeds']} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"
