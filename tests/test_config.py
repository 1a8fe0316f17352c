"""The run configuration: the one flag table, the typed sections and their one-line errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from hepfm.cli.config_flags import FLAGS, add_config_flags, config_delta
from hepfm.errors import HepfmInputError

#: A valid value per flag kind, and a check that it arrived in the typed config.
VALUES = {"str": None, "int": "7", "float": "0.5", "files": "x.h5", "switch": None}
STRINGS = {"--backbone": "pfn", "--features": "kin", "--device": "cpu", "--head": "mlp", "--objective": "mpm"}


def resolved(command: str, delta: dict) -> dict:
    """The typed config sections of ``command`` as one dotted-key mapping."""
    from dataclasses import asdict

    from hepfm.workflows.provenance import _flatten

    if command == "train":
        from hepfm.workflows.classify import resolve_config

        data, model, train = resolve_config("cpu-small", delta)
        return _flatten({"data": asdict(data), "model": asdict(model), "train": train.to_dict()})
    if command == "pretrain":
        from hepfm.workflows.pretrain import resolve

        data, model, objective, train, probe = resolve("jetclr-cpu", delta)
        return _flatten({"data": asdict(data), "model": asdict(model), "objective": asdict(objective),
                         "train": train.to_dict(), "probe": asdict(probe)})
    from hepfm.workflows.finetune import resolve as resolve_ft

    spec = {"max_particles": 32, "features": {"name": "kin"}}
    data, head, ft, train = resolve_ft("cpu-small", delta, spec)
    return _flatten(
        {"data": asdict(data), "head": asdict(head), "finetune": asdict(ft), "train": train.to_dict()}
    )


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_every_flag_reaches_its_config_key(command):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, command)
    flags = [f for f in FLAGS[command] if f.flag != "--epochs"]  # --epochs and --steps exclude each other
    argv = []
    for f in flags:
        argv += [f.flag] if f.kind == "switch" else [f.flag, STRINGS.get(f.flag) or VALUES[f.kind]]
    flat = resolved(command, config_delta(parser.parse_args(argv), command))
    for f in flags:
        want = {"int": 7, "float": 0.5, "files": ["x.h5"], "switch": True}.get(f.kind, STRINGS.get(f.flag))
        got = flat[f.key]
        assert (list(got) if f.kind == "files" else got) == want, f.flag


def test_an_override_wins_over_its_flag():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, "train")
    args = parser.parse_args(["--data", "a.h5", "--val", "b.h5", "--steps", "5", "-o", "train.max_steps=9"])
    assert config_delta(args, "train")["train"]["max_steps"] == 9


@pytest.mark.parametrize(("override", "message"), [
    ("train.batch_size=5", "unknown option train.batch_size"),
    ("data.batch_sise=5", "did you mean data.batch_size"),
    ("data.max_particles=0", "data.max_particles must be >= 1"),
    ("train.optim.betas=[0.9]", "train.optim.betas"),
    ("model.backbone_options=3", "model.backbone_options"),
    ("nosection.x=1", "unknown config section"),
])
def test_bad_keys_and_values_are_refused_where_they_enter(override, message):
    from hepfm.training.config import apply_overrides

    with pytest.raises(HepfmInputError, match=message.replace(".", r"\.").replace("[", r"\[")):
        resolved("train", apply_overrides({}, [override]))


def test_help_lists_what_the_registries_hold(capsys):
    from hepfm.cli import main
    from hepfm.heads import HEADS
    from hepfm.models import BACKBONES
    from hepfm.objectives.registry import objective_names

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{" not in text
    for name in (*BACKBONES.names(), *objective_names()):
        assert name in text.replace("- ", "-"), name  # argparse may wrap a name at its hyphen
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in HEADS.names())


@pytest.mark.parametrize(("flags", "steps", "epochs"), [
    ([], None, 20),  # the preset's budget: epochs, with early stopping and a time guard
    (["--steps", "5"], 5, None),  # exactly 5 steps, whatever the preset's epoch budget
    (["--epochs", "3"], None, 3),
    (["--epochs", "3", "-o", "train.max_steps=50"], 50, 3),  # both: the smaller applies
])
def test_the_budget_flag_given_is_the_budget(flags, steps, epochs):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, "train")
    args = parser.parse_args(["--data", "a.h5", "--val", "b.h5", *flags])
    flat = resolved("train", config_delta(args, "train"))
    assert (flat["train.max_steps"], flat["train.max_epochs"]) == (steps, epochs)


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "src" / "hepfm" / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.parent.name != "study"], ids=lambda p: p.stem)
def test_every_shipped_preset_resolves(path):
    """Every preset a user can name passes the same checks a user's own config does."""
    kind, name = path.parent.name, path.stem
    if kind == "pretrain":
        from hepfm.objectives.registry import objective_needs_labels
        from hepfm.workflows.pretrain import resolve

        _, _, objective, _, _ = resolve(name, {})
        objective_needs_labels(objective.name, objective.options)  # composite parts are checked here
    elif kind == "finetune":
        from hepfm.workflows.finetune import resolve as resolve_ft

        resolve_ft(name, {})
    else:
        from hepfm.workflows.classify import resolve_config

        resolve_config(name, {})
