"""Study analysis (pure numpy): seeds -> cells, gains over scratch, label efficiency, one honest sentence.

The study runner collects one row per downstream run (see :mod:`hepfm.studies.report` for the layout);
this module turns them into numbers that do not over-claim: a single seed has no spread (its std is
``None``, never a ``± 0`` that reads as a measured certainty), and a gain counts only when it exceeds the
combined seed spread of both sides.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: Test metrics of a downstream run (rejections may be ``inf``: no background passed the cut).
METRICS = ("accuracy", "auc", "rej50", "rej30")
#: Everything averaged over seeds per cell: the metrics, convergence (from the validation curve), cost.
QUANTITIES = (*METRICS, "steps_to_1pct", "epochs_to_1pct", "seconds")
#: Modes that start from a pretrained backbone (the ones compared with scratch).
PRETRAINED_MODES = ("finetune", "frozen")
#: Baseline modes that depend on the architecture alone (no pretrained weights): a study runs them once
#: per architecture, shared by every pretraining of it.
ARCHITECTURE_MODES = ("scratch", "random")
#: What identifies a cell: seeds of the same cell are averaged.
CELL_KEY = ("task", "pretrain", "arch", "mode", "recipe", "head", "n_labels")
#: Row order within a task and N: the baselines first, then the pretrained modes.
_MODE_ORDER = {"bdt": 0, "scratch": 1, "random": 2, "finetune": 3, "frozen": 4}
_VERB = {"finetune": "finetuned", "frozen": "frozen"}


def mode_label(c: dict[str, Any]) -> str:
    """A cell's mode as tables and legends show it: ``finetune[lpft]`` for a named finetuning recipe."""
    recipe = c.get("recipe")
    return f"{c['mode']}[{recipe}]" if recipe else str(c["mode"])


def convergence(curve: Sequence[Sequence[Any]], tol: float = 0.01) -> tuple[int | None, float | None]:
    """Steps and epochs at the first evaluation whose val_accuracy is within ``tol`` (relative) of the
    run's final val_accuracy: how long a run needs to get close to where it ends, which is what
    "pretraining converges faster" means, independent of the step budget the run happened to be given.

    ``curve`` rows are ``[step, epoch, val_accuracy, val_auc]``; evaluations without an accuracy are
    skipped. ``(None, None)`` for an empty curve (BDT, failed run).
    """
    points = [row for row in curve if len(row) >= 3 and row[2] is not None and math.isfinite(row[2])]
    if not points:
        return None, None
    final = float(points[-1][2])
    for step, epoch, acc, *_ in points:
        if abs(float(acc) - final) <= tol * abs(final):
            return int(step), (None if epoch is None else float(epoch))
    return None, None  # unreachable: the final point is within tol of itself


def _mean_std(values: Iterable[Any]) -> tuple[float | None, float | None, int]:
    """Mean, sample std (ddof=1) and number of infinities of the values that are not None.

    Infinite values (a rejection with no background left) are left out of mean and std: the mean is
    over the finite seeds, or ``inf`` when all are infinite. The std is ``None`` below two finite values.
    """
    v = np.array([x for x in values if x is not None], dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return None, None, 0
    finite = v[np.isfinite(v)]
    n_inf = int(v.size - finite.size)
    if finite.size == 0:
        return float("inf"), None, n_inf
    std = float(finite.std(ddof=1)) if finite.size > 1 else None
    return float(finite.mean()), std, n_inf


def _dedup(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per seed: an ``ok`` row wins over failed attempts of the same seed (a rerun that worked),
    otherwise the last attempt is kept."""
    by_seed: dict[Any, dict[str, Any]] = {}
    for r in rows:
        seed = r.get("seed")
        old = by_seed.get(seed)
        if old is None or old.get("status") != "ok":
            by_seed[seed] = r
    return list(by_seed.values())


def _cell_sort_key(c: dict[str, Any]) -> tuple:
    return (str(c["task"]), int(c["n_labels"]), _MODE_ORDER.get(c["mode"], 9), str(c["arch"]),
            str(c["head"]), str(c["pretrain"]), str(c.get("recipe") or ""))


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per cell (task, pretrain, arch, mode, head, n_labels), and the gain of each
    pretrained cell over the scratch cell of the same task, arch, head and N.

    Failed runs are counted (``n_failed``, ``failures``) but kept out of every mean. ``<q>_std`` is the
    sample std over the ok seeds, ``None`` for a single seed. ``auc_minus_scratch`` (and
    ``accuracy_minus_scratch``) come with ``*_std`` = sqrt(std_a² + std_b²), the combined seed spread, and
    ``significant`` / ``accuracy_significant``: whether |difference| exceeds it (``None`` when either side
    has one seed, since then there is no spread to compare with). This is deliberately conservative: the
    seed spread, not the standard error of the mean.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(tuple(r.get(k) for k in CELL_KEY), []).append(r)
    cells = []
    for key, rows in groups.items():
        rows = _dedup(rows)
        ok = sorted((r for r in rows if r.get("status") == "ok"), key=lambda r: r.get("seed") or 0)
        failed = [r for r in rows if r.get("status") != "ok"]
        cell: dict[str, Any] = dict(zip(CELL_KEY, key, strict=True))
        cell.update(objective=rows[0].get("objective"), pretrain_size=rows[0].get("pretrain_size"),
                    n_seeds=len(ok), seeds=[r.get("seed") for r in ok], n_failed=len(failed),
                    failures=[{"seed": r.get("seed"), "reason": r.get("reason")} for r in failed])
        conv = [convergence(r.get("curve") or []) for r in ok]
        columns: dict[str, list[Any]] = {q: [r.get(q) for r in ok] for q in (*METRICS, "seconds")}
        columns["steps_to_1pct"] = [c[0] for c in conv]
        columns["epochs_to_1pct"] = [c[1] for c in conv]
        for q in QUANTITIES:
            mean, std, n_inf = _mean_std(columns[q])
            cell[q], cell[f"{q}_std"] = mean, std
            if q.startswith("rej"):
                cell[f"{q}_n_inf"] = n_inf
        cells.append(cell)
    cells.sort(key=_cell_sort_key)
    scratch = {(c["task"], c["arch"], c["head"], c["n_labels"]): c for c in cells if c["mode"] == "scratch"}
    for c in cells:
        ref = scratch.get((c["task"], c["arch"], c["head"], c["n_labels"]))
        pretrained = c["mode"] in PRETRAINED_MODES
        c["scratch_n_seeds"] = ref["n_seeds"] if ref and pretrained else None
        for metric, flag in (("auc", "significant"), ("accuracy", "accuracy_significant")):
            diff = spread = sig = None
            if pretrained and ref and c[metric] is not None and ref[metric] is not None:
                diff = c[metric] - ref[metric]
                if c[f"{metric}_std"] is not None and ref[f"{metric}_std"] is not None:
                    spread = math.hypot(c[f"{metric}_std"], ref[f"{metric}_std"])
                    sig = abs(diff) > spread
            c[f"{metric}_minus_scratch"], c[f"{metric}_minus_scratch_std"], c[flag] = diff, spread, sig
    return cells


def _crossing(ns: np.ndarray, ys: np.ndarray, target: float) -> tuple[float | None, str, int, float]:
    """Where the scratch curve ``ys(ns)`` first reaches ``target`` from below, by linear interpolation of
    y on log10 N: ``(N, flag, segment, fraction)`` with flag ``ok``, ``below_min`` (already above at the
    smallest N) or ``beyond_max`` (never reached). Non-monotonic curves: the first crossing counts."""
    if ys[0] > target:
        return None, "below_min", 0, 0.0
    if ys[0] == target:
        return float(ns[0]), "ok", 0, 0.0
    x = np.log10(ns)
    for i in range(len(ns) - 1):
        if ys[i] < target <= ys[i + 1]:
            t = float((target - ys[i]) / (ys[i + 1] - ys[i]))
            return float(10 ** (x[i] + t * (x[i + 1] - x[i]))), "ok", i, t
    return None, "beyond_max", len(ns) - 1, 0.0


def label_efficiency(cells: list[dict[str, Any]], metric: str = "auc") -> list[dict[str, Any]]:
    """How many labels scratch needs to match each pretrained cell: the label saving of pretraining.

    For every finetune/frozen cell, ``n_eq`` is the N at which the scratch curve of the same task, arch
    and head (its measured N only) reaches the cell's mean ``metric``, interpolated linearly in log N
    between measured points; ``ratio = n_eq / n_labels`` (> 1: pretraining saves labels). Where the
    scratch curve never reaches it, ``beyond_max`` is set and ``n_eq`` is None (scratch needs more than
    its largest N); where scratch at its smallest N is already better, ``below_min``. A non-monotonic
    scratch curve (seed noise) is read at its first crossing from below.

    Uncertainty: ``n_eq_low`` / ``n_eq_high`` are the same reading at value ∓ σ, σ = sqrt(σ_pre² +
    σ_scratch²) with σ_scratch interpolated at the crossing: the combined seed spread of both curves
    (both ``None`` when either side has one seed). Their flags say when a bound leaves the range.
    """
    curves: dict[tuple, list[dict[str, Any]]] = {}
    for c in cells:
        if c["mode"] == "scratch" and c.get(metric) is not None and math.isfinite(c[metric]):
            curves.setdefault((c["task"], c["arch"], c["head"]), []).append(c)
    out = []
    for c in cells:
        value = c.get(metric)
        if c["mode"] not in PRETRAINED_MODES or value is None or not math.isfinite(value):
            continue
        ref = sorted(curves.get((c["task"], c["arch"], c["head"]), []), key=lambda r: r["n_labels"])
        entry: dict[str, Any] = {k: c.get(k) for k in (*CELL_KEY, "objective", "pretrain_size", "n_seeds")}
        entry.update(metric=metric, value=value, value_std=c.get(f"{metric}_std"), n_eq=None,
                     n_eq_low=None, n_eq_high=None, n_eq_low_flag=None, n_eq_high_flag=None, ratio=None,
                     ratio_low=None, ratio_high=None, beyond_max=False, below_min=False,
                     scratch_n=[r["n_labels"] for r in ref])
        if not ref:
            entry["flag"] = "no_scratch"
            out.append(entry)
            continue
        ns = np.array([r["n_labels"] for r in ref], dtype=float)
        ys = np.array([r[metric] for r in ref], dtype=float)
        n_eq, flag, i, t = _crossing(ns, ys, value)
        entry.update(flag=flag, n_eq=n_eq, beyond_max=flag == "beyond_max", below_min=flag == "below_min")
        s_i, s_j = ref[i].get(f"{metric}_std"), ref[min(i + 1, len(ref) - 1)].get(f"{metric}_std")
        s_scr = None if s_i is None or s_j is None else (1 - t) * s_i + t * s_j
        sigma = None if s_scr is None or entry["value_std"] is None else math.hypot(s_scr, entry["value_std"])
        if sigma is not None:
            lo, lo_flag, *_ = _crossing(ns, ys, value - sigma)
            hi, hi_flag, *_ = _crossing(ns, ys, value + sigma)
            entry.update(n_eq_low=lo, n_eq_high=hi, n_eq_low_flag=lo_flag, n_eq_high_flag=hi_flag)
        n = float(c["n_labels"])
        for key in ("", "_low", "_high"):
            v = entry[f"n_eq{key}"]
            entry[f"ratio{key}"] = None if v is None else v / n
        out.append(entry)
    return out


def _describe(c: dict[str, Any], with_task: bool, with_head: bool) -> str:
    """How a pretrained cell is named in a sentence, e.g. ``finetuned jetclr-n8000 (mlp head) on top``."""
    recipe = f" (recipe {c['recipe']})" if c.get("recipe") else ""
    text = f"{_VERB.get(c['mode'], c['mode'])} {c['pretrain']}{recipe}"
    if with_head:
        text += f" ({c['head']} head)"
    if with_task:
        text += f" on {c['task']}"
    return text


def _gain(c: dict[str, Any]) -> str:
    spread = c.get("auc_minus_scratch_std")
    text = f"AUC {c['auc_minus_scratch']:+.4f}"
    return text if spread is None else f"{text} ± {spread:.4f}"


def _ns(cells: Iterable[dict[str, Any]]) -> str:
    return ", ".join(f"N={n}" for n in sorted({c["n_labels"] for c in cells}))


def summary_sentence(cells: list[dict[str, Any]]) -> str:
    """One sentence on whether pretraining beat scratch in AUC beyond the seed spread, and where.

    A gain is claimed only where :func:`aggregate` marked it ``significant`` (both sides with >= 2
    seeds, |difference| > combined spread); single-seed comparisons are reported as "single seed: no
    spread, cannot tell". The pretrained configuration with the most such gains is named, with the N
    where it does not beat scratch.
    """
    pretrained = [c for c in cells if c["mode"] in PRETRAINED_MODES]
    comps = [c for c in pretrained if c.get("auc_minus_scratch") is not None]
    if not comps:
        if not pretrained:
            return "no pretrained runs in the study: nothing to compare with scratch."
        if not any(c["n_seeds"] for c in pretrained):
            return "no pretrained run finished: nothing to compare with scratch."
        return "no from-scratch baseline matches the pretrained runs: cannot tell whether pretraining helps."
    with_task = len({c["task"] for c in comps}) > 1
    with_head = len({c["head"] for c in comps}) > 1
    tested = [c for c in comps if c.get("significant") is not None]
    untested = [c for c in comps if c.get("significant") is None]
    if not tested:
        best = max(comps, key=lambda c: c["auc_minus_scratch"])
        return (f"single seed: no spread, cannot tell whether pretraining beats scratch (largest difference: "
                f"{_describe(best, with_task, with_head)} at N={best['n_labels']}, {_gain(best)}).")
    wins = {id(c) for c in tested if c["significant"] and c["auc_minus_scratch"] > 0}
    losses = {id(c) for c in tested if c["significant"] and c["auc_minus_scratch"] < 0}
    if not wins:
        best = max(tested, key=lambda c: c["auc_minus_scratch"])
        text = (f"no pretrained model beats scratch beyond the seed spread (best: "
                f"{_describe(best, with_task, with_head)} at N={best['n_labels']}, {_gain(best)})")
        if losses:
            text += f"; scratch is better beyond the spread in {len(losses)} of {len(tested)} cells"
    else:
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for c in comps:
            groups.setdefault((c["task"], c["pretrain"], c["mode"], c.get("recipe"), c["head"]), []).append(c)

        def score(key: tuple) -> tuple[int, float]:
            won = [c for c in groups[key] if id(c) in wins]
            return len(won), max((c["auc_minus_scratch"] for c in won), default=-math.inf)

        rows = sorted(groups[max(groups, key=score)], key=lambda c: c["n_labels"])
        won = [c for c in rows if id(c) in wins]
        text = (f"{_describe(won[0], with_task, with_head)} beats scratch beyond the seed spread at "
                + ", ".join(f"N={c['n_labels']} ({_gain(c)})" for c in won))
        not_won = [c for c in rows if c.get("significant") is not None and id(c) not in wins]
        if not_won:
            text += f" but not at {_ns(not_won)}"
        worse = [c for c in rows if id(c) in losses]
        if worse:
            text += f" (scratch is better beyond the spread at {_ns(worse)})"
        single = [c for c in rows if c.get("significant") is None]
        if single:
            text += f"; at {_ns(single)} single seed: no spread, cannot tell"
        if len(wins) > len(won):
            text += f"; {len(wins)} of {len(tested)} pretrained cells with seeds to compare beat scratch"
        untested = [c for c in untested if all(c is not r for r in rows)]
    if untested:
        text += f"; {len(untested)} more single-seed cells: no spread, cannot tell"
    return text + "."
