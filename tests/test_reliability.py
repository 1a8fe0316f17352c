"""Reliability of the training workflows: the same seed gives the same numbers, weights are checked on
load, a resume with other settings or data is refused, and two runs never share an output.

Runs the CLI on small random (non-Pythia) jets so that each check costs seconds.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from _factories import random_chunk

from hepfm.cli import main
from hepfm.data.formats import write_jets

COMMON = ["--max-particles", "32", "--batch-size", "64", "--no-progress", "-o", "train.eval_every=5",
          "-o", "train.ckpt_every=5"]


@pytest.fixture(scope="module")
def jets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("jets")
    files = {}
    for name, n, seed in (("train", 384, 1), ("val", 128, 2), ("other", 384, 3)):
        files[name] = root / f"{name}.h5"
        write_jets(files[name], [random_chunk(n, 32, seed=seed)], "hepfm")
    return files


def train_args(jets: dict[str, Path], out: Path, *extra: str, steps: int = 10, seed: int = 7) -> list[str]:
    return ["train", "--data", str(jets["train"]), "--val", str(jets["val"]), "--out", str(out),
            "--backbone", "pfn", "--steps", str(steps), "--seed", str(seed), *COMMON, *extra]


def pretrain_args(jets: dict[str, Path], out: Path, *extra: str, seed: int = 7) -> list[str]:
    return ["pretrain", "--objective", "jetclr", "--data", str(jets["train"]), "--out", str(out),
            "--backbone", "pfn", "--steps", "6", "--seed", str(seed), *COMMON, *extra]


def finetune_args(jets: dict[str, Path], pre: Path, out: Path, mode: str, seed: int = 7) -> list[str]:
    return ["finetune", "--pretrained", str(pre), "--data", str(jets["train"]), "--val", str(jets["val"]),
            "--out", str(out), "--mode", mode, "--n-labels", "200", "--steps", "6", "--batch-size", "32",
            "--seed", str(seed), "--no-progress", "-o", "train.eval_every=3"]


def val_losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in rows if "val_loss" in r]


def fingerprint(run: Path, weights: str) -> tuple[list[float], str]:
    """Validation losses and the checksum of the exported weights: equal only for bitwise-equal runs."""
    spec = json.loads((run / weights).with_suffix(".json").read_text())
    return val_losses(run), spec["weights_sha256"]


def one_line(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def pretrained(jets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pre") / "clr"
    assert main(pretrain_args(jets, out)) == 0
    return out


# -- 1. same seed, same numbers
def test_train_is_bitwise_reproducible_for_a_seed(jets, tmp_path):
    for run in ("a", "b"):
        assert main(train_args(jets, tmp_path / run)) == 0
    assert main(train_args(jets, tmp_path / "c", seed=8)) == 0
    assert main(train_args(jets, tmp_path / "d", "-o", "train.deterministic=true")) == 0
    a, b, c, d = (fingerprint(tmp_path / r, "best.safetensors") for r in "abcd")
    assert len(a[0]) == 2
    assert a == b
    assert a[1] != c[1]
    assert a[0] != c[0]
    assert d == a  # CPU kernels are deterministic already: asking for it changes nothing


def test_deterministic_kernels_are_asked_for_and_restored(monkeypatch):
    import torch

    from hepfm.training.engine import deterministic_kernels

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels(False):
        assert not torch.are_deterministic_algorithms_enabled()


def test_pretrain_and_finetune_are_bitwise_reproducible_for_a_seed(jets, pretrained, tmp_path):
    assert main(pretrain_args(jets, tmp_path / "pre2")) == 0
    assert fingerprint(pretrained, "backbone.safetensors")[1] == fingerprint(tmp_path / "pre2",
                                                                              "backbone.safetensors")[1]
    for mode in ("scratch", "finetune"):
        runs = [tmp_path / f"{mode}{i}" for i in range(2)]
        for run in runs:
            assert main(finetune_args(jets, pretrained, run, mode)) == 0
        assert fingerprint(runs[0], "best.safetensors") == fingerprint(runs[1], "best.safetensors"), mode


# -- 2. corrupted weights are refused
def _zero_bytes(path: Path, n: int = 100) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    data[start:start + n] = bytes(n)
    path.write_bytes(bytes(data))


def test_corrupted_weights_are_refused_by_every_reader(jets, pretrained, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(jets, run)) == 0
    capsys.readouterr()
    _zero_bytes(run / "best.safetensors")
    msg = one_line(capsys, main(["evaluate", str(run), "--data", str(jets["val"]), "--no-plots"]))
    assert "checksum" in msg
    assert "best.safetensors" in msg
    pre = tmp_path / "pre"
    shutil.copytree(pretrained, pre)
    _zero_bytes(pre / "backbone.safetensors")
    msg = one_line(capsys, main(finetune_args(jets, pre, tmp_path / "ft", "finetune")))
    assert "checksum" in msg
    assert "backbone.safetensors" in msg
    assert not (tmp_path / "ft").exists()
    msg = one_line(capsys, main(["embed", str(pre), "--data", str(jets["val"]), "--no-plot"]))
    assert "checksum" in msg
    # the exact-resume state: a resume refuses it, --restart starts over
    _zero_bytes(run / "checkpoints" / "last.pt")
    msg = one_line(capsys, main(train_args(jets, run, steps=15)))
    assert "cannot resume" in msg
    assert "checksum" in msg
    assert main(train_args(jets, run, "--restart", steps=15)) == 0
    assert max(json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()) == 15


# -- 3. a resume with other settings or data is refused
@pytest.mark.parametrize(("change", "key"), [
    (["--seed", "8"], "train.seed"),
    (["--batch-size", "32"], "data.batch_size"),
    (["--data", "OTHER"], "data.train"),
])
def test_resume_with_other_settings_is_refused(jets, tmp_path, capsys, change, key):
    run = tmp_path / "run"
    assert main(train_args(jets, run)) == 0
    capsys.readouterr()
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "provenance.json", "metrics.jsonl")}
    args = train_args(jets, run, steps=15)
    for i in range(0, len(change), 2):  # replace the flag's value
        value = str(jets["other"]) if change[i + 1] == "OTHER" else change[i + 1]
        args[args.index(change[i]) + 1] = value
    msg = one_line(capsys, main(args))
    assert "cannot resume" in msg
    assert key in msg
    assert "--restart" in msg
    assert {name: (run / name).read_bytes() for name in before} == before  # nothing rewritten
    assert main([*args, "--restart"]) == 0  # --restart starts over with the new values
    config = (run / "config.yaml").read_text()
    assert config != before["config.yaml"].decode() or change[0] == "--data"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [5, 10, 15]  # one fresh history


def test_a_resume_with_the_same_settings_continues(jets, tmp_path):
    run = tmp_path / "run"
    assert main(train_args(jets, run)) == 0
    assert main(train_args(jets, run, "--device", "cpu", steps=15)) == 0  # max_steps and device may change
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [5, 10, 15]  # continued, no step twice


# -- 12. two runs into the same output
def test_a_second_run_into_a_locked_output_is_refused(jets, tmp_path, capsys):
    from hepfm.io import output_lock

    run = tmp_path / "run"
    with output_lock(run, directory=True):
        msg = one_line(capsys, main(train_args(jets, run)))
    assert "another hepfm process" in msg
    assert str(run) in msg
    assert not (run / "metrics.jsonl").exists()
    assert main(train_args(jets, run)) == 0  # the lock went with its holder


# -- 14. training labels of one class
def test_single_class_training_data_is_refused(jets, tmp_path, capsys):
    one = tmp_path / "one.h5"
    chunk = random_chunk(200, 32, seed=4)
    chunk.label[:] = 1
    write_jets(one, [chunk], "hepfm")
    args = train_args(jets, tmp_path / "run")
    args[args.index("--data") + 1] = str(one)
    msg = one_line(capsys, main(args))
    assert "single class" in msg
    assert "one.h5" in msg
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_atomic_outputs_get_a_normal_files_mode(tmp_path):
    from hepfm.io import write_json_atomic

    mask = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(mask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


def test_a_study_resumes_cells_stopped_by_the_clock(tmp_path):
    from hepfm.studies.runner import finished

    run = tmp_path / "cell"
    run.mkdir()
    assert not finished(run)
    (run / "best.safetensors").write_bytes(b"x")
    assert not finished(run)  # no summary: it never finished
    for reason, done in (("time_limit", False), ("max_steps", True), ("early_stopping", True)):
        (run / "train_summary.json").write_text(json.dumps({"stop_reason": reason}))
        assert finished(run) == done, reason
    pre = tmp_path / "pre"
    pre.mkdir()
    (pre / "backbone.safetensors").write_bytes(b"x")
    assert finished(pre, "backbone.safetensors")  # placed by hand: adopted


def test_training_without_validation_files_is_refused(jets, tmp_path):
    from hepfm.errors import HepfmInputError
    from hepfm.workflows.classify import train

    with pytest.raises(HepfmInputError, match="--val"):
        train("cpu-small", {"data": {"train": [str(jets["train"])]}}, tmp_path / "run")
    assert not (tmp_path / "run").exists()
