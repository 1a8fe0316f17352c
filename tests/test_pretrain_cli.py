"""End to end: ``hepfm pretrain`` (every objective) -> ``hepfm finetune`` (every mode) -> evaluate / embed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hepfm.cli import main
from hepfm.objectives.registry import objective_input, objective_names

pytestmark = pytest.mark.gen

# every registered objective on jets, so a new one is tested without edits here (event-level objectives,
# which need object types, have their own tests: tests/test_masked_object.py)
OBJECTIVES = [o for o in objective_names() if objective_input(o) == "jets"]
PRE = ["--steps", "12", "--batch-size", "32", "--max-particles", "32", "--backbone", "part-small",
       "--no-progress", "-o", "train.log_every=4", "-o", "train.ckpt_every=6"]
FT = ["--steps", "30", "--batch-size", "32", "--no-progress", "-o", "train.eval_every=10",
      "-o", "train.ckpt_every=10", "-o", "train.log_every=5"]


@pytest.fixture(scope="module")
def pretrained(toptag_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    runs = {}
    for objective in OBJECTIVES:
        run = root / objective
        assert main(["pretrain", "--objective", objective, "--data", str(toptag_files["train"]),
                     "--val", str(toptag_files["val"]), "--out", str(run), *PRE]) == 0, objective
        runs[objective] = run
    return runs


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_exports_a_backbone(pretrained, objective):
    run = pretrained[objective]
    spec = json.loads((run / "backbone.json").read_text())
    assert spec["backbone"]["name"] == "part-small"
    assert spec["pretrained_with"] == objective
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(losses) == 3
    assert all(np.isfinite(losses))
    assert any("val_loss" in r for r in rows)


@pytest.mark.parametrize("mode", ["finetune", "frozen", "scratch", "random"])
def test_finetune_modes_and_evaluate(pretrained, toptag_files, tmp_path, mode, capsys):
    from safetensors.torch import load_file

    run = tmp_path / mode
    f = toptag_files
    assert main(["finetune", "--pretrained", str(pretrained["jetclr"]), "--data", str(f["train"]),
                 "--val", str(f["val"]), "--n-labels", "100", "--mode", mode, "--head", "linear",
                 "--out", str(run), *FT, "--steps", "80", "--lr", "5e-3",
                 "-o", "train.schedule.warmup_steps=5"]) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["per_class"] == {"QCD": 50, "Top": 50}
    pre = load_file(str(pretrained["jetclr"] / "backbone.safetensors"))
    best = load_file(str(run / "best.safetensors"))
    same = all(torch.equal(best[f"backbone.{k}"], v) for k, v in pre.items())
    assert same == (mode == "frozen")  # only the frozen backbone stays exactly the pretrained one
    if mode == "random":  # the random initialisation stays as it was: the first and the last step agree
        last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]
        assert all(torch.equal(best[k], last[k]) for k in best if k.startswith("backbone.")
                   and "running_" not in k and "num_batches" not in k)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(f["test"]), "--json", "--no-plots"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["n_jets"] == 400
    assert 0.0 <= m["auc"] <= 1.0
    if mode == "scratch":  # top vs QCD is separable: 80 steps on 100 labels learn it well above chance.
        # (The fixture's 12-step pretraining carries no usable features, so the frozen and finetune
        # modes are checked above for what they do to the weights, not for their scores.)
        assert m["auc"] > 0.7, m["auc"]


def test_finetune_protocol_from_the_cli(pretrained, toptag_files, tmp_path):
    """The backbone multiplier follows the objective the backbone was pretrained with; probe steps leave
    the backbone exactly as pretrained; all of it is recorded in the run's config."""
    import yaml
    from safetensors.torch import load_file

    f = toptag_files
    per_objective = json.dumps({"jetclr": 0.0, "default": 1.0})

    def run(objective: str, name: str, *extra: str) -> tuple[bool, dict]:
        out = tmp_path / name
        assert main(["finetune", "--pretrained", str(pretrained[objective]), "--data", str(f["train"]),
                     "--val", str(f["val"]), "--n-labels", "100", "--out", str(out), *FT, *extra]) == 0
        pre = load_file(str(pretrained[objective] / "backbone.safetensors"))
        last = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["model"]
        # batch-norm statistics are buffers: a backbone in training mode updates them even at rate 0
        buffers = {k for k in pre if "running_" in k or "num_batches" in k}
        kept = all(torch.equal(last[f"backbone.{k}"], v) for k, v in pre.items()
                   if all_state or k not in buffers)
        return kept, yaml.safe_load((out / "config.yaml").read_text())

    all_state = False
    kept, cfg = run("jetclr", "by-objective", "-o", f"finetune.backbone_lr_scale={per_objective}")
    assert kept
    assert cfg["protocol"]["backbone_lr_scale"] == 0.0
    all_state = True  # a probed backbone runs in eval mode: nothing in it changes
    kept, cfg = run("mpm", "default", "-o", f"finetune.backbone_lr_scale={per_objective}")
    assert not kept
    assert cfg["protocol"]["backbone_lr_scale"] == 1.0
    kept, cfg = run("mpm", "all-probe", "--probe-steps", "30")  # as many as the run's steps
    assert kept
    assert cfg["protocol"]["probe_steps"] == 30
    kept, cfg = run("mpm", "probe-then-tune", "--probe-steps", "10", "--layer-decay", "0.5",
                    "--backbone-lr-scale", "1")
    assert not kept
    assert cfg["protocol"] == {"backbone_lr_scale": 1.0, "layer_decay": 0.5, "probe_steps": 10}


def test_the_probe_monitor_logs_from_the_random_init_and_changes_nothing(pretrained, toptag_files, tmp_path):
    """Probes at step 0 (the random-initialisation control), every K steps and at the end; the backbone
    comes out bit-identical to the unmonitored run's."""
    from safetensors.torch import load_file

    f = toptag_files
    run = tmp_path / "monitored"
    assert main(["pretrain", "--objective", "jetclr", "--data", str(f["train"]), "--val", str(f["val"]),
                 "--out", str(run), *PRE, "--probe-data", str(f["test"]), "--probe-every", "6",
                 "-o", "probe.n_jets=200"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in rows if "probe_linear_auc" in r]
    assert [r["step"] for r in probes] == [0, 6, 12]
    for r in probes:
        assert 0.0 <= r["probe_linear_auc"] <= 1.0
        assert 0.0 <= r["probe_knn_auc"] <= 1.0
        assert r["probe_effective_rank"] >= 1.0
        assert -1.0 <= r["probe_mean_cosine"] <= 1.0
    plain = load_file(str(pretrained["jetclr"] / "backbone.safetensors"))
    monitored = load_file(str(run / "backbone.safetensors"))
    assert all(torch.equal(plain[k], monitored[k]) for k in plain)


def test_bad_probe_data_is_one_line(toptag_files, tmp_path, capsys):
    from _factories import random_chunk

    from hepfm.data.formats import write_jets

    unlabeled, three, one = tmp_path / "unlabeled.h5", tmp_path / "three.h5", tmp_path / "one.h5"
    write_jets(unlabeled, [random_chunk(40, class_names=None)], "hepfm")
    write_jets(three, [random_chunk(40, class_names=("a", "b", "c"))], "hepfm")
    chunk = random_chunk(40)
    chunk.label[:] = 0
    write_jets(one, [chunk], "hepfm")
    base = ["pretrain", "--data", str(toptag_files["train"]), "--out", str(tmp_path / "run"), *PRE]
    cases = [
        (["--objective", "jetclr", "--probe-data", str(unlabeled)], "needs labeled jets"),
        (["--objective", "jetclr", "--probe-data", str(toptag_files["val"]), str(three)],
         "different classes"),
        (["--objective", "jetclr", "--probe-data", str(one)], "hold 1 class"),
        (["--objective", "supervised", "--probe-data", str(three)], "differ from the training classes"),
    ]
    for extra, expected in cases:
        line = _one_line(capsys, main([*base, *extra]))
        assert expected in line, line
        assert not (tmp_path / "run" / "backbone.safetensors").exists()


def test_a_subjet_selection_that_leaves_no_jets_is_one_line(toptag_files, tmp_path, capsys):
    """No jet of R = 0.8 holds 20 R = 0.2 subjets (at most ~16 fit): refused before the first step."""
    run = tmp_path / "run"
    line = _one_line(capsys, main(["pretrain", "--objective", "jepa", "--data", str(toptag_files["train"]),
                                   "--out", str(run), *PRE, "-o", "objective.options.min_subjets=20"]))
    assert "min_subjets=20 leaves no jets" in line
    assert not (run / "metrics.jsonl").exists() or "train_loss" not in (run / "metrics.jsonl").read_text()


def test_embed_diagnostics(pretrained, toptag_files, capsys):
    assert main(["embed", str(pretrained["supervised"]), "--data", str(toptag_files["test"]),
                 "--n-jets", "200", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("mean_pairwise_cosine", "effective_rank", "std_mean", "knn_accuracy",
                "linear_probe_accuracy"):
        assert key in r
    assert r["n_jets"] == 200
    assert 1.0 <= r["effective_rank"] <= r["dim"]
    # the supervised backbone separates top from QCD: probes far above chance
    assert r["linear_probe_accuracy"] > 0.7
    assert (pretrained["supervised"] / "embed" / "test" / "embedding.png").exists()


def _one_line(capsys, code):
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0], err
    return err[0]


def test_finetune_bad_input(pretrained, toptag_files, tmp_path, capsys):
    f = toptag_files
    base = ["finetune", "--pretrained", str(pretrained["jetclr"]), "--val", str(f["val"]), *FT]
    msg = _one_line(
        capsys, main([*base, "--data", str(f["train"]), "--n-labels", "999999", "--out", str(tmp_path / "a")])
    )
    assert "--n-labels 999999" in msg
    assert "1600" in msg
    msg = _one_line(capsys, main(["finetune", "--pretrained", str(tmp_path / "nope"),
                                  "--data", str(f["train"]), "--val", str(f["val"]),
                                  "--out", str(tmp_path / "b")]))
    assert "no such run directory" in msg
    assert "nope" in msg


def test_pretrained_features_must_fit_the_data(toptag_files, tmp_path, capsys):
    """A backbone pretrained on kinpid (PID flags) cannot be finetuned on Top Tagging files (four-momenta
    only)."""
    from hepfm.generation.job import GenerationJob, run_job

    jc = GenerationJob("jetclass", 40, tmp_path / "jc.h5", seed=3, shard_size=4, labeled=False)
    run_job(jc, workers=2, progress=False)
    pre = tmp_path / "pre"
    assert main(["pretrain", "--objective", "jetclr", "--data", str(jc.out), "--out", str(pre),
                 "--features", "kinpid", "--steps", "2", "--batch-size", "8", "--max-particles", "32",
                 "--backbone", "part-small", "--no-progress"]) == 0
    msg = _one_line(capsys, main(["finetune", "--pretrained", str(pre), "--data", str(toptag_files["test"]),
                                  "--val", str(toptag_files["val"]), "--out", str(tmp_path / "ft"), *FT]))
    assert "kinpid" in msg
    assert "test.h5" in msg


def test_jepa_on_jets_without_subjets(tmp_path, capsys):
    """Jets of a single particle have one subjet: J-JEPA cannot split them into context and target."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from _factories import random_chunk

    from hepfm.data.formats import write_jets

    chunk = random_chunk(64, 8, seed=1, mean_particles=1.0, min_particles=1)
    chunk.mask[:, 1:] = False
    chunk.p4[:, 1:] = 0
    path = tmp_path / "single.h5"
    write_jets(path, [chunk], "hepfm", {})
    msg = _one_line(capsys, main(["pretrain", "--objective", "jepa", "--data", str(path),
                                  "--out", str(tmp_path / "j"), "--steps", "2", "--batch-size", "16",
                                  "--backbone", "part-small", "--no-progress"]))
    assert "subjet" in msg


def test_fewshot_study_table_and_resume(pretrained, toptag_files, tmp_path, capsys):
    """The flag shorthand writes the study file it stands for and runs it; a hand-placed pretraining is
    adopted; finished cells are reused, another test file re-evaluates, another step count retrains."""
    import shutil

    out = tmp_path / "study"
    shutil.copytree(pretrained["jetclr"], out / "pretrain" / "jetclr-all")  # reused: no pretraining
    f = toptag_files
    args = ["study", "fewshot", "--pretrain-data", str(f["train"]), "--train", str(f["train"]),
            "--val", str(f["val"]), "--test", str(f["test"]), "--out", str(out), "--backend", "serial",
            "--objectives", "jetclr", "--modes", "finetune,scratch", "--n-labels", "40", "--seeds", "1,2",
            "--finetune-set", "train.max_steps=8", "--finetune-set", "train.eval_every=4",
            "--finetune-set", "data.batch_size=16", "--no-baseline",
            # the placed run's own settings, so that the study declares what it adopts
            "--pretrain-set", "model.backbone=part-small", "--pretrain-set", "data.max_particles=32",
            "--pretrain-set", "data.batch_size=32", "--pretrain-set", "train.max_steps=12"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "report.html" in printed
    assert (out / "study.yaml").exists()
    result = json.loads((out / "results.json").read_text())
    table = {c["mode"]: c for c in result["cells"]}
    assert set(table) == {"finetune", "scratch"}
    spec = json.loads((out / "pretrain" / "jetclr-all" / "backbone.json").read_text())
    # the scratch baseline names the architecture it re-initialises
    assert table["scratch"]["arch"].startswith(f"{spec['backbone']['name']}-{spec['features']['name']}-")
    gain = table["finetune"]["auc"] - table["scratch"]["auc"]
    assert table["finetune"]["auc_minus_scratch"] == pytest.approx(gain)
    assert table["scratch"]["auc_minus_scratch"] is None
    assert all(c["n_seeds"] == 2 and c["n_labels"] == 40 and c["auc_std"] is not None for c in table.values())
    assert " ± " in (out / "report.md").read_text()  # two seeds: a spread
    cell = out / "runs" / "task" / "jetclr-all" / "finetune-linear" / "n40" / "seed1"
    stamp = (cell / "best.safetensors").stat().st_mtime_ns
    assert main(args) == 0  # finished runs are reused, not retrained
    assert (cell / "best.safetensors").stat().st_mtime_ns == stamp
    # another test file: the cells are re-evaluated (not retrained) and the table reports the new file
    test2 = tmp_path / "test2.h5"
    shutil.copy(f["val"], test2)
    args2 = [a if a != str(f["test"]) else str(test2) for a in args]
    assert main(args2) == 0
    assert (cell / "best.safetensors").stat().st_mtime_ns == stamp
    used = json.loads((cell / "eval" / "test" / "metrics.json").read_text())["data"]
    assert [d["path"] for d in used] == [str(test2.resolve())]
    # another step count: the cells are trained again with it, not reported from the old runs
    args3 = [a if a != "train.max_steps=8" else "train.max_steps=6" for a in args2]
    assert main(args3) == 0
    assert (cell / "best.safetensors").stat().st_mtime_ns != stamp
    assert json.loads((cell / "train_summary.json").read_text())["steps"] == 6


def test_scratch_baseline_is_shared_only_by_identical_architectures():
    from hepfm.studies.runner import architecture_key, architecture_signature

    def key(name: str, features: str, options: dict | None = None) -> str:
        spec = {"backbone": {"name": "part-small", "options": options or {}, "in_features": 7},
                "features": {"name": features}, "max_particles": 64, "pretrained_with": name}
        return architecture_key(architecture_signature(spec))

    mpm, jepa = key("mpm", "kin"), key("jepa", "kin")
    clr, wide = key("jetclr", "jetclr"), key("wide", "kin", {"num_layers": 4})
    assert mpm == jepa  # same architecture and inputs: one baseline
    assert len({mpm, clr, wide}) == 3


def test_demo_main_job_end_to_end(toptag_files, tmp_path, capsys):
    """The README's main job, with the generated files pre-placed (the demo reuses finished steps)
    and a few steps each: pretrain -> finetune, frozen, scratch and trees on the same labels -> report."""
    import shutil

    data = tmp_path / "demo" / "data"
    data.mkdir(parents=True)
    for name, src in (("pretrain", "train"), ("train", "train"), ("val", "val"), ("test", "val")):
        shutil.copy(toptag_files[src], data / f"{name}.h5")
    args = ["demo", "--out", str(tmp_path / "demo"), "--pretrain-steps", "6", "--finetune-steps", "6",
            "--n-labels", "60", "--seeds", "1", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "±" not in out  # one seed has no spread to show
    assert "single seed" in out  # and the verdict says it cannot tell
    assert "report.html" in out
    study = tmp_path / "demo" / "study"
    result = json.loads((study / "results.json").read_text())
    assert {c["mode"] for c in result["cells"]} == {"finetune", "frozen", "scratch", "bdt"}
    assert all(0.0 <= c["auc"] <= 1.0 for c in result["cells"])
    assert (study / "pretrain" / "jetclr-all" / "backbone.safetensors").exists()
    assert (study / "report.html").exists()
