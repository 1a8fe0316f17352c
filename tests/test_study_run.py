"""``hepfm study run`` end to end on generated jets: resume, failures, executors, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from hepfm.cli import main

TINY_PRE = {"train.max_steps": 4, "train.eval_every": 2, "data.batch_size": 32, "data.max_particles": 24,
            "model.backbone": "part-small"}
TINY_FT = {"train.max_steps": 4, "train.eval_every": 2, "data.batch_size": 16, "data.n_val": 200}


def study_file(tmp_path: Path, files: dict[str, Path], **changes) -> Path:
    raw = {
        "name": "tiny",
        "seeds": [1, 2],
        "pretraining": {"data": [str(files["train"])], "objectives": ["jetclr"], "sizes": [400],
                        "overrides": dict(TINY_PRE),
                        "diagnostics": {"data": [str(files["val"])], "n_jets": 100}},
        "tasks": [{"name": "top", "train": [str(files["train"])], "val": [str(files["val"])],
                   "test": [str(files["test"])], "n_labels": [20, 60]}],
        "finetune": {"modes": ["finetune", "frozen", "scratch"], "overrides": dict(TINY_FT)},
        "baselines": ["bdt"],
        "executor": {"backend": "serial"},
    }
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            raw[section][sub] = value
        else:
            raw[section] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("best.safetensors")}


@pytest.fixture(scope="module")
def finished_study(toptag_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    out = root / "out"
    assert main(["study", "run", str(study_file(root, toptag_files)), "--out", str(out)]) == 0
    return root, out


def test_a_declared_grid_runs_every_cell_and_reports(finished_study, capsys):
    _root, out = finished_study
    result = json.loads((out / "results.json").read_text())
    runs = result["runs"]
    # 2 N x 2 seeds x (finetune, frozen, scratch, bdt)
    assert len(runs) == 16
    assert all(r["status"] == "ok" for r in runs), [r["reason"] for r in runs]
    assert {r["mode"] for r in runs} == {"finetune", "frozen", "scratch", "bdt"}
    for r in runs:
        assert 0.0 <= r["auc"] <= 1.0
        if r["mode"] != "bdt":
            assert r["steps"] == 4
            assert [c[0] for c in r["curve"]] == [2, 4]  # the validation curve, for convergence
    cells = {(c["mode"], c["n_labels"]): c for c in result["cells"]}
    assert len(cells) == 8
    assert all(c["n_seeds"] == 2 and c["auc_std"] is not None for c in cells.values())
    assert cells[("finetune", 20)]["auc_minus_scratch"] == pytest.approx(
        cells[("finetune", 20)]["auc"] - cells[("scratch", 20)]["auc"])
    (pre,) = result["pretraining"]
    assert pre["key"] == "jetclr-n400"
    assert pre["steps"] == 4
    assert pre["jets_seen"] == 4 * 32
    assert [s for s, _ in pre["loss_curve"]]
    assert 0.0 <= pre["diagnostics"]["linear_probe_accuracy"] <= 1.0
    # the diagnostics jets are probed during pretraining too, from the random initialisation on
    assert [s for s, _ in pre["probe_curves"]["probe_linear_auc"]] == [0, 2, 4]
    assert "probe AUC: random init" in (out / "report.md").read_text()
    assert (out / pre["diagnostics"]["map_png"]).exists()
    # the pretraining used 400 jets: its run says so
    config = yaml.safe_load((out / "pretrain" / "jetclr-n400" / "config.yaml").read_text())
    assert config["data"]["n_train"] == 400
    # the same N and seed draw the same labeled jets for every mode (a like-for-like comparison)
    per_class = {json.loads((out / r["run_dir"] / "train_summary.json").read_text())["per_class"]["Top"]
                 for r in runs if r["mode"] != "bdt" and r["n_labels"] == 20}
    assert per_class == {10}
    for name in ("report.html", "report.md", "results.csv", "cells.csv"):
        assert (out / name).stat().st_size > 0
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert "https://" not in html
    assert "http://" not in html
    with open(out / "results.csv") as f:
        assert sum(1 for _ in f) == 1 + len(runs)
    assert result["summary"]


def test_the_report_is_written_again_from_results_json(finished_study, tmp_path, capsys):
    _, out = finished_study
    (out / "report.html").unlink()
    assert main(["study", "report", str(out)]) == 0
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert main(["study", "report", str(tmp_path)]) == 2  # not a study directory: one line, exit 2
    assert "results.json" in capsys.readouterr().err


def test_a_finished_study_reruns_nothing_and_a_changed_cell_reruns_alone(finished_study, toptag_files):
    root, out = finished_study
    before = mtimes(out)
    assert main(["study", "run", str(study_file(root, toptag_files)), "--out", str(out)]) == 0
    assert mtimes(out) == before
    # one more seed: only its cells run; the others are reused
    more = study_file(root, toptag_files, seeds=[1, 2, 3])
    assert main(["study", "run", str(more), "--out", str(out)]) == 0
    after = mtimes(out)
    assert {k: after[k] for k in before} == before
    assert len(after) == len(before) + 6  # 2 N x (finetune, frozen, scratch)
    result = json.loads((out / "results.json").read_text())
    assert all(c["n_seeds"] == 3 for c in result["cells"])


def test_a_failing_cell_is_reported_and_the_rest_go_on(toptag_files, tmp_path):
    """A test file whose particles turn out to be bad when read: its task's cells fail with the reason,
    the other task's cells are unaffected."""
    bad = tmp_path / "bad_test.h5"
    import shutil

    shutil.copy(toptag_files["val"], bad)
    with h5py.File(bad, "r+") as f:
        data = f["p4"][...]
        data[5, 0, 0] = np.nan  # a bad particle in jet 5: reading the file fails, opening it does not
        f["p4"][...] = data
    tasks = [{"name": "good", "train": [str(toptag_files["train"])], "val": [str(toptag_files["val"])],
              "test": [str(toptag_files["test"])], "n_labels": [20]},
             {"name": "bad", "train": [str(toptag_files["train"])], "val": [str(toptag_files["val"])],
              "test": [str(bad)], "n_labels": [20]}]
    path = study_file(tmp_path, toptag_files, tasks=tasks, seeds=[1], finetune__modes=[])
    out = tmp_path / "out"
    assert main(["study", "run", str(path), "--out", str(out)]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    status = {r["task"]: r for r in runs}
    assert status["good"]["status"] == "ok"
    assert status["bad"]["status"] == "failed"
    assert "bad_test.h5" in status["bad"]["reason"]
    assert "bad_test.h5" in (out / "report.md").read_text()


def test_a_killed_study_resumes_without_redoing_finished_cells(toptag_files, tmp_path):
    path = study_file(tmp_path, toptag_files, seeds=[1, 2, 3], finetune__modes=["scratch"], baselines=[],
                      pretraining__diagnostics={"data": []},
                      tasks=[{"name": "top", "train": [str(toptag_files["train"])],
                              "val": [str(toptag_files["val"])], "test": [str(toptag_files["test"])],
                              "n_labels": [20]}])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "hepfm.cli", "study", "run", str(path), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=os.environ | {"OMP_NUM_THREADS": "1"}, start_new_session=True)
    deadline = time.monotonic() + 240
    rows = []
    while time.monotonic() < deadline and proc.poll() is None:
        rows = list((out / "runs").rglob("row.json")) if (out / "runs").exists() else []
        if rows:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert rows, "no cell finished before the deadline"
    done = {str(p.parent.relative_to(out)): (p.parent / "best.safetensors").stat().st_mtime_ns for p in rows}
    assert not (out / "results.json").exists()
    assert main(["study", "run", str(path), "--out", str(out)]) == 0
    for run, stamp in done.items():
        assert (out / run / "best.safetensors").stat().st_mtime_ns == stamp, run
    result = json.loads((out / "results.json").read_text())
    assert len(result["runs"]) == 3
    assert all(r["status"] == "ok" for r in result["runs"])


@pytest.mark.parametrize("backend", ["local", "slurm"])
def test_cells_run_in_parallel_through_the_executor(toptag_files, tmp_path, backend):
    """The process pool and submitit's local executor run the same cells (trees only: quick)."""
    executor = {"backend": backend, "workers": 2}
    if backend == "slurm":
        pytest.importorskip("submitit")
        executor["slurm"] = {"cluster": "local", "timeout_min": 10}
    path = study_file(tmp_path, toptag_files, finetune__modes=[], executor=executor)
    out = tmp_path / "out"
    assert main(["study", "run", str(path), "--out", str(out)]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert len(runs) == 4
    assert all(r["status"] == "ok" and r["mode"] == "bdt" for r in runs), [r["reason"] for r in runs]
    if backend == "slurm":
        return
    serial = tmp_path / "serial"
    assert main(["study", "run", str(path), "--out", str(serial), "--backend", "serial"]) == 0
    serial_runs = json.loads((serial / "results.json").read_text())["runs"]
    same = {(r["n_labels"], r["seed"]): r["auc"] for r in serial_runs}
    assert {(r["n_labels"], r["seed"]): r["auc"] for r in runs} == same  # where a cell runs changes nothing


def test_a_cwola_task_trains_on_mixed_samples_and_scores_true_labels(toptag_files, tmp_path):
    tasks = [{"name": "weak", "kind": "cwola", "signal_fractions": [0.2, 0.5],
              "train": [str(toptag_files["train"])],
              "val": [str(toptag_files["val"])], "test": [str(toptag_files["test"])], "n_labels": [300]}]
    path = study_file(tmp_path, toptag_files, tasks=tasks, seeds=[1], finetune__modes=[])
    out = tmp_path / "out"
    assert main(["study", "run", str(path), "--out", str(out)]) == 0
    from hepfm.data.formats import open_source

    for x in (0.2, 0.5):
        src = open_source(out / "tasks" / f"weak-x{x:g}" / "train.h5")
        chunk = src.read(0, len(src))
        top = chunk.class_names.index("Top")
        sample2 = chunk.label == top
        # sample 2 is background plus a fraction x of signal: compare its jet masses with sample 1's
        assert 0 < sample2.sum() < len(chunk)
        assert src.metadata["cwola"]["signal_fraction"] == x
    runs = {r["task"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert set(runs) == {"weak-x0.2", "weak-x0.5"}
    # with half of sample 2 signal the trees learn top vs QCD on the true test labels
    assert runs["weak-x0.5"]["auc"] > 0.65


def test_finetuning_recipes_are_a_grid_axis(toptag_files, tmp_path):
    """Each recipe is its own finetune cell with its own protocol; frozen, scratch and the random-init
    control run once (the last two per architecture)."""
    recipes = {"probe": {"finetune.probe_steps": 4, "finetune.backbone_lr_scale": 1.0},
               "slow": ["finetune.backbone_lr_scale=0.0"]}
    path = study_file(tmp_path, toptag_files, seeds=[1], baselines=[], finetune__recipes=recipes,
                      finetune__modes=["finetune", "frozen", "scratch", "random"])
    out = tmp_path / "out"
    assert main(["study", "run", str(path), "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    runs = result["runs"]
    assert all(r["status"] == "ok" for r in runs), [r["reason"] for r in runs]
    assert sorted((r["mode"], r["recipe"]) for r in runs if r["n_labels"] == 20) == [
        ("finetune", "probe"), ("finetune", "slow"), ("frozen", ""), ("random", ""), ("scratch", "")]
    random = [r for r in runs if r["mode"] == "random"]
    assert all(r["objective"] == "none" and "/random-" in r["run_dir"] for r in random)
    for r in runs:
        protocol = yaml.safe_load((out / r["run_dir"] / "config.yaml").read_text())["protocol"]
        if r["recipe"] == "probe":
            assert protocol["probe_steps"] == 4
        elif r["recipe"] == "slow":
            assert protocol["backbone_lr_scale"] == 0.0
    assert {c["recipe"] for c in result["cells"] if c["mode"] == "finetune"} == {"probe", "slow"}
    report = (out / "report.md").read_text()
    assert "finetune[probe]" in report
    assert "finetune[slow]" in report


@pytest.mark.parametrize(("change", "expected"), [
    ({"finetune__recipes": {"steep": {"finetune.layer_decay": 2}}}, "finetune.layer_decay"),
    ({"finetune__recipes": {"a/b": ["finetune.probe_steps=3"]}}, "finetune.recipes must be a plain folder"),
    ("text:name: [unclosed", "invalid YAML"),
    ({"pretrainig": {}}, "did you mean pretraining"),
    ({"tasks": [{"name": "t", "train": ["missing.h5"], "val": ["x"], "test": ["x"], "n_labels": [10]}]},
     "missing.h5"),
    ({"tasks__n_labels": [100000]}, "100000 labels asked"),
    ({"pretraining__sizes": [10**7]}, "10000000 jets asked"),
    ({"finetune__modes": ["finetune", "sideways"]}, "sideways"),
    ({"seeds": [1, 1]}, "seeds"),
    ({"finetune__overrides": {"train.max_step": 3}}, "max_steps"),
    ({"tasks__test": "val-of-other-classes"}, "differ from the training classes"),
])
def test_bad_study_input_is_one_line_exit_2(toptag_files, tmp_path, capsys, change, expected):
    if isinstance(change, str):
        path = tmp_path / "study.yaml"
        path.write_text(change.removeprefix("text:"))
    else:
        change = dict(change)
        if "tasks__n_labels" in change or "tasks__test" in change:
            task = {"name": "top", "train": [str(toptag_files["train"])], "val": [str(toptag_files["val"])],
                    "test": [str(toptag_files["test"])], "n_labels": [20]}
            if "tasks__n_labels" in change:
                task["n_labels"] = change.pop("tasks__n_labels")
            else:
                change.pop("tasks__test")
                other = tmp_path / "other.h5"
                from _factories import random_chunk

                from hepfm.data.formats import write_jets

                write_jets(other, [random_chunk(40, class_names=("a", "b", "c"))], "hepfm")
                task["test"] = [str(other)]
            change["tasks"] = [task]
        path = study_file(tmp_path, toptag_files, **change)
    out = tmp_path / "out"
    assert main(["study", "run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err
    assert not (out / "results.json").exists()


SHIPPED_STUDIES = {"demo", "cpu", "seed000-jetclass-toptag", "cpu-protocol", "cpu-proof-in-domain",
                   "cpu-proof-cross-domain", "cpu-proof-long-mpm", "events-hplus",
                   "events-hplus-long-finetune", "events-tth"}


@pytest.mark.parametrize("preset", sorted(SHIPPED_STUDIES))
def test_every_shipped_study_preset_resolves(preset):
    """Each preset's keys and stage overrides resolve on any machine (its files are the user's)."""
    from hepfm.options import from_dict
    from hepfm.studies.spec import STUDY_PRESETS, StudySpec, check_presets, normalise

    assert {p.stem for p in STUDY_PRESETS.glob("*.yaml")} == SHIPPED_STUDIES
    spec = from_dict(StudySpec, normalise(yaml.safe_load((STUDY_PRESETS / f"{preset}.yaml").read_text())), "")
    check_presets(spec)
    assert spec.tasks


def test_pretraining_variants_are_pretrained_side_by_side(toptag_files, tmp_path):
    """A variant is its own pretraining (its overrides on top of the shared ones), reported as
    objective+variant; the scratch baseline stays one per architecture."""
    from hepfm.studies.runner import plan
    from hepfm.studies.spec import load_spec

    variants = {"short": {"train.max_steps": 2}, "wide": ["data.batch_size=16"]}
    path = study_file(tmp_path, toptag_files, seeds=[1], baselines=[], pretraining__variants=variants,
                      pretraining__sizes=[200, 400])
    spec, _ = load_spec(path)
    phase1, phase2 = plan(spec, tmp_path / "out")
    pre = {c.row["key"]: c for c in phase1 if c.kind == "pretrain"}
    assert set(pre) == {f"jetclr{v}-n{n}" for v in ("", "+short", "+wide") for n in (200, 400)}
    assert len({c.key for c in pre.values()}) == 6
    assert pre["jetclr+short-n200"].args["delta"]["train"]["max_steps"] == 2
    assert pre["jetclr+short-n400"].args["delta"]["train"]["max_steps"] == 2
    assert pre["jetclr-n400"].args["delta"]["train"]["max_steps"] == TINY_PRE["train.max_steps"]
    assert pre["jetclr+wide-n400"].args["delta"]["data"]["batch_size"] == 16
    objectives = {c.row["objective"] for c in phase2 if c.row["mode"] == "finetune"}
    assert objectives == {"jetclr", "jetclr+short", "jetclr+wide"}
    assert len([c for c in phase2 if c.row["mode"] == "scratch" and c.row["n_labels"] == 20]) == 1
    bad = study_file(tmp_path, toptag_files, pretraining__variants={"x": {"train.max_stepz": 2}})
    assert main(["study", "run", str(bad), "--out", str(tmp_path / "bad")]) == 2
