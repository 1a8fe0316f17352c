"""Seed 003's pretraining: the Lorentz augmentations of events, masked object-type prediction (leak-free,
learning from the CLI), the event transformer presets, and SGD."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _producers import write_nanoaod_events

from hepfm.cli import main
from hepfm.contracts import ParticleBatch
from hepfm.data.features import get_feature_set
from hepfm.data.formats import open_source
from hepfm.data.loader import make_loader
from hepfm.errors import HepfmInputError
from hepfm.models import create_backbone
from hepfm.objectives.masked_object import MaskedObjectConfig, MaskedObjectType, pick_one
from hepfm.objectives.registry import create_objective, objective_input
from hepfm.physics.lorentz import LorentzConfig, boost_z, flip_z, rotate_azimuth


def _events(b=6, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    pt = 20 + 80 * torch.rand(b, n, generator=g, dtype=torch.float64)
    eta = 2 * torch.rand(b, n, generator=g, dtype=torch.float64) - 1
    phi = 6 * torch.rand(b, n, generator=g, dtype=torch.float64) - 3
    m = 5 * torch.rand(b, n, generator=g, dtype=torch.float64)
    p4 = torch.stack([pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta),
                      torch.sqrt((pt * torch.cosh(eta)) ** 2 + m**2)], -1)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 3:] = False
    return p4 * mask.unsqueeze(-1), mask


def _pair_mass(p4):
    s = p4[:, 0] + p4[:, 1]
    return torch.sqrt(s[:, 3] ** 2 - (s[:, :3] ** 2).sum(-1))


def _pt(p4):
    return torch.hypot(p4[..., 0], p4[..., 1])


def _rapidity(p4):
    return 0.5 * torch.log((p4[..., 3] + p4[..., 2]) / (p4[..., 3] - p4[..., 2]))


def _dr(p4):
    pt = _pt(p4)
    eta, phi = torch.asinh(p4[..., 2] / pt), torch.atan2(p4[..., 1], p4[..., 0])
    dphi = torch.remainder(phi[:, 0] - phi[:, 1] + torch.pi, 2 * torch.pi) - torch.pi
    return torch.hypot(eta[:, 0] - eta[:, 1], dphi)


@pytest.mark.parametrize("fn", [rotate_azimuth, flip_z, boost_z])
def test_lorentz_augmentations_keep_what_they_must(fn):
    p4, mask = _events()
    out = fn(p4, mask, prob=1.0, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(out, p4)  # it did something
    torch.testing.assert_close(_pair_mass(out), _pair_mass(p4))  # invariant masses
    torch.testing.assert_close(_pt(out), _pt(p4))  # transverse momenta
    def mass2(v):
        return v[..., 3] ** 2 - (v[..., :3] ** 2).sum(-1)

    torch.testing.assert_close(mass2(out), mass2(p4))  # every object's mass
    assert torch.all(out[~mask] == 0)
    if fn is boost_z:  # rapidity differences, not ΔR (the objects are massive)
        dy = _rapidity(out)[:, 0] - _rapidity(out)[:, 1]
        torch.testing.assert_close(dy, _rapidity(p4)[:, 0] - _rapidity(p4)[:, 1])
    else:
        torch.testing.assert_close(_dr(out), _dr(p4))


def test_boost_keeps_transverse_objects_and_config_pipeline():
    p4, mask = _events()
    keep = torch.zeros_like(mask)
    keep[:, 2] = True
    out = boost_z(p4, mask, width=1.0, keep=keep, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out[:, 2], p4[:, 2])
    cfg = LorentzConfig(rotate=1.0, flip=1.0, boost=1.0, boost_width=0.5)
    torch.testing.assert_close(_pair_mass(cfg(p4, mask)), _pair_mass(p4))
    with pytest.raises(HepfmInputError, match=r"augment\.flip is a probability"):
        LorentzConfig(flip=2.0)


def test_pick_one():
    eligible = torch.tensor([[True, True, False], [False, False, False], [False, True, True]])
    counts = torch.zeros(3, 3)
    for _ in range(300):
        chosen = pick_one(eligible)
        assert chosen.sum(1).tolist() == [1, 0, 1]
        assert not (chosen & ~eligible).any()
        counts += chosen
    assert counts[0, 0] > 100
    assert counts[0, 1] > 100  # both eligible objects get chosen


@pytest.fixture(scope="module")
def event_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("events")
    write_nanoaod_events(root / "train.root", 600, taus=True, seed=3)
    write_nanoaod_events(root / "val.root", 100, taus=True, seed=4)
    return root


def _batch(path):
    fs = get_feature_set("objects")
    return next(iter(make_loader([open_source(path)], fs, 16, max_particles=10))), fs


def test_masked_object_hides_the_replaced_object(event_files):
    batch, fs = _batch(event_files / "val.root")
    torch.manual_seed(0)
    obj = MaskedObjectType(create_backbone("event-transformer-small", fs.dim), fs,
                           MaskedObjectConfig(augment=LorentzConfig(rotate=0, flip=0))).eval()
    torch.manual_seed(5)
    ref = obj(batch).loss
    torch.manual_seed(5)
    cls = obj.target_of_type[obj.object_types(batch)]
    chosen = pick_one(batch.mask & (cls >= 0))
    # change everything about the chosen objects except their type: the loss cannot move
    x, p4 = batch.x.clone(), batch.p4.clone()
    x[..., :5][chosen] = 3.0
    p4[chosen] = torch.tensor([50.0, 10.0, 5.0, 60.0])
    torch.manual_seed(5)
    changed = obj(ParticleBatch(x=x, mask=batch.mask, p4=p4, jet=None, label=None)).loss
    torch.testing.assert_close(changed, ref)


def test_masked_object_needs_the_objects_feature_set():
    assert objective_input("masked-object") == "events"
    assert objective_input("mpm") == "jets"
    fs = get_feature_set("kin")
    with pytest.raises(HepfmInputError, match="masked-object needs events with object types"):
        create_objective("masked-object", lambda: create_backbone("event-transformer-small", fs.dim), fs)


def test_masked_object_learns_from_the_cli(event_files, tmp_path):
    # in these events the hidden object's type is the one missing from the visible ones: learnable
    out = tmp_path / "pre"
    assert main(["pretrain", "--objective", "masked-object", "--data", str(event_files / "train.root"),
                 "--val", str(event_files / "val.root"), "--out", str(out), "--steps", "200",
                 "--batch-size", "32", "--no-progress", "-o", "train.optim.name=adamw",
                 "-o", "train.optim.lr=0.003"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    acc = [r["train_type_accuracy"] for r in rows if "train_type_accuracy" in r]
    assert acc[0] < 0.5
    assert np.mean(acc[-3:]) > 0.8
    assert (out / "backbone.safetensors").exists()


def test_event_transformer_presets():
    n = sum(p.numel() for p in create_backbone("event-transformer", 12).parameters())
    assert 10e6 < n < 12e6  # the seed's ~11M
    assert sum(p.numel() for p in create_backbone("event-transformer-small", 12).parameters()) < 1e5
