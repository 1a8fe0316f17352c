"""End to end: ``hepfm train`` and ``hepfm evaluate`` on generated Top-Tagging-like jets, and their bad
input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hepfm.cli import main

pytestmark = pytest.mark.gen

FAST = ["--steps", "120", "--batch-size", "64", "--max-particles", "48", "--no-progress",
        "-o", "train.eval_every=40", "-o", "train.ckpt_every=40", "-o", "train.optim.lr=3e-3"]


@pytest.fixture(scope="module")
def trained(toptag_files, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "part"
    f = toptag_files
    assert main(["train", "--data", str(f["train"]), "--val", str(f["val"]), "--out", str(run),
                 "--backbone", "part-small", *FAST]) == 0
    return run


def test_train_writes_a_complete_run_dir(trained):
    for name in ("config.yaml", "provenance.json", "metrics.jsonl", "best.safetensors", "best.json",
                 "checkpoints/last.pt", "train_summary.json"):
        assert (trained / name).exists(), name
    prov = json.loads((trained / "provenance.json").read_text())
    assert prov["versions"]["torch"]
    assert prov["data"]["train"][0]["metadata"]["dataset"] == "toptag"
    spec = json.loads((trained / "best.json").read_text())
    assert spec["backbone"]["name"] == "part-small"
    assert spec["features"]["name"] == "kin"
    assert spec["class_names"] == ["QCD", "Top"]


def test_evaluate_beats_random_on_the_official_layout(trained, toptag_files, capsys):
    # the test file is in the Top Tagging pandas layout: evaluation reads it like the real dataset
    assert main(["evaluate", str(trained), "--data", str(toptag_files["test"]), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert {"accuracy", "auc", "rej30", "rej50", "n_jets"} <= set(m)
    assert m["n_jets"] == 400
    assert m["auc"] > 0.85
    assert m["accuracy"] > 0.75
    assert m["rej50"] > 5
    out = trained / "eval" / "test"
    assert (out / "metrics.json").exists()
    assert (out / "roc.png").stat().st_size > 1000


def test_hepfm_load_gives_the_same_scores(trained, toptag_files, capsys):
    """``hepfm.load`` rebuilds the selected model: on the validation file it reproduces the metrics recorded
    when the checkpoint was chosen, on the test file those of ``hepfm evaluate``, and it loads the same
    twice."""
    import torch

    import hepfm
    from hepfm.workflows.classify import predict, validation_metrics

    model, spec = hepfm.load(trained)
    logits, labels, _ = predict(model, spec, [str(toptag_files["val"])])
    assert logits.shape == (400, 2)
    assert np.isfinite(logits).all()
    recorded = spec["val_metrics"]  # written by the engine at the best step, from its own validation pass
    val_loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    assert val_loss == pytest.approx(recorded["val_loss"], rel=1e-4, abs=1e-6)
    for k, v in validation_metrics(tuple(spec["class_names"]))(logits, labels).items():
        assert v == pytest.approx(recorded[f"val_{k}"], rel=1e-4, abs=1e-6), k

    test_logits, test_labels, _ = predict(model, spec, [str(toptag_files["test"])])
    assert (
        main(["evaluate", str(trained), "--data", str(toptag_files["test"]), "--json", "--name", "load"]) == 0
    )
    evaluated = json.loads(capsys.readouterr().out)
    for k, v in validation_metrics(tuple(spec["class_names"]))(test_logits, test_labels).items():
        assert v == pytest.approx(evaluated[k], rel=1e-6), k
    again, spec2 = hepfm.load(trained)
    np.testing.assert_array_equal(predict(again, spec2, [str(toptag_files["test"])])[0], test_logits)


def test_resume_to_more_steps_equals_a_straight_run(toptag_files, tmp_path):
    """Train 12 steps, then re-run to 20: the same final weights and validation losses, bitwise, as one
    20-step run with the same seed. (A constant schedule: a cosine spread over 12 steps is not the one
    over 20, so an extended cosine run continues on purpose differently.)"""
    import torch

    f = toptag_files
    fast = ["--batch-size", "32", "--max-particles", "32", "--no-progress", "-o", "train.eval_every=4",
            "-o", "train.ckpt_every=4", "-o", "train.schedule.name=constant",
            "-o", "train.schedule.warmup_steps=4"]

    def train(out, steps: int) -> dict:
        assert main(["train", "--data", str(f["train"]), "--val", str(f["val"]), "--out", str(out),
                     "--backbone", "part-small", "--steps", str(steps), *fast]) == 0
        return json.loads((out / "train_summary.json").read_text())

    assert train(tmp_path / "cont", 12)["steps"] == 12
    cont, straight = train(tmp_path / "cont", 20), train(tmp_path / "straight", 20)
    assert cont["steps"] == straight["steps"] == 20
    assert cont["stop_reason"] == straight["stop_reason"] == "max_steps"
    assert (cont["jets"], straight["jets"]) == (
        8 * 32,
        20 * 32,
    )  # the re-run resumed: it trained 8 steps only

    def val_losses(run) -> dict[int, float]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}

    assert val_losses(tmp_path / "cont") == val_losses(tmp_path / "straight")
    assert sorted(val_losses(tmp_path / "cont")) == [4, 8, 12, 16, 20]
    a, b = (torch.load(r / "checkpoints" / "last.pt", weights_only=False) for r in (tmp_path / "cont",
                                                                                  tmp_path / "straight"))
    assert a["step"] == b["step"] == 20
    for k, v in b["model"].items():
        torch.testing.assert_close(a["model"][k], v, rtol=0, atol=0)


def test_epoch_budget_from_the_command_line(toptag_files, tmp_path):
    """``-o train.max_epochs=1 -o train.max_steps=null``: one pass over 1600 jets in batches of 64 (25 steps),
    and the summary says which budget ended the run."""
    f = toptag_files
    run = tmp_path / "epochs"
    assert main(["train", "--data", str(f["train"]), "--val", str(f["val"]), "--out", str(run),
                 "--backbone", "pfn-small", "--batch-size", "64", "--max-particles", "32", "--no-progress",
                 "-o", "train.max_epochs=1", "-o", "train.max_steps=null", "-o", "train.eval_every=25"]) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert (summary["steps"], summary["budget_steps"], summary["stop_reason"]) == (25, 25, "max_epochs")
    assert summary["epochs"] == 1.0
    assert summary["jets"] == 1600


def one_line_error(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0], err
    return err[0]


def test_bad_input(toptag_files, tmp_path, capsys):
    f = toptag_files
    base = ["train", "--val", str(f["val"]), "--backbone", "part-small", *FAST]
    # missing labels
    from hepfm.generation.job import GenerationJob, run_job

    unl = GenerationJob("toptag", 40, tmp_path / "unl.h5", seed=5, labeled=False, shard_size=20)
    run_job(unl, progress=False)
    msg = one_line_error(capsys, main([*base, "--data", str(unl.out), "--out", str(tmp_path / "a")]))
    assert "labels" in msg
    assert "unl.h5" in msg
    # a validation set with one class
    one = GenerationJob("toptag", 40, tmp_path / "one.h5", seed=6, mix={"Top": 1}, shard_size=40)
    run_job(one, progress=False)
    args = ["train", "--data", str(f["train"]), "--val", str(one.out), "--out", str(tmp_path / "b"), *FAST]
    msg = one_line_error(capsys, main(args))
    assert "single class" in msg
    # empty dataset: a glob that matches nothing
    msg = one_line_error(
        capsys, main([*base, "--data", str(tmp_path / "nothing*.h5"), "--out", str(tmp_path / "c")])
    )
    assert "nothing" in msg
    # feature set the data cannot provide (Top Tagging has no PID / impact parameters)
    args = ["train", "--data", str(f["test"]), "--val", str(f["val"]), "--out", str(tmp_path / "d"),
            "--features", "full", *FAST]
    msg = one_line_error(capsys, main(args))
    assert "full" in msg
    assert "test.h5" in msg


def test_checkpoint_from_another_model(trained, toptag_files, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained, other)
    spec = json.loads((other / "best.json").read_text())
    spec["backbone"]["in_features"] = 13  # as if trained on kinpid features
    (other / "best.json").write_text(json.dumps(spec))
    msg = one_line_error(capsys, main(["evaluate", str(other), "--data", str(toptag_files["test"])]))
    assert "does not fit" in msg
    assert "best.safetensors" in msg
    # resuming a run directory with a different backbone
    args = ["train", "--data", str(toptag_files["train"]), "--val", str(toptag_files["val"]),
            "--out", str(other), "--backbone", "pfn-small", *FAST]
    msg = one_line_error(capsys, main(args))
    assert "cannot resume" in msg
    assert "model.backbone" in msg
    assert "--restart" in msg


def test_every_train_preset_resolves_and_part_toptag_is_the_part_recipe():
    from hepfm.configs import list_presets
    from hepfm.workflows.classify import resolve_config

    for name in list_presets("train"):
        data, model, train = resolve_config(name, {})
        assert data.batch_size > 0, name
        assert model.backbone, name
        assert (train.max_steps or 0) > 0 or (train.max_epochs or 0) > 0, name
    _, _, train = resolve_config("cpu-small", {})
    # converges on the data given: an epoch budget with early stopping, and a guard for slow CPUs
    budget = (train.max_steps, train.max_epochs, train.early_stop_patience, train.max_minutes)
    assert budget == (None, 20, 5, 120)
    data, model, train = resolve_config("part-toptag", {})
    # weaver's Ranger (RAdam betas 0.95/0.999, eps 1e-5, Lookahead 6/0.5), no clipping, as ParT's recipe
    assert (model.backbone, data.max_particles, data.batch_size) == ("part", 128, 512)
    assert train.optim.name == "ranger"
    assert tuple(train.optim.betas) == (0.95, 0.999)
    assert train.optim.eps == 1e-5
    assert train.clip_grad == 0
    assert train.schedule.name == "flat-anneal"
