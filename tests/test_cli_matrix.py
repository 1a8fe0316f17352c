"""The standing guard for bad input: every subcommand x bad options, bad values and bad files.

Each case must end with exit 2 and exactly one line on stderr (no traceback, no usage dump), and must
leave the file tree exactly as it was: nothing created, modified or deleted (no partial output, no
temp or lock file, no run directory). A new subcommand gets its rows here.

Placeholders in the argument lists: {train} {val} {unl} labeled / labeled / unlabeled jet files,
{run} a trained classifier run, {pre} a pretraining run, {txt} a text file, {dir} an existing
directory, {new} a path that does not exist yet (the output a failed command must not create).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from _factories import random_chunk

from hepfm.cli import main
from hepfm.data.formats import write_jets

TRAIN = ["train", "--data", "{train}", "--val", "{val}", "--out", "{new}", "--backbone", "pfn",
         "--steps", "4", "--batch-size", "32", "--max-particles", "32", "--no-progress"]
PRETRAIN = ["pretrain", "--objective", "jetclr", "--data", "{unl}", "--out", "{new}", "--backbone", "pfn",
            "--steps", "4", "--batch-size", "32", "--max-particles", "32", "--no-progress"]
FINETUNE = ["finetune", "--pretrained", "{pre}", "--data", "{train}", "--val", "{val}", "--out", "{new}",
            "--steps", "4", "--batch-size", "32", "--no-progress"]
EVALUATE = ["evaluate", "{run}", "--data", "{val}", "--no-plots"]
EMBED = ["embed", "{pre}", "--data", "{val}", "--no-plot", "--n-jets", "64"]
STUDY = ["study", "fewshot", "--pretrain-data", "{unl}", "--train", "{train}", "--val", "{val}",
         "--test", "{val}", "--out", "{new}", "--n-labels", "40", "--seeds", "1"]
GENERATE = ["generate", "toptag", "--n-jets", "20", "--out", "{new}.h5", "--no-progress"]
CONVERT = ["convert", "{train}", "--to", "hepfm", "--out", "{new}.h5"]
INSPECT = ["inspect", "{train}"]
DEMO = ["demo", "--out", "{new}", "--no-progress"]


def with_(base: list[str], *extra: str, drop: tuple[str, ...] = ()) -> list[str]:
    """``base`` with flags in ``drop`` removed (with their value) and ``extra`` appended."""
    out, skip = [], False
    for i, a in enumerate(base):
        if skip:
            skip = False
            continue
        if a in drop:
            skip = i + 1 < len(base) and not base[i + 1].startswith("--")
            continue
        out.append(a)
    return [*out, *extra]


def set_(base: list[str], flag: str, value: str) -> list[str]:
    return with_(base, flag, value, drop=(flag,))


# (id, argv, a word the one-line message must contain)
CASES: list[tuple[str, list[str], str]] = [
    # -- train: option values
    ("train-steps-0", set_(TRAIN, "--steps", "0"), "max_steps"),
    ("train-steps-negative", set_(TRAIN, "--steps", "-5"), "max_steps"),
    ("train-batch-size-0", set_(TRAIN, "--batch-size", "0"), "batch_size"),
    ("train-lr-negative", set_(TRAIN, "--lr", "-1"), "lr"),
    ("train-lr-nan", set_(TRAIN, "--lr", "nan"), "lr"),
    ("train-max-particles-0", set_(TRAIN, "--max-particles", "0"), "max_particles"),
    ("train-max-particles-negative", set_(TRAIN, "--max-particles", "-1"), "max_particles"),
    ("train-device-bogus", with_(TRAIN, "--device", "bogus"), "device"),
    ("train-eval-every-0", with_(TRAIN, "-o", "train.eval_every=0"), "eval_every"),
    ("train-grad-accum-0", with_(TRAIN, "-o", "train.grad_accum=0"), "grad_accum"),
    ("train-num-workers-negative", with_(TRAIN, "-o", "train.num_workers=-1"), "num_workers"),
    ("train-betas-scalar", with_(TRAIN, "-o", "train.optim.betas=0.9"), "betas"),
    ("train-optimizer-unknown", with_(TRAIN, "-o", "train.optim.name=sgdd"), "sgdd"),
    ("train-unknown-key", with_(TRAIN, "-o", "train.eval_evry=5"), "eval_every"),
    ("train-batch-size-in-train-section", with_(TRAIN, "-o", "train.batch_size=5"), "train.batch_size"),
    ("train-backbone-unknown", set_(TRAIN, "--backbone", "nope"), "nope"),
    ("train-features-unknown", with_(TRAIN, "--features", "nope"), "nope"),
    ("train-override-not-key-value", with_(TRAIN, "-o", "train.seed"), "train.seed"),
    ("train-seed-negative", with_(TRAIN, "--seed", "-3"), "seed"),
    # -- train: inputs and outputs
    ("train-data-missing", set_(TRAIN, "--data", "{missing}"), "missing"),
    ("train-data-not-jets", set_(TRAIN, "--data", "{txt}"), "notes.txt"),
    ("train-data-unlabeled", set_(TRAIN, "--data", "{unl}"), "unl.h5"),
    ("train-data-one-class", set_(TRAIN, "--data", "{one}"), "single class"),
    ("train-val-one-class", set_(TRAIN, "--val", "{one}"), "single class"),
    ("train-out-is-a-file", set_(TRAIN, "--out", "{txt}"), "notes.txt"),
    ("train-unknown-flag", with_(TRAIN, "--stepz", "3"), "--stepz"),
    # -- evaluate
    ("evaluate-name-escapes", with_(EVALUATE, "--name", "../../x"), "--name"),
    ("evaluate-missing-run", ["evaluate", "{new}", "--data", "{val}"], "no such run"),
    ("evaluate-batch-size-0", with_(EVALUATE, "--batch-size", "0"), "batch-size"),
    ("evaluate-unlabeled", set_(EVALUATE, "--data", "{unl}"), "labels"),
    ("evaluate-one-class", set_(EVALUATE, "--data", "{one}"), "one.h5"),
    ("evaluate-not-a-run", ["evaluate", "{dir}", "--data", "{val}"], "best.safetensors"),
    # -- pretrain
    ("pretrain-objective-unknown", set_(PRETRAIN, "--objective", "nope"), "nope"),
    ("pretrain-temperature-not-a-number", with_(PRETRAIN, "-o", "objective.options.temperature=abc"),
     "temperature"),
    ("pretrain-option-unknown", with_(PRETRAIN, "-o", "objective.options.temprature=0.1"), "temprature"),
    ("pretrain-steps-0", set_(PRETRAIN, "--steps", "0"), "max_steps"),
    ("pretrain-out-is-a-file", set_(PRETRAIN, "--out", "{txt}"), "notes.txt"),
    ("pretrain-data-missing", set_(PRETRAIN, "--data", "{missing}"), "missing"),
    # -- finetune
    ("finetune-n-labels-0", with_(FINETUNE, "--n-labels", "0"), "n-labels"),
    ("finetune-n-labels-negative", with_(FINETUNE, "--n-labels", "-5"), "n-labels"),
    ("finetune-n-labels-1", with_(FINETUNE, "--n-labels", "1"), "n-labels"),
    ("finetune-lr-scale-not-a-number", with_(FINETUNE, "-o", "finetune.backbone_lr_scale=abc"),
     "backbone_lr_scale"),
    ("finetune-lr-scale-negative", with_(FINETUNE, "--backbone-lr-scale", "-1"), "backbone_lr_scale"),
    ("finetune-unknown-key", with_(FINETUNE, "-o", "finetune.backbone_lr_scal=1"), "backbone_lr_scal"),
    ("finetune-mode-unknown", with_(FINETUNE, "--mode", "nope"), "--mode"),
    ("finetune-pretrained-missing", set_(FINETUNE, "--pretrained", "{new}"), "no such run"),
    ("finetune-data-one-class", set_(FINETUNE, "--data", "{one}"), "single class"),
    ("finetune-out-is-a-file", set_(FINETUNE, "--out", "{txt}"), "notes.txt"),
    # -- embed
    ("embed-too-few-jets-for-a-map", ["embed", "{pre}", "--data", "{val}", "--n-jets", "5"], "n-jets"),
    ("embed-n-jets-0", set_(EMBED, "--n-jets", "0"), "n-jets"),
    ("embed-name-escapes", with_(EMBED, "--name", "../x"), "--name"),
    ("embed-missing-run", ["embed", "{new}", "--data", "{val}"], "no such run"),
    ("embed-data-missing", set_(EMBED, "--data", "{missing}"), "missing"),
    # -- study
    ("study-n-labels-0", set_(STUDY, "--n-labels", "0"), "n-labels"),
    ("study-n-labels-not-a-number", set_(STUDY, "--n-labels", "abc"), "n-labels"),
    ("study-mode-unknown", with_(STUDY, "--modes", "finetune,nope"), "nope"),
    ("study-pretrain-set-bad", with_(STUDY, "--pretrain-set", "train.max_steps=0"), "max_steps"),
    ("study-finetune-set-unknown", with_(STUDY, "--finetune-set", "finetune.backbone_lr_scal=1"),
     "backbone_lr_scal"),
    ("study-out-is-a-file", set_(STUDY, "--out", "{txt}"), "notes.txt"),
    # -- generate
    ("generate-shard-size-0", with_(GENERATE, "--shard-size", "0"), "shard-size"),
    ("generate-batch-events-0", with_(GENERATE, "--batch-events", "0"), "batch-events"),
    ("generate-seed-negative", with_(GENERATE, "--seed", "-1"), "seed"),
    ("generate-set-garbage", with_(GENERATE, "--set", "garbage"), "garbage"),
    ("generate-set-unknown-key", with_(GENERATE, "--set", "Nope:nothing = 3"), "Nope:nothing"),
    ("generate-workers-0", with_(GENERATE, "--workers", "0"), "workers"),
    ("generate-n-jets-0", set_(GENERATE, "--n-jets", "0"), "n-jets"),
    ("generate-out-is-a-directory", set_(GENERATE, "--out", "{dir}"), "directory"),
    ("generate-dataset-unknown", ["generate", "nope", "--n-jets", "20", "--out", "{new}.h5"], "nope"),
    # -- convert
    ("convert-labeled-and-unlabeled", with_(CONVERT, "{unl}"), "unl.h5"),
    ("convert-output-is-an-input", set_(CONVERT, "--out", "{train}"), "train.h5"),
    ("convert-output-is-a-directory", set_(CONVERT, "--out", "{dir}"), "directory"),
    ("convert-input-missing", ["convert", "{missing}", "--to", "hepfm", "--out", "{new}.h5"], "missing"),
    ("convert-input-not-jets", ["convert", "{txt}", "--to", "hepfm", "--out", "{new}.h5"], "notes.txt"),
    ("convert-max-jets-0", with_(CONVERT, "--max-jets", "0"), "max-jets"),
    # -- inspect
    ("inspect-missing", ["inspect", "{missing}"], "missing"),
    ("inspect-not-jets", ["inspect", "{txt}"], "notes.txt"),
    ("inspect-max-jets-0", with_(INSPECT, "--max-jets", "0"), "max-jets"),
    ("inspect-format-unknown", with_(INSPECT, "--format", "nope"), "nope"),
    # -- demo
    ("demo-workers-0", with_(DEMO, "--workers", "0"), "workers"),
    ("demo-n-labels-0", with_(DEMO, "--n-labels", "0"), "n-labels"),
    ("demo-pretrain-steps-0", with_(DEMO, "--pretrain-steps", "0"), "max_steps"),
    ("demo-objective-unknown", with_(DEMO, "--objective", "nope"), "nope"),
    ("demo-out-is-a-file", set_(DEMO, "--out", "{txt}"), "notes.txt"),
    # -- the top level
    ("no-command", [], "COMMAND"),
    ("unknown-command", ["trian"], "trian"),
]
if not torch.cuda.is_available():
    CASES.append(("train-device-cuda-without-gpu", with_(TRAIN, "--device", "cuda"), "cuda"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """The files every case may name, built once (no Pythia: random jets)."""
    root = tmp_path_factory.mktemp("matrix")
    paths = {name: root / f"{name}.h5" for name in ("train", "val", "unl", "one")}
    write_jets(paths["train"], [random_chunk(256, 32, seed=1)], "hepfm")
    write_jets(paths["val"], [random_chunk(96, 32, seed=2)], "hepfm")
    write_jets(paths["unl"], [random_chunk(256, 32, seed=3, class_names=None)], "hepfm")
    one = random_chunk(96, 32, seed=4)
    one.label[:] = 0
    write_jets(paths["one"], [one], "hepfm")
    (root / "notes.txt").write_text("not jets\n")
    (root / "folder").mkdir()
    fill = {k: str(v) for k, v in paths.items()} | {
        "txt": str(root / "notes.txt"),
        "dir": str(root / "folder"),
        "missing": str(root / "missing.h5"),
    }
    run, pre = root / "run", root / "pre"
    assert main([a.format(**fill, new=run) for a in TRAIN]) == 0
    assert main([a.format(**fill, new=pre) for a in PRETRAIN]) == 0
    return fill | {"run": str(run), "pre": str(pre), "root": str(root)}


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


def run_cli(args: list[str]) -> int:
    """``hepfm ARGS``'s exit status, whether the command or argparse (SystemExit) ends it."""
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(("argv", "expect"), [pytest.param(a, e, id=i) for i, a, e in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(world, tmp_path, capsys, argv, expect):
    new = tmp_path / "out"
    root = Path(world["root"])
    before = tree(root)
    assert run_cli([a.format(**world, new=new) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0], err[0]
    assert expect in err[0], err[0]
    assert tree(root) == before  # nothing written, modified or deleted
    assert not list(tmp_path.rglob("*")), list(tmp_path.rglob("*"))  # no output, temp or lock file


def test_the_matrix_covers_every_subcommand():
    from hepfm.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    covered = {argv[0] for _, argv, _ in CASES if argv}
    assert set(sub.choices) <= covered, set(sub.choices) - covered
