"""The few-label study: does pretraining save labels?

For each objective: pretrain once; then for each number of labels N and seed, finetune the
pretrained backbone (``finetune`` and ``frozen`` modes) and train the same architecture from scratch
on the same N class-balanced labels; evaluate all on the same test files. Results are aggregated as
mean +- std over seeds into ``results.json`` and a Markdown table ``results.md``. Every finished
piece is skipped when the study is re-run, so an interrupted study resumes.

Cells are keyed, not just named: each run directory holds ``cell.json`` with a hash of everything
that determines it (the preset merged with the overrides, mode, N, seed, the pretrained weights'
checksum, the identities of its input files). A re-run with another config or other files re-runs
the cells that changed (``--restart`` of that run) instead of reporting stale rows; evaluations are
reused only for the same test files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hepfm.configs import load_preset, merge
from hepfm.data.formats import expand_patterns
from hepfm.io import (
    atomic_path,
    check_output_dir,
    file_identity,
    json_default,
    output_lock,
    write_json_atomic,
)
from hepfm.options import require
from hepfm.training.config import apply_overrides
from hepfm.workflows.classify import evaluate
from hepfm.workflows.finetune import MODES, finetune
from hepfm.workflows.finetune import resolve as resolve_finetune
from hepfm.workflows.pretrain import pretrain
from hepfm.workflows.pretrain import resolve as resolve_pretrain

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

    def __post_init__(self) -> None:
        """Check the whole grid before hours of pretraining: a bad value fails here, not in the last cell."""
        self.out = Path(self.out)
        for key, values in (("--objectives", self.objectives), ("--modes", self.modes),
                            ("--n-labels", self.n_labels), ("--seeds", self.seeds)):
            require(len(values) > 0, key, "needs at least one value", values)
        for mode in self.modes:
            require(mode in MODES, "--modes", f"must be among {', '.join(MODES)}", mode)
        for n in self.n_labels:
            require(n >= 1, "--n-labels", "must be >= 1", n)
        for seed in self.seeds:
            require(seed >= 0, "--seeds", "must be >= 0", seed)
        check_output_dir(self.out)
        for objective in self.objectives:
            resolve_pretrain(self.pretrain_preset or f"{objective}-cpu", self._pretrain_delta(objective))
        resolve_finetune(self.finetune_preset, self._finetune_delta(self.seeds[0]))

    def _pretrain_delta(self, objective: str) -> dict[str, Any]:
        return apply_overrides({}, [f"data.train={json.dumps(self.pretrain_data)}",
                                    f"objective.name={objective}", *self.pretrain_overrides])

    def _finetune_delta(self, seed: int) -> dict[str, Any]:
        return apply_overrides({}, [f"data.train={json.dumps(self.train)}",
                                    f"data.val={json.dumps(self.val)}", f"head.name={self.head}",
                                    f"train.seed={seed}", *self.finetune_overrides])

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


def identities(patterns: list[str]) -> list[tuple[str, str]]:
    """(resolved path, content identity) of every file the patterns match."""
    return [(str(p.resolve()), file_identity(p)) for p in expand_patterns(patterns)]


def claim_cell(run: Path, inputs: dict[str, Any]) -> bool:
    """Record the cell's key in ``run/cell.json``; True if the directory holds a run of other inputs,
    which must then start over. A run without ``cell.json`` (placed there by hand, as the main job does
    with a pretraining) is adopted: its own resume checks still refuse other settings or data."""
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=json_default).encode()).hexdigest()
    path = run / "cell.json"
    try:
        stale = path.exists() and json.loads(path.read_text()).get("key") != key
    except (ValueError, AttributeError):  # unreadable: the run behind it cannot be trusted either
        stale = True
    if stale:
        log.info("%s was run with other inputs: running it again", run)
    write_json_atomic(path, {"key": key, "inputs": inputs})
    return stale


def finished(run: Path, weights: str = "best.safetensors") -> bool:
    """Whether a run trained to its end: a run stopped by its time limit resumes when run again. A run
    placed by hand without a summary counts as finished if it holds its weights."""
    summary = run / "train_summary.json"
    if not (run / weights).exists():
        return False
    if not summary.exists():
        return weights == "backbone.safetensors"

        return False
    return json.loads(summary.read_text()).get("stop_reason") != "time_limit"


def _evaluated(run: Path, test: list[tuple[str, str]]) -> dict[str, Any] | None:
    """The cell's test metrics, if they were computed on exactly these test files."""
    path = run / "eval" / "test" / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    used = [(d.get("path"), d.get("sha256_head_tail")) for d in metrics.get("data", [])]
    return metrics if used == test else None


def run_study(s: FewShotStudy, progress: bool = False) -> dict[str, Any]:
    s.out.mkdir(parents=True, exist_ok=True)
    with output_lock(s.out, directory=True):
        return _run_study(s, progress)


def _run_study(s: FewShotStudy, progress: bool) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    data = {"train": identities(s.train), "val": identities(s.val)}
    test = identities(s.test)
    for objective in s.objectives:
        pdir = s.pretrain_dir(objective)
        preset = s.pretrain_preset or f"{objective}-cpu"
        delta = s._pretrain_delta(objective)
        stale = claim_cell(pdir, {"config": merge(load_preset("pretrain", preset), delta),
                                  "data": identities(s.pretrain_data)})
        if stale or not finished(pdir, "backbone.safetensors"):
            log.info("pretraining %s -> %s", objective, pdir)
            pretrain(preset, delta, pdir, restart=stale, progress=progress)
        backbone = json.loads((pdir / "backbone.json").read_text())
        baseline = f"({architecture_key(pdir)})"  # how the table names the matching scratch rows
        for n in s.n_labels:
            for seed in s.seeds:
                for mode in s.modes:
                    run = s.finetune_dir(objective, mode, n, seed)
                    delta = s._finetune_delta(seed)
                    # scratch cells depend on the architecture only (shared by objectives), the others
                    # on the pretrained weights too
                    origin = baseline if mode == "scratch" else backbone.get("weights_sha256")
                    config = merge(load_preset("finetune", s.finetune_preset), delta)
                    stale = claim_cell(run, {"config": config, "mode": mode, "n_labels": n,
                                             "backbone": origin, "data": data})
                    metrics = _evaluated(run, test) if finished(run) and not stale else None
                    if metrics is None:
                        log.info("%s %s n=%d seed=%d -> %s", objective, mode, n, seed, run)
                        if stale or not finished(run):  # (re)train, or resume a run stopped by the clock
                            finetune(pdir, s.finetune_preset, delta, run, mode=mode, n_labels=n,
                                     restart=stale, progress=progress)
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
    lines = [
        f"- pretraining {obj}: {c['steps']} steps in {c['seconds']:.0f} s ({c['jets_per_second']:.0f} jets/s"
        f"{', ' + c['device'] if c.get('device') else ''})"
        for obj, c in cost.items()
    ]
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
            # one seed has no spread: None, never a "± 0" that reads as a measured certainty
            entry[f"{k}_std"] = float(finite.std(ddof=1)) if len(finite) > 1 else None
        table.append(entry)
    scratch = {(t["objective"], t["n_labels"]): t for t in table if t["mode"] == "scratch"}
    for t in table:  # the gain over the matching from-scratch baseline (same architecture, same N)
        ref = scratch.get((t["baseline"], t["n_labels"]))
        t["auc_minus_scratch"] = t["auc"] - ref["auc"] if ref and t["mode"] != "scratch" else None
    return table


def _mean_spread(mean: float, std: float | None, digits: int) -> str:
    """``mean ± std`` over seeds, or the mean alone for a single seed (which has no spread)."""
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(table: list[dict[str, Any]]) -> str:
    head = ("| N labels | objective | mode | seeds | accuracy | AUC | 1/eps_B @ 0.5 | 1/eps_B @ 0.3 | "
            "AUC - scratch |\n")
    head += "|---|---|---|---|---|---|---|---|---|\n"
    lines = []
    for t in table:
        cells = [_mean_spread(t[k], t[k + "_std"], 4 if k in ("accuracy", "auc") else 1) for k in METRICS]
        gain = t.get("auc_minus_scratch")
        cells.append("" if gain is None else f"{gain:+.4f}")
        row = f"| {t['n_labels']} | {t['objective']} | {t['mode']} | {t['n_seeds']} | "
        lines.append(row + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"
