"""The study report: CSV tables, figures, ``report.md`` and a self-contained ``report.html``.

:func:`write_report` takes the runner's ``result`` (layout below) and the study directory. Both documents
are built from one list of blocks (headings, paragraphs, tables, figures), so the Markdown and the HTML
cannot disagree; the HTML embeds every PNG as a base64 data URI and its CSS inline, so it opens from the
file system, is mailed as one file and loads nothing from a network. Every file is written atomically.

``result``: ``name``, ``wall_seconds``, ``hardware``, ``command``, ``versions``; ``runs`` (one dict per
downstream run: task, objective, pretrain, pretrain_size, arch, mode, head, n_labels, seed, status,
reason, the metrics, steps, epochs, seconds, device, ``curve`` = [[step, epoch, val_accuracy, val_auc]],
run_dir); ``pretraining`` (key, objective, pretrain_size, status, reason, steps, jets_seen, seconds,
jets_per_second, device, n_backbone_parameters, ``loss_curve``, ``val_loss_curve``, ``diagnostics``
with ``map_png`` relative to the study directory, run_dir).

Figures use mplhep's HEP style inside a matplotlib ``rc_context`` (global matplotlib state is left as
it was), plain matplotlib if mplhep is not installed, and are skipped with a note in the report if
matplotlib itself is not (``pip install hepfm[plot]``).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import io
import logging
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hepfm.evaluation.plots import pyplot, save_figure
from hepfm.io import atomic_path
from hepfm.studies.analysis import (
    ARCHITECTURE_MODES,
    METRICS,
    PRETRAINED_MODES,
    aggregate,
    convergence,
    label_efficiency,
    mode_label,
    summary_sentence,
)

log = logging.getLogger(__name__)

#: mplhep style (experiment-neutral), with a font size and figure size that suit a report page.
STYLE = "ROOT"
STYLE_TWEAKS: dict[str, Any] = {"font.size": 13.0, "legend.fontsize": 8.0, "figure.figsize": (7.0, 5.0)}

#: Columns of results.csv, in order (any other run key but the curve is appended after these).
RUN_COLUMNS = ("task", "objective", "pretrain", "pretrain_size", "arch", "mode", "recipe", "head",
               "n_labels", "seed", "status", "reason", *METRICS, "steps", "epochs", "steps_to_1pct",
               "epochs_to_1pct", "seconds", "device", "run_dir")
_DIGITS = {"accuracy": 4, "auc": 4, "rej50": 1, "rej30": 1, "steps_to_1pct": 0, "epochs_to_1pct": 2,
           "seconds": 1}
_LABEL = {"accuracy": "accuracy", "auc": "AUC", "rej50": "1/ε_B @ ε_S=0.5", "rej30": "1/ε_B @ ε_S=0.3",
          "steps_to_1pct": "steps to 1 %", "seconds": "seconds"}
# Figure text is ASCII or mathtext: a glyph missing from the style's font warns (an error in the tests).
_AXIS = {"auc": "AUC", "rej50": r"background rejection $1/\varepsilon_B$ at $\varepsilon_S = 0.5$"}

# (kind, ...) blocks: ("h", level, text) | ("p", text) | ("ul", [items]) | ("table", headers, rows)
# | ("img", path relative to the study dir, caption) | ("pre", text)
Block = tuple[Any, ...]


# --------------------------------------------------------------------------- formatting


def _num(x: Any, digits: int) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:.{digits}f}"


def mean_spread(mean: float | None, std: float | None, digits: int) -> str:
    """``mean ± std`` over seeds, or the mean alone for a single seed (which has no spread)."""
    if mean is None:
        return "—"
    return _num(mean, digits) if std is None else f"{_num(mean, digits)} ± {_num(std, digits)}"


def _cell_value(c: dict[str, Any], q: str) -> str:
    text = mean_spread(c.get(q), c.get(f"{q}_std"), _DIGITS[q])
    n_inf = c.get(f"{q}_n_inf") or 0
    if n_inf and math.isfinite(c.get(q) or 0.0):
        text += f" ({n_inf} seed{'s' if n_inf > 1 else ''} ∞)"
    return text


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.2f} h"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "task"


def _line_label(c: dict[str, Any], many_archs: bool, many_heads: bool) -> str:
    """Legend name of a cell's curve over N: pretraining and mode, the baseline and its architecture."""
    if c["mode"] == "bdt":
        return "BDT (high-level features)"
    baseline = {"scratch": "scratch", "random": "random init, frozen"}.get(c["mode"])
    label = f"{baseline} ({c['arch']})" if baseline and many_archs else (
        baseline or f"{mode_label(c)} {c['pretrain']}")
    return f"{label} [{c['head']}]" if many_heads else label


# --------------------------------------------------------------------------- figures


@contextlib.contextmanager
def hep_style() -> Iterator[None]:
    """mplhep's style for the figures drawn inside, undone on exit (``rc_context``); plain matplotlib if
    mplhep is not installed."""
    import matplotlib

    with matplotlib.rc_context():
        try:
            import mplhep
        except ImportError:
            mplhep = None
        if mplhep is not None:
            mplhep.style.use(STYLE)
        matplotlib.style.use(STYLE_TWEAKS)
        yield


def _legend(ax: Any, outside: bool = False) -> None:
    """The axes' legend; ``outside`` puts it right of the axes, where many lines do not hide the data."""
    if ax.get_legend_handles_labels()[0]:  # an empty legend() warns, and warnings are errors in the tests
        where = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0)} if outside else {}
        ax.legend(fontsize=STYLE_TWEAKS["legend.fontsize"], **where)


def pretraining_colours(keys: list[Any]) -> dict[Any, Any]:
    """One colour per pretraining from a qualitative map (a style's own cycle may repeat after a few)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(keys) <= 10 else "tab20"]
    return {k: cmap(i % cmap.N) for i, k in enumerate(keys)}


def _styles(cells: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """One colour per pretraining (shared by its modes), a line style per mode, grey baselines."""
    keys = sorted({_colour_key(c) for c in cells if c["mode"] in PRETRAINED_MODES})
    colour = pretraining_colours(keys)
    scratch = sorted({c["arch"] for c in cells if c["mode"] in ARCHITECTURE_MODES})
    out: dict[tuple, dict[str, Any]] = {}
    for c in cells:
        key = _line_key(c)
        if c["mode"] == "bdt":
            out[key] = {"color": "0.45", "linestyle": "-.", "marker": "s"}
        elif c["mode"] in ARCHITECTURE_MODES:  # grey per architecture; random init dash-dotted
            grey = 0.1 + 0.5 * scratch.index(c["arch"]) / max(len(scratch), 1)
            scratch_line = c["mode"] == "scratch"
            out[key] = {"color": f"{grey:.2f}", "linestyle": ":" if scratch_line else (0, (3, 1, 1, 1)),
                        "marker": "o" if scratch_line else "x"}
        else:
            out[key] = {"color": colour[_colour_key(c)],
                        "linestyle": "-" if c["mode"] == "finetune" else "--", "marker": "o"}
    return out


def _line_key(c: dict[str, Any]) -> tuple:
    return (c["pretrain"], c["arch"], c["mode"], c.get("recipe") or "", c["head"])


def _colour_key(c: dict[str, Any]) -> tuple:
    """A pretraining's modes share a colour; its finetuning recipes each get their own."""
    return (c["pretrain"], c["arch"], c.get("recipe") or "")


def _lines(cells: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    lines: dict[tuple, list[dict[str, Any]]] = {}
    for c in cells:
        lines.setdefault(_line_key(c), []).append(c)
    return {k: sorted(v, key=lambda c: c["n_labels"]) for k, v in lines.items()}


def _plot_vs_n(ax: Any, cells: list[dict[str, Any]], q: str, styles: dict[tuple, dict[str, Any]],
               log_y: bool = False) -> bool:
    """One line per (pretraining, mode, head) of mean ``q`` vs N with a ± std band; False if nothing."""
    many_archs = len({c["arch"] for c in cells if c["mode"] == "scratch"}) > 1
    many_heads = len({c["head"] for c in cells if c["mode"] != "bdt"}) > 1
    drawn = False
    for key, line in _lines(cells).items():
        pts = [c for c in line if c.get(q) is not None and math.isfinite(c[q]) and (not log_y or c[q] > 0)]
        if not pts:
            continue
        n = np.array([c["n_labels"] for c in pts], dtype=float)
        y = np.array([c[q] for c in pts], dtype=float)
        s = np.array([c.get(f"{q}_std") if c.get(f"{q}_std") is not None else np.nan for c in pts])
        st = styles[key]
        ax.plot(n, y, label=_line_label(line[0], many_archs, many_heads), **st)
        band = ~np.isnan(s)
        if band.sum() >= 2:
            lo = y - np.where(band, s, 0.0)
            if log_y:
                lo = np.maximum(lo, y * 0.05)
            ax.fill_between(n[band], lo[band], (y + np.where(band, s, 0.0))[band], color=st["color"],
                            alpha=0.2, linewidth=0)
        elif band.any():
            ax.errorbar(n[band], y[band], yerr=s[band], fmt="none", ecolor=st["color"], capsize=3)
        drawn = True
    if drawn:
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
    ax.set_xlabel("N labels")
    ax.set_ylabel(_AXIS.get(q, q))
    ax.grid(alpha=0.3, which="both")
    return drawn


def _fig_performance(path: Path, task: str, cells: list[dict[str, Any]]) -> None:
    plt = pyplot()
    styles = _styles(cells)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    _plot_vs_n(a1, cells, "auc", styles)
    _plot_vs_n(a2, cells, "rej50", styles, log_y=True)
    a1.set_title(f"{task}: AUC", fontsize=12)
    a2.set_title(f"{task}: " + r"$1/\varepsilon_B$ at $\varepsilon_S = 0.5$", fontsize=12)
    _legend(a2, outside=True)
    save_figure(fig, path)


def _fig_convergence(path: Path, task: str, cells: list[dict[str, Any]]) -> None:
    plt = pyplot()
    cells = [c for c in cells if c["mode"] != "bdt"]
    fig, ax = plt.subplots()
    _plot_vs_n(ax, cells, "steps_to_1pct", _styles(cells), log_y=True)
    ax.set_ylabel("steps to within 1 % of final val. accuracy")
    ax.set_title(f"{task}: convergence", fontsize=12)
    _legend(ax, outside=True)
    save_figure(fig, path)


def mean_curve(curves: Sequence[Sequence[Sequence[Any]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std of val_accuracy over seeds at each evaluated step (over the seeds that reached that
    step: runs stopped early drop out, they are not padded); std is NaN where fewer than two seeds."""
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for row in curve:
            if len(row) >= 3 and row[2] is not None and math.isfinite(row[2]):
                by_step.setdefault(int(row[0]), []).append(float(row[2]))
    steps = np.array(sorted(by_step), dtype=float)
    mean = np.array([np.mean(by_step[int(s)]) for s in steps])
    std = np.array([np.std(by_step[int(s)], ddof=1) if len(by_step[int(s)]) > 1 else np.nan for s in steps])
    return steps, mean, std


def _fig_val_curves(path: Path, task: str, cells: list[dict[str, Any]], runs: list[dict[str, Any]]) -> bool:
    """Validation accuracy vs step at the smallest N, pretrained vs scratch, mean ± std over seeds."""
    trained = [c for c in cells if c["mode"] != "bdt" and c["n_seeds"]]
    if not trained:
        return False
    n_min = min(c["n_labels"] for c in trained)
    at_n = [c for c in trained if c["n_labels"] == n_min]
    styles = _styles(at_n)
    many_archs = len({c["arch"] for c in at_n if c["mode"] == "scratch"}) > 1
    many_heads = len({c["head"] for c in at_n}) > 1
    plt = pyplot()
    fig, ax = plt.subplots()
    for c in at_n:
        curves = [r.get("curve") or [] for r in runs
                  if r.get("status") == "ok" and r.get("task") == task and r.get("n_labels") == n_min
                  and all(r.get(k) == c[k] for k in ("pretrain", "arch", "mode", "head"))
                  and (r.get("recipe") or "") == (c.get("recipe") or "")]
        steps, mean, std = mean_curve(curves)
        if steps.size == 0:
            continue
        st = {k: v for k, v in styles[_line_key(c)].items() if k != "marker"}
        ax.plot(steps, mean, label=f"{_line_label(c, many_archs, many_heads)} ({c['n_seeds']} seeds)", **st)
        ok = ~np.isnan(std)
        if ok.sum() >= 2:
            ax.fill_between(steps[ok], (mean - std)[ok], (mean + std)[ok], color=st["color"], alpha=0.2,
                            linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{task}: validation curves at N = {n_min}", fontsize=12)
    ax.grid(alpha=0.3)
    _legend(ax, outside=True)
    save_figure(fig, path)
    return True


def _fig_pretrain_probes(path: Path, pretraining: list[dict[str, Any]]) -> bool:
    """Linear (solid) and k-NN (dashed) probe AUC vs pretraining step; step 0 is the random init."""
    runs = [p for p in pretraining if (p.get("probe_curves") or {}).get("probe_linear_auc")]
    if not runs:
        return False
    plt = pyplot()
    fig, ax = plt.subplots()
    for i, p in enumerate(runs):
        for name, style, kind in (("probe_linear_auc", "-", "linear"), ("probe_knn_auc", "--", "k-NN")):
            pts = np.array([row[:2] for row in p["probe_curves"].get(name) or [] if row[1] is not None],
                           dtype=float)
            if pts.size:
                ax.plot(pts[:, 0], pts[:, 1], linestyle=style, marker="o", markersize=3, color=f"C{i % 10}",
                        label=f"{p['key']} ({kind})")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("probe AUC (frozen embedding)")
    ax.set_title("embedding probes during pretraining (solid: linear, dashed: k-NN)", fontsize=12)
    ax.grid(alpha=0.3)
    _legend(ax, outside=True)
    save_figure(fig, path)
    return True


def _fig_pretrain_loss(path: Path, pretraining: list[dict[str, Any]]) -> bool:
    runs = [p for p in pretraining if p.get("loss_curve") or p.get("val_loss_curve")]
    if not runs:
        return False
    plt = pyplot()
    fig, ax = plt.subplots()
    values: list[float] = []
    for i, p in enumerate(runs):
        for name, style in (("loss_curve", "-"), ("val_loss_curve", "--")):
            pts = np.array([row[:2] for row in p.get(name) or [] if row[1] is not None], dtype=float)
            if pts.size == 0:
                continue
            kind = "train" if name == "loss_curve" else "val"
            ax.plot(pts[:, 0], pts[:, 1], linestyle=style, color=f"C{i % 10}", label=f"{p['key']} ({kind})")
            values.extend(pts[:, 1][np.isfinite(pts[:, 1])].tolist())
    if values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("pretraining loss")
    ax.set_title("pretraining loss (solid: train, dashed: validation)", fontsize=12)
    ax.grid(alpha=0.3, which="both")
    _legend(ax, outside=True)
    save_figure(fig, path)
    return True


def _fig_label_efficiency(path: Path, task: str, eff: list[dict[str, Any]]) -> bool:
    """N_eq (labels scratch needs) vs N; above the diagonal pretraining saves labels. Arrows: out of the
    measured scratch range (up: more than its largest N, down: fewer than its smallest)."""
    if not eff:
        return False
    plt = pyplot()
    fig, ax = plt.subplots()
    lines: dict[tuple, list[dict[str, Any]]] = {}
    for e in eff:
        lines.setdefault((e["pretrain"], mode_label(e), e["head"]), []).append(e)
    many_heads = len({e["head"] for e in eff}) > 1
    all_n = [e["n_labels"] for e in eff] + [n for e in eff for n in e["scratch_n"]]
    colours = pretraining_colours(sorted({e["pretrain"] for e in eff}))
    for (pretrain, mode, head), rows in sorted(lines.items()):
        rows.sort(key=lambda e: e["n_labels"])
        colour = colours[pretrain]
        label = f"{mode} {pretrain}" + (f" [{head}]" if many_heads else "")
        ok = [e for e in rows if e["n_eq"] is not None]
        if ok:
            n = np.array([e["n_labels"] for e in ok], dtype=float)
            y = np.array([e["n_eq"] for e in ok])
            lo = np.array([e["n_eq_low"] if e["n_eq_low"] is not None else np.nan for e in ok])
            hi = np.array([e["n_eq_high"] if e["n_eq_high"] is not None else np.nan for e in ok])
            ax.plot(n, y, "o-" if mode == "finetune" else "o--", color=colour, label=label)
            bars = ~np.isnan(lo) & ~np.isnan(hi)
            if bars.any():
                err = np.array([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])[:, bars]
                ax.errorbar(n[bars], y[bars], yerr=err, fmt="none", ecolor=colour, capsize=3)
            label = "_"  # the legend names each line once
        for e in rows:
            if e["beyond_max"]:
                ax.plot(e["n_labels"], max(e["scratch_n"]), "^", color=colour, markersize=9, label=label)
                label = "_"
            elif e["below_min"]:
                ax.plot(e["n_labels"], min(e["scratch_n"]), "v", color=colour, markersize=9, label=label)
                label = "_"
    lo_n, hi_n = min(all_n), max(all_n)
    ax.plot([lo_n, hi_n], [lo_n, hi_n], color="0.5", linestyle=":", label=r"no gain ($N_\mathrm{eq} = N$)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N labels (pretrained)")
    ax.set_ylabel(r"$N_\mathrm{eq}$: labels scratch needs for the same AUC")
    ax.set_title(f"{task}: label efficiency (arrow: outside the scratch range)", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    _legend(ax, outside=True)
    save_figure(fig, path)
    return True


def _figures(out: Path, result: dict[str, Any], cells: list[dict[str, Any]],
             eff: list[dict[str, Any]]) -> dict[str, list[tuple[str, str]]]:
    """Draw every figure; section -> [(path relative to out, caption)]."""
    figs: dict[str, list[tuple[str, str]]] = {"performance": [], "convergence": [], "curves": [],
                                              "pretraining": [], "efficiency": []}
    runs = result.get("runs") or []
    with hep_style():
        for task in sorted({c["task"] for c in cells}):
            tc = [c for c in cells if c["task"] == task]
            slug = _slug(task)
            rel = f"figures/performance_{slug}.png"
            _fig_performance(out / rel, task, tc)
            figs["performance"].append((rel, f"{task}: AUC and 1/ε_B at ε_S = 0.5 vs N (band: ± std over "
                                             "seeds)"))
            rel = f"figures/convergence_{slug}.png"
            _fig_convergence(out / rel, task, tc)
            figs["convergence"].append((rel, f"{task}: steps to within 1 % of the final validation accuracy"))
            rel = f"figures/val_curves_{slug}.png"
            if _fig_val_curves(out / rel, task, tc, runs):
                figs["curves"].append((rel, f"{task}: validation accuracy vs step at the smallest N"))
            rel = f"figures/label_efficiency_{slug}.png"
            if _fig_label_efficiency(out / rel, task, [e for e in eff if e["task"] == task]):
                figs["efficiency"].append((rel, f"{task}: labels scratch needs (N_eq) vs labels used"))
        rel = "figures/pretrain_loss.png"
        if _fig_pretrain_loss(out / rel, result.get("pretraining") or []):
            figs["pretraining"].append((rel, "pretraining loss per run"))
        rel = "figures/pretrain_probes.png"
        if _fig_pretrain_probes(out / rel, result.get("pretraining") or []):
            figs["pretraining"].append((rel, "probe AUC of the frozen embedding during pretraining (step 0: "
                                             "the random initialisation, the control)"))
    return figs


# --------------------------------------------------------------------------- tables


def _run_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    extra = sorted({k for r in runs for k in r} - set(RUN_COLUMNS) - {"curve"})
    columns = [*RUN_COLUMNS, *extra]
    rows = []
    for r in runs:
        steps, epochs = convergence(r.get("curve") or [])
        rows.append({**{k: r.get(k) for k in columns}, "steps_to_1pct": steps, "epochs_to_1pct": epochs})
    return columns, rows


def _cell_rows(cells: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    rows = []
    for c in cells:
        row = {k: v for k, v in c.items() if k not in ("failures", "seeds")}
        row["seeds"] = " ".join(str(s) for s in c["seeds"])
        row["failures"] = "; ".join(f"seed {f['seed']}: {f['reason']}" for f in c["failures"])
        rows.append(row)
    columns = list(rows[0]) if rows else []
    return columns, rows


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def _summary_table(cells: list[dict[str, Any]], task: str | None = None) -> Block:
    """The cells of one task (``task=None``: of all tasks, with a task column) as a table block."""
    with_task = task is None and len({c["task"] for c in cells}) > 1
    headers = [*(["task"] if with_task else []), "N", "pretraining", "arch", "mode", "head", "seeds",
               "failed", *(_LABEL[m] for m in METRICS), "AUC - scratch", "beyond spread", "steps to 1 %",
               "seconds"]
    rows = []
    for c in (c for c in cells if task is None or c["task"] == task):
        diff = c.get("auc_minus_scratch")
        sig = c.get("significant")
        rows.append([*([c["task"]] if with_task else []), c["n_labels"], c["pretrain"] or "—", c["arch"],
                     mode_label(c), c["head"], c["n_seeds"], c["n_failed"] or "",
                     *(_cell_value(c, m) for m in METRICS),
                     _signed(diff, c.get("auc_minus_scratch_std")),
                     "" if diff is None else ("single seed" if sig is None else ("yes" if sig else "no")),
                     _cell_value(c, "steps_to_1pct"), _cell_value(c, "seconds")])
    return ("table", headers, rows)


def cells_markdown(cells: list[dict[str, Any]]) -> str:
    """The cells of :func:`~hepfm.studies.analysis.aggregate` as one Markdown table (mean ± std over seeds,
    the mean alone for a single seed): what ``hepfm study`` prints when a study ends."""
    return render_markdown([_summary_table(cells)])


def _signed(diff: float | None, std: float | None) -> str:
    if diff is None:
        return ""
    return f"{diff:+.4f}" if std is None else f"{diff:+.4f} ± {std:.4f}"


def _bound(v: float | None, flag: str | None, ns: list[int]) -> str:
    if flag == "below_min":
        return f"< {min(ns)}"
    if flag == "beyond_max":
        return f"> {max(ns)}"
    return "" if v is None else f"{v:.0f}"


def _efficiency_table(eff: list[dict[str, Any]]) -> Block:
    headers = ["task", "N", "pretraining", "mode", "head", "seeds", "AUC", "scratch needs N_eq",
               "N_eq range (± σ)", "label saving N_eq/N"]
    rows = []
    for e in eff:
        main = "no scratch baseline" if e.get("flag") == "no_scratch" else _bound(e["n_eq"], e["flag"],
                                                                                  e["scratch_n"])
        spread = ("" if e["n_eq_low_flag"] is None else
                  f"{_bound(e['n_eq_low'], e['n_eq_low_flag'], e['scratch_n'])} … "
                  f"{_bound(e['n_eq_high'], e['n_eq_high_flag'], e['scratch_n'])}")
        if e["ratio"] is not None:
            saving = f"{e['ratio']:.2f}×"
        elif e["beyond_max"]:
            saving = f"> {max(e['scratch_n']) / e['n_labels']:.2f}×"
        elif e["below_min"]:
            saving = f"< {min(e['scratch_n']) / e['n_labels']:.2f}×"
        else:
            saving = ""
        rows.append([e["task"], e["n_labels"], e["pretrain"], mode_label(e), e["head"], e["n_seeds"],
                     mean_spread(e["value"], e["value_std"], 4), main, spread, saving])
    return ("table", headers, rows)


def training_seconds(p: dict[str, Any]) -> float | None:
    """A pretraining's training time as jets seen / rate: the whole run's, also when it was resumed (its
    summary's wall time counts the last invocation only)."""
    jets, rate = p.get("jets_seen"), p.get("jets_per_second")
    return jets / rate if jets and rate else p.get("seconds")


def _compute_table(pretraining: list[dict[str, Any]]) -> Block:
    headers = ["pretraining", "objective", "pretraining jets", "status", "steps", "jets seen",
               "training seconds (jets seen / rate)", "jets/s", "device", "backbone parameters"]
    rows = [[p.get("key"), p.get("objective"), p.get("pretrain_size") or "", p.get("status"), p.get("steps"),
             p.get("jets_seen"), _num(training_seconds(p), 0), _num(p.get("jets_per_second"), 0),
             p.get("device") or "", p.get("n_backbone_parameters")] for p in pretraining]
    return ("table", headers, rows)


def _diagnostics(out: Path, pretraining: list[dict[str, Any]]) -> list[Block]:
    with_diag = [p for p in pretraining if p.get("diagnostics")]
    if not with_diag:
        return [("p", "No representation diagnostics were recorded.")]
    headers = ["pretraining", "linear probe accuracy", "kNN accuracy", "effective rank",
               "mean pairwise cosine", "probe AUC: random init", "probe AUC: end", "embedding map"]
    rows, maps = [], []
    for p in with_diag:
        d = p["diagnostics"]
        link = d.get("map_png") or ""
        if link and (out / link).is_file():
            maps.append(("img", link, f"{p['key']}: embedding map"))
        elif link:
            link = f"{link} (missing)"
        probe = (p.get("probe_curves") or {}).get("probe_linear_auc") or []
        at_init = next((v for step, v in probe if step == 0), None)
        rows.append([p.get("key"), _num(d.get("linear_probe_accuracy"), 4), _num(d.get("knn_accuracy"), 4),
                     _num(d.get("effective_rank"), 1), _num(d.get("mean_pairwise_cosine"), 3),
                     _num(at_init, 4), _num(probe[-1][1] if probe else None, 4), link])
    return [("table", headers, rows), *maps]


def _failed(runs: list[dict[str, Any]], pretraining: list[dict[str, Any]]) -> list[Block]:
    bad_pre = [p for p in pretraining if p.get("status") != "ok"]
    bad_runs = [r for r in runs if r.get("status") != "ok"]
    if not bad_pre and not bad_runs:
        return [("p", "None: every pretraining and downstream run finished.")]
    blocks: list[Block] = []
    if bad_pre:
        blocks.append(("table", ["pretraining", "objective", "pretraining jets", "reason", "run dir"],
                       [[p.get("key"), p.get("objective"), p.get("pretrain_size") or "",
                         p.get("reason") or "unknown", p.get("run_dir") or ""] for p in bad_pre]))
    if bad_runs:
        headers = ["task", "N", "pretraining", "arch", "mode", "head", "seed", "reason", "run dir"]
        blocks.append(("table", headers,
                       [[r.get("task"), r.get("n_labels"), r.get("pretrain") or "—", r.get("arch"),
                         r.get("mode"), r.get("head"), r.get("seed"), r.get("reason") or "unknown",
                         r.get("run_dir") or ""] for r in bad_runs]))
    return blocks


def _blocks(out: Path, result: dict[str, Any], cells: list[dict[str, Any]], eff: list[dict[str, Any]],
            figs: dict[str, list[tuple[str, str]]] | None, summary: str) -> list[Block]:
    runs = result.get("runs") or []
    pretraining = result.get("pretraining") or []
    versions = result.get("versions") or {}
    n_ok = sum(r.get("status") == "ok" for r in runs)

    def images(section: str) -> list[Block]:
        return [("img", rel, caption) for rel, caption in (figs or {}).get(section, [])]

    blocks: list[Block] = [
        ("h", 1, f"Study: {result.get('name', 'unnamed')}"),
        ("p", f"Summary: {summary}"),
        ("ul", [f"hardware: {result.get('hardware') or 'unknown'}",
                f"wall time: {_duration(result.get('wall_seconds'))}",
                f"runs: {n_ok} of {len(runs)} downstream runs finished, "
                f"{sum(p.get('status') == 'ok' for p in pretraining)} of {len(pretraining)} pretrainings",
                *([f"versions: {', '.join(f'{k} {v}' for k, v in sorted(versions.items()))}"]
                  if isinstance(versions, dict) else [f"versions: {versions}"])]),
        ("p", "Command:"),
        ("pre", str(result.get("command") or "")),
        ("p", "Tables give mean ± sample std over seeds, or the mean alone for a single seed (no spread). "
              "A difference to scratch is 'beyond spread' when it exceeds sqrt(std_pretrained² + "
              "std_scratch²). Per-run rows: results.csv; per-cell rows: cells.csv."),
    ]
    if figs is None:
        blocks.append(("p", "Figures skipped: matplotlib is not installed (pip install hepfm[plot])."))
    for task in sorted({c["task"] for c in cells}):
        blocks += [("h", 2, f"Results: {task}"), _summary_table(cells, task)]
    blocks += [("h", 2, "Performance vs labels"), *images("performance"),
               ("h", 2, "Label efficiency"),
               ("p", "N_eq: the labels the from-scratch model (same task, architecture, head) needs for the "
                     "same mean AUC, interpolated linearly in log N between its measured N (first crossing "
                     "from below). Label saving N_eq/N > 1: pretraining saves labels. '> N' / '< N': outside "
                     "the measured scratch range. Range: N_eq at AUC ∓ the combined seed spread."),
               _efficiency_table(eff) if eff else ("p", "No pretrained cell to compare."),
               *images("efficiency"),
               ("h", 2, "Convergence"), *images("convergence"), *images("curves"),
               ("h", 2, "Pretraining"), *images("pretraining"),
               ("h", 3, "Compute"), _compute_table(pretraining) if pretraining else ("p", "No pretraining."),
               ("h", 3, "Representation diagnostics"), *_diagnostics(out, pretraining),
               ("h", 2, "Failed"), *_failed(runs, pretraining)]
    return blocks


# --------------------------------------------------------------------------- rendering


def _md_cell(v: Any) -> str:
    return " ".join(str(v).split()).replace("|", "\\|")


def render_markdown(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if b[0] == "h":
            parts.append(f"{'#' * b[1]} {b[2]}")
        elif b[0] == "p":
            parts.append(b[1])
        elif b[0] == "ul":
            parts.append("\n".join(f"- {item}" for item in b[1]))
        elif b[0] == "pre":
            parts.append(f"```\n{b[1]}\n```")
        elif b[0] == "img":
            parts.append(f"![{b[2]}]({b[1]})\n\n*{b[2]}*")
        elif b[0] == "table":
            lines = ["| " + " | ".join(_md_cell(h) for h in b[1]) + " |", "|" + "---|" * len(b[1])]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in b[2]]
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3 { color: #113; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #eef; } tr:nth-child(even) td { background: #fafafa; }
pre { background: #f4f4f4; padding: .6em; overflow-x: auto; white-space: pre-wrap; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { font-size: .85em; color: #555; }
"""


def render_html(blocks: list[Block], out: Path, title: str) -> str:
    """The blocks as one HTML file: PNGs inlined as data URIs, CSS inline, no external reference."""
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
             f"<title>{e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>"]
    for b in blocks:
        if b[0] == "h":
            parts.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "pre":
            parts.append(f"<pre>{e(b[1])}</pre>")
        elif b[0] == "img":
            data = base64.b64encode((out / b[1]).read_bytes()).decode("ascii")
            parts.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{e(b[2])}\">"
                         f"<figcaption>{e(b[2])}</figcaption></figure>")
        elif b[0] == "table":
            head = "".join(f"<th>{e(str(h))}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in b[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- entry point


def write_report(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write the study's tables, figures and report into the study directory ``out``.

    Returns name -> path of everything written: ``results.csv`` (one row per downstream run, curves left
    out, plus steps/epochs to 1 %), ``cells.csv`` (one row per cell, :func:`aggregate`), ``figures/*.png``
    (keyed by their relative path),
    ``report.md`` and ``report.html``. ``out`` is the study directory: the diagnostics' ``map_png`` paths
    are relative to it.
    """
    out = Path(out)
    runs = result.get("runs") or []
    cells = aggregate(runs)
    eff = label_efficiency(cells)
    summary = summary_sentence(cells)
    written: dict[str, Path] = {}

    columns, rows = _run_rows(runs)
    _write_csv(out / "results.csv", columns, rows)
    columns, rows = _cell_rows(cells)
    _write_csv(out / "cells.csv", columns, rows)
    written.update({name: out / name for name in ("results.csv", "cells.csv")})

    try:
        pyplot()
    except ImportError:
        log.warning("matplotlib is not installed: the study report has no figures (pip install hepfm[plot])")
        figs = None
    else:
        figs = _figures(out, result, cells, eff)
        written.update({rel: out / rel for section in figs.values() for rel, _ in section})

    blocks = _blocks(out, result, cells, eff, figs, summary)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_markdown(blocks))
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(render_html(blocks, out, f"hepfm study: {result.get('name', '')}"))
    written.update({"report.md": out / "report.md", "report.html": out / "report.html"})
    return written
