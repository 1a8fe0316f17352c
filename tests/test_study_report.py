"""Study analysis and report on synthetic results (no training): seeds are averaged honestly, label
efficiency interpolates exactly, the summary never claims a gain within the seed spread, and the report
files are complete and self-contained."""

from __future__ import annotations

import csv
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from hepfm.studies.analysis import aggregate, convergence, label_efficiency, summary_sentence


def run(mode: str = "finetune", n: int = 100, seed: int = 1, auc: float | None = 0.9, *, task: str = "top",
        pretrain: str = "jetclr-n8000", arch: str = "part-a", head: str = "linear", status: str = "ok",
        reason: str | None = None, accuracy: float | None = None, rej50: float | None = 20.0,
        curve: list[list[Any]] | None = None, seconds: float = 10.0) -> dict[str, Any]:
    """One downstream row as the study runner writes it."""
    baseline = mode in ("scratch", "bdt")
    ok = status == "ok"
    if curve is None and ok and mode != "bdt":
        curve = [[10 * i, 0.5 * i, 0.6 + 0.1 * min(i, 3) / 3 + 0.001 * seed, 0.8] for i in range(1, 7)]
    return {"task": task, "objective": "none" if baseline else pretrain.split("-")[0],
            "pretrain": "" if baseline else pretrain, "pretrain_size": None if baseline else 8000,
            "arch": "bdt" if mode == "bdt" else arch, "mode": mode, "head": head, "n_labels": n, "seed": seed,
            "status": status, "reason": reason,
            "accuracy": (auc - 0.1 if accuracy is None and auc is not None else accuracy) if ok else None,
            "auc": auc if ok else None, "rej50": rej50 if ok else None,
            "rej30": 2 * rej50 if ok and rej50 else None, "steps": 60 if ok else None,
            "epochs": 3.0 if ok else None, "seconds": seconds if ok else None, "device": "cpu",
            "curve": (curve or []) if ok else [], "run_dir": f"finetune/{mode}/n{n}/seed{seed}"}


def cell(cells: list[dict[str, Any]], mode: str, n: int, head: str = "linear") -> dict[str, Any]:
    (found,) = [c for c in cells if c["mode"] == mode and c["n_labels"] == n and c["head"] == head]
    return found


# --------------------------------------------------------------------------- convergence


def test_convergence_first_evaluation_within_one_percent_of_final():
    curve = [[100, 0.5, 0.50, 0.6], [200, 1.0, 0.70, 0.8], [300, 1.5, 0.795, 0.85], [400, 2.0, 0.82, 0.86],
             [500, 2.5, 0.80, 0.86]]
    # final 0.80: 0.795 is within 1 % (0.8 ± 0.008), 0.70 is not
    assert convergence(curve) == (300, 1.5)
    assert convergence(curve, tol=0.2) == (200, 1.0)  # 0.70 is within 20 % of 0.80, 0.50 is not
    assert convergence(curve, tol=0.0) == (500, 2.5)
    assert convergence([]) == (None, None)
    assert convergence([[1, 0.1, None, None]]) == (None, None)


# --------------------------------------------------------------------------- aggregate


def test_aggregate_single_seed_has_no_spread():
    (c,) = aggregate([run(seed=1, auc=0.9)])
    assert c["n_seeds"] == 1
    assert c["auc"] == pytest.approx(0.9)
    assert c["auc_std"] is None  # never a "± 0"
    assert c["accuracy_std"] is None
    assert c["seconds_std"] is None
    assert c["steps_to_1pct_std"] is None


def test_aggregate_three_seeds_mean_and_sample_std_failed_counted_not_averaged():
    runs = [run(seed=s, auc=a) for s, a in ((1, 0.80), (2, 0.82), (3, 0.84))]
    runs.append(run(seed=4, status="failed", reason="CUDA out of memory"))
    (c,) = aggregate(runs)
    assert c["n_seeds"] == 3
    assert c["n_failed"] == 1
    assert c["failures"] == [{"seed": 4, "reason": "CUDA out of memory"}]
    assert c["auc"] == pytest.approx(0.82)
    assert c["auc_std"] == pytest.approx(0.02)  # sample std, ddof=1
    assert c["steps_to_1pct"] == pytest.approx(30.0)  # the synthetic curves level off at step 30
    assert c["epochs_to_1pct"] == pytest.approx(1.5)


def test_aggregate_infinite_rejection():
    (c,) = aggregate([run(seed=1, rej50=10.0), run(seed=2, rej50=math.inf), run(seed=3, rej50=14.0)])
    assert c["rej50"] == pytest.approx(12.0)
    assert c["rej50_n_inf"] == 1
    assert c["rej50_std"] == pytest.approx(math.sqrt(8.0))
    (c,) = aggregate([run(seed=1, rej50=math.inf), run(seed=2, rej50=math.inf)])
    assert c["rej50"] == math.inf
    assert c["rej50_std"] is None


def test_aggregate_difference_to_scratch_and_significance():
    runs = [run("scratch", seed=s, auc=a) for s, a in ((1, 0.80), (2, 0.81), (3, 0.82))]
    runs += [run("finetune", seed=s, auc=a) for s, a in ((1, 0.85), (2, 0.86), (3, 0.87))]
    runs += [run("frozen", seed=s, auc=a) for s, a in ((1, 0.80), (2, 0.815), (3, 0.83))]
    runs += [run("finetune", n=100, seed=1, auc=0.9, head="mlp")]  # no scratch with that head
    cells = aggregate(runs)
    fine, frozen = cell(cells, "finetune", 100), cell(cells, "frozen", 100)
    scratch = cell(cells, "scratch", 100)
    assert fine["auc_minus_scratch"] == pytest.approx(0.05)
    assert fine["auc_minus_scratch_std"] == pytest.approx(math.hypot(0.01, 0.01))
    assert fine["significant"] is True
    assert frozen["auc_minus_scratch"] == pytest.approx(0.005)
    assert frozen["significant"] is False
    assert fine["accuracy_minus_scratch"] == pytest.approx(0.05)
    assert scratch["auc_minus_scratch"] is None
    mlp = cell(cells, "finetune", 100, head="mlp")
    assert mlp["auc_minus_scratch"] is None
    assert mlp["significant"] is None


def test_aggregate_one_seed_side_is_not_significant_either_way():
    runs = [run("scratch", seed=1, auc=0.70)] + [run(seed=s, auc=0.9 + 0.001 * s) for s in (1, 2, 3)]
    fine = cell(aggregate(runs), "finetune", 100)
    assert fine["auc_minus_scratch"] == pytest.approx(0.202)
    assert fine["significant"] is None
    assert fine["auc_minus_scratch_std"] is None


# --------------------------------------------------------------------------- label efficiency


def scratch_curve(ns: tuple[int, ...] = (10, 100, 1000, 10000), std: float | None = 0.01) -> list[dict]:
    """Scratch AUC = 0.8 + 0.05 log10 N, three seeds at ± std (or one seed)."""
    runs = []
    for n in ns:
        mean = 0.8 + 0.05 * math.log10(n)
        offsets = (-std, 0.0, std) if std is not None else (0.0,)
        runs += [run("scratch", n=n, seed=i, auc=mean + d) for i, d in enumerate(offsets)]
    return runs


def test_label_efficiency_interpolates_on_log_n():
    target = 0.8 + 0.05 * math.log10(300)
    runs = scratch_curve() + [run(n=30, seed=i, auc=target + d) for i, d in enumerate((-0.005, 0, 0.005))]
    (e,) = label_efficiency(aggregate(runs))
    assert e["n_eq"] == pytest.approx(300.0, rel=1e-9)
    assert e["ratio"] == pytest.approx(10.0, rel=1e-9)
    assert not e["beyond_max"]
    assert not e["below_min"]
    # range: AUC ∓ sqrt(0.005² + 0.01²), i.e. log10 N ∓ sigma / 0.05
    sigma = math.hypot(0.005, 0.01)
    assert e["n_eq_low"] == pytest.approx(300 * 10 ** (-sigma / 0.05), rel=1e-6)
    assert e["n_eq_high"] == pytest.approx(300 * 10 ** (sigma / 0.05), rel=1e-6)


def test_label_efficiency_beyond_max_and_below_min():
    runs = scratch_curve(std=None)
    runs += [run(n=100, seed=1, auc=0.99)]  # scratch reaches 1.0 only at 1e4 … 0.99 < 1.0: inside
    runs += [run(n=1000, seed=1, auc=1.05)]  # never reached by scratch
    runs += [run(n=10, seed=1, auc=0.80, head="linear", pretrain="mpm-n8000", mode="frozen")]  # < 10
    eff = {(e["pretrain"], e["n_labels"]): e for e in label_efficiency(aggregate(runs))}
    inside = eff[("jetclr-n8000", 100)]
    assert inside["n_eq"] == pytest.approx(10 ** 3.8)
    assert inside["n_eq_low"] is None
    beyond = eff[("jetclr-n8000", 1000)]
    assert beyond["beyond_max"]
    assert beyond["n_eq"] is None
    assert beyond["ratio"] is None
    below = eff[("mpm-n8000", 10)]
    assert below["below_min"]
    assert below["n_eq"] is None


def test_label_efficiency_non_monotonic_scratch_uses_first_crossing():
    runs = [run("scratch", n=n, seed=1, auc=a) for n, a in ((10, 0.70), (100, 0.90), (1000, 0.85))]
    runs += [run(n=10, seed=1, auc=0.80)]
    (e,) = label_efficiency(aggregate(runs))
    assert e["n_eq"] == pytest.approx(10 ** 1.5)


# --------------------------------------------------------------------------- summary sentence


def test_summary_does_not_claim_a_gain_within_the_spread():
    runs = [run("scratch", seed=s, auc=a) for s, a in ((1, 0.80), (2, 0.82), (3, 0.84))]
    runs += [run(seed=s, auc=a) for s, a in ((1, 0.81), (2, 0.83), (3, 0.85))]  # +0.01, spread 0.028
    text = summary_sentence(aggregate(runs))
    assert not re.match(r"(finetuned|frozen) \S+ beats scratch", text)
    assert text.startswith("no pretrained model beats scratch beyond the seed spread")


def test_summary_claims_a_gain_beyond_the_spread_and_where_not():
    runs = []
    for n, gain in ((100, 0.05), (1000, 0.005)):
        runs += [run("scratch", n=n, seed=s, auc=0.80 + 0.01 * s) for s in (1, 2, 3)]
        runs += [run(n=n, seed=s, auc=0.80 + gain + 0.01 * s) for s in (1, 2, 3)]
    text = summary_sentence(aggregate(runs))
    assert text.startswith("finetuned jetclr-n8000 beats scratch beyond the seed spread at N=100 "
                           "(AUC +0.0500 ±")
    assert "but not at N=1000" in text


def test_summary_single_seed_cannot_tell():
    runs = [run("scratch", seed=1, auc=0.80), run(seed=1, auc=0.95)]
    text = summary_sentence(aggregate(runs))
    assert "single seed: no spread, cannot tell" in text
    assert not re.match(r"(finetuned|frozen) \S+ beats scratch", text)


# --------------------------------------------------------------------------- report files


def study_result(tmp_path: Path, tasks: tuple[str, ...] = ("top", "qg"),
                 ns: tuple[int, ...] = (10, 100, 1000)) -> dict[str, Any]:
    """Two tasks, finetune/frozen/scratch/bdt over three N and three seeds, a failed run and a failed
    pretraining, a diagnostics map on disk."""
    runs = []
    for task in tasks:
        for n in ns:
            base = 0.75 + 0.05 * math.log10(n)
            for s in (1, 2, 3):
                runs += [run("scratch", n=n, seed=s, auc=base + 0.003 * s, task=task),
                         run("finetune", n=n, seed=s, auc=base + 0.04 + 0.003 * s, task=task),
                         run("frozen", n=n, seed=s, auc=base + 0.01 + 0.003 * s, task=task, rej50=math.inf),
                         run("bdt", n=n, seed=s, auc=base + 0.02, task=task, head="bdt")]
    runs.append(run("finetune", n=10, seed=4, task="top", status="failed",
                    reason="RuntimeError: NaN loss | at step 12"))
    (tmp_path / "pretrain" / "jetclr-n8000").mkdir(parents=True)
    pyplot = pytest.importorskip("matplotlib.pyplot")
    fig, ax = pyplot.subplots()
    ax.plot([0, 1], [0, 1])
    fig.savefig(tmp_path / "pretrain" / "jetclr-n8000" / "map.png")
    pyplot.close(fig)
    pretraining = [
        {"key": "jetclr-n8000", "objective": "jetclr", "pretrain_size": 8000, "status": "ok", "reason": None,
         "steps": 1200, "jets_seen": 1_228_800, "seconds": 600.0, "jets_per_second": 2048.0, "device": "cpu",
         "n_backbone_parameters": 123456, "loss_curve": [[i * 100, 5.0 / (i + 1)] for i in range(12)],
         "val_loss_curve": [[i * 300, 5.5 / (i + 1)] for i in range(4)],
         "diagnostics": {"linear_probe_accuracy": 0.81, "knn_accuracy": 0.78, "effective_rank": 31.5,
                         "mean_pairwise_cosine": 0.12, "map_png": "pretrain/jetclr-n8000/map.png"},
         "run_dir": "pretrain/jetclr-n8000"},
        {"key": "mpm-n8000", "objective": "mpm", "pretrain_size": 8000, "status": "failed",
         "reason": "disk full while writing checkpoint", "steps": 0, "jets_seen": 0, "seconds": 1.0,
         "jets_per_second": 0.0, "device": "cpu", "n_backbone_parameters": 123456, "loss_curve": [],
         "val_loss_curve": [], "diagnostics": None, "run_dir": "pretrain/mpm-n8000"},
    ]
    return {"name": "toy-study", "wall_seconds": 4321.0, "hardware": "2-core test CPU",
            "command": "hepfm study run toy.yaml --out study", "versions": {"hepfm": "0.0", "torch": "2.x"},
            "runs": runs, "pretraining": pretraining}


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, dict[str, Any], dict[str, Path]]:
    """The report of :func:`study_result`, written once for the tests that read it."""
    from hepfm.studies.report import write_report

    tmp_path = tmp_path_factory.mktemp("study")
    result = study_result(tmp_path)
    return tmp_path, result, write_report(result, tmp_path)


def test_write_report_files_and_self_contained_html(full_report):
    tmp_path, result, written = full_report
    for name in ("results.csv", "cells.csv", "report.md", "report.html"):
        assert written[name] == tmp_path / name
        assert written[name].stat().st_size > 0
    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert figures == sorted(["pretrain_loss.png", *(f"{kind}_{t}.png" for t in ("top", "qg") for kind in
                                                     ("performance", "convergence", "val_curves",
                                                      "label_efficiency"))])
    assert all(f"figures/{name}" in written for name in figures)
    with open(tmp_path / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(result["runs"])
    assert "curve" not in rows[0]
    assert rows[0]["steps_to_1pct"] == "30"
    with open(tmp_path / "cells.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * 3 * 4

    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(figures) + 1  # + the embedding map
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "http://" not in page
    assert "https://" not in page
    assert "<link" not in page
    assert "<script" not in page

    md = (tmp_path / "report.md").read_text()
    assert "](figures/performance_top.png)" in md
    assert "](pretrain/jetclr-n8000/map.png)" in md
    for text in ("2-core test CPU", "hepfm study run toy.yaml --out study", "torch 2.x", "72.0 min",
                 "finetuned jetclr-n8000 on qg beats scratch beyond the seed spread at N=10 "
                 "(AUC +0.0400 ± 0.0042)"):
        assert text in md
        assert text in page
    assert "| 0.8060 ± 0.0030 |" in md  # scratch at N=10: mean ± sample std
    assert "1228800" in md
    assert "2048" in md


def test_report_renders_failures_with_their_reason(full_report):
    tmp_path = full_report[0]
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    failed = md.split("## Failed")[1]
    assert "RuntimeError: NaN loss \\| at step 12" in failed  # a pipe in a reason does not break the table
    assert "disk full while writing checkpoint" in failed
    assert "RuntimeError: NaN loss | at step 12" in page
    assert "disk full while writing checkpoint" in page


def test_report_single_seed_shows_mean_alone(tmp_path):
    from hepfm.studies.report import cells_markdown, write_report

    runs = [run("scratch", n=n, seed=1, auc=0.8 + 0.01 * i) for i, n in enumerate((10, 100))]
    runs += [run(n=n, seed=1, auc=0.85 + 0.01 * i) for i, n in enumerate((10, 100))]
    result = {"name": "one-seed", "wall_seconds": 12.0, "hardware": "cpu", "command": "x", "versions": {},
              "runs": runs, "pretraining": []}
    write_report(result, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| 0.8500 |" in md
    assert "± 0.0000" not in md
    assert "single seed: no spread, cannot tell" in md
    assert "| 0.8500 |" in cells_markdown(aggregate(runs))


def test_report_without_mplhep_and_leaves_matplotlib_state(tmp_path, monkeypatch):
    import matplotlib

    from hepfm.studies.report import write_report

    before = dict(matplotlib.rcParams)
    write_report(study_result(tmp_path / "with", ("top",), (10, 100)), tmp_path / "with")
    assert dict(matplotlib.rcParams) == before  # the HEP style stays inside the report
    monkeypatch.setitem(sys.modules, "mplhep", None)  # import mplhep raises ImportError
    written = write_report(study_result(tmp_path / "without", ("top",), (10, 100)), tmp_path / "without")
    assert "figures/performance_top.png" in written
