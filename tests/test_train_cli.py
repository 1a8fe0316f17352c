"""End to end: ``hepfm train`` and ``hepfm evaluate`` on generated Top-Tagging-like jets, and their bad input."""

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
    assert prov["versions"]["torch"] and prov["data"]["train"][0]["metadata"]["dataset"] == "toptag"
    spec = json.loads((trained / "best.json").read_text())
    assert spec["backbone"]["name"] == "part-small" and spec["features"]["name"] == "kin"
    assert spec["class_names"] == ["QCD", "Top"]


def test_evaluate_beats_random_on_the_official_layout(trained, toptag_files, capsys):
    # the test file is in the Top Tagging pandas layout: evaluation reads it like the real dataset
    assert main(["evaluate", str(trained), "--data", str(toptag_files["test"]), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert {"accuracy", "auc", "rej30", "rej50", "n_jets"} <= set(m)
    assert m["n_jets"] == 400
    assert m["auc"] > 0.85 and m["accuracy"] > 0.75 and m["rej50"] > 5
    out = trained / "eval" / "test"
    assert (out / "metrics.json").exists() and (out / "roc.png").stat().st_size > 1000


def test_hepfm_load_gives_the_same_scores(trained, toptag_files):
    import hepfm
    from hepfm.workflows.classify import predict

    model, spec = hepfm.load(trained)
    logits, labels, _ = predict(model, spec, [str(toptag_files["test"])])
    assert logits.shape == (400, 2) and np.isfinite(logits).all()


def test_resume_continues_to_more_steps(trained, toptag_files, tmp_path):
    import shutil

    run = tmp_path / "cont"
    shutil.copytree(trained, run)
    f = toptag_files
    args = ["train", "--data", str(f["train"]), "--val", str(f["val"]), "--out", str(run), "--backbone", "part-small"]
    assert main(args + [a if a != "120" else "160" for a in FAST]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 160 and steps.count(120) >= 1


def one_line_error(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_bad_input(toptag_files, tmp_path, capsys):
    f = toptag_files
    base = ["train", "--val", str(f["val"]), "--backbone", "part-small", *FAST]
    # missing labels
    from hepfm.generation.job import GenerationJob, run_job

    unl = GenerationJob("toptag", 40, tmp_path / "unl.h5", seed=5, labeled=False, shard_size=20)
    run_job(unl, progress=False)
    msg = one_line_error(capsys, main(base + ["--data", str(unl.out), "--out", str(tmp_path / "a")]))
    assert "labels" in msg and "unl.h5" in msg
    # a validation set with one class
    one = GenerationJob("toptag", 40, tmp_path / "one.h5", seed=6, mix={"Top": 1}, shard_size=40)
    run_job(one, progress=False)
    args = ["train", "--data", str(f["train"]), "--val", str(one.out), "--out", str(tmp_path / "b"), *FAST]
    msg = one_line_error(capsys, main(args))
    assert "single class" in msg
    # empty dataset: a glob that matches nothing
    msg = one_line_error(capsys, main(base + ["--data", str(tmp_path / "nothing*.h5"), "--out", str(tmp_path / "c")]))
    assert "nothing" in msg
    # feature set the data cannot provide (Top Tagging has no PID / impact parameters)
    args = ["train", "--data", str(f["test"]), "--val", str(f["val"]), "--out", str(tmp_path / "d"),
            "--features", "full", *FAST]
    msg = one_line_error(capsys, main(args))
    assert "full" in msg and "test.h5" in msg


def test_checkpoint_from_another_model(trained, toptag_files, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained, other)
    spec = json.loads((other / "best.json").read_text())
    spec["backbone"]["in_features"] = 13  # as if trained on kinpid features
    (other / "best.json").write_text(json.dumps(spec))
    msg = one_line_error(capsys, main(["evaluate", str(other), "--data", str(toptag_files["test"])]))
    assert "does not fit" in msg and "best.safetensors" in msg
    # resuming a run directory with a different backbone
    args = ["train", "--data", str(toptag_files["train"]), "--val", str(toptag_files["val"]), "--out", str(other),
            "--backbone", "pfn-small", *FAST]
    msg = one_line_error(capsys, main(args))
    assert "cannot resume" in msg and "model.backbone" in msg and "--restart" in msg


def test_every_train_preset_resolves_and_part_toptag_is_the_part_recipe():
    from hepfm.configs import list_presets
    from hepfm.workflows.classify import resolve_config

    for name in list_presets("train"):
        data, model, train = resolve_config(name, {})
        assert data.batch_size > 0 and model.backbone and train.max_steps > 0, name
    data, model, train = resolve_config("part-toptag", {})
    # weaver's Ranger (RAdam betas 0.95/0.999, eps 1e-5, Lookahead 6/0.5), no clipping, as ParT's recipe
    assert (model.backbone, data.max_particles, data.batch_size) == ("part", 128, 512)
    assert train.optim.name == "ranger" and tuple(train.optim.betas) == (0.95, 0.999) and train.optim.eps == 1e-5
    assert train.clip_grad == 0 and train.schedule.name == "flat-anneal"
