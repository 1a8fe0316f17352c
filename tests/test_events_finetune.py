"""Seed 003's downstream half: event classification finetuned from a masked-object backbone (the embedding
and encoder transferred, a fresh classifier), the reading options and event selection of NanoAOD events,
and the one-line refusals of data a model was not trained on."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
import torch
import yaml
from _factories import random_chunk
from _producers import write_nanoaod_events

import hepfm.workflows.finetune as finetune_module
from hepfm.cli import main
from hepfm.contracts import ParticleBatch
from hepfm.data.features import get_feature_set
from hepfm.data.formats import ArraySource, open_source, write_jets
from hepfm.data.formats.nanoaod_events import EventOptions, MinObjects, SelectedEvents, count_types
from hepfm.data.jets import OBJECT_TYPES, JetChunk, from_pt_eta_phi_m
from hepfm.data.loader import make_loader
from hepfm.errors import HepfmInputError
from hepfm.heads import create_head_for
from hepfm.models import create_backbone
from hepfm.objectives.supervised import Supervised
from hepfm.training import checkpoint as ckpt
from hepfm.training.engine import Trainer

T = {k: i for i, k in enumerate(OBJECT_TYPES)}
CLASSES = ("ttbar", "signal")


def labeled_events(n: int, seed: int, *, photons: bool = False, slots: int = 12) -> JetChunk:
    """Events of objects with a learnable label: one lepton, the MET, one b-jet and 2-4 light jets in
    both classes; class 1 (``signal``) has a second b-jet. ``photons`` adds a photon to every event."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    cols = {k: np.zeros((n, slots), np.float32) for k in ("pt", "eta", "phi", "mass", "charge", "btag")}
    typ, mask = np.zeros((n, slots), np.int32), np.zeros((n, slots), bool)
    for i in range(n):
        objs = [(rng.choice([T["electron"], T["muon"]]), rng.uniform(25, 80), rng.choice([-1.0, 1.0])),
                (T["met"], rng.uniform(20, 100), 0.0), (T["bjet"], rng.uniform(30, 150), 0.0)]
        objs += [(T["bjet"], rng.uniform(30, 150), 0.0)] * int(y[i])
        objs += [(T["jet"], rng.uniform(26, 120), 0.0) for _ in range(rng.integers(2, 5))]
        objs += [(T["photon"], rng.uniform(25, 60), 0.0)] * int(photons)
        for k, (t, pt, q) in enumerate(objs):
            cols["pt"][i, k], cols["charge"][i, k], typ[i, k], mask[i, k] = pt, q, t, True
            cols["eta"][i, k] = 0.0 if t == T["met"] else rng.uniform(-2.3, 2.3)
            cols["phi"][i, k] = rng.uniform(-np.pi, np.pi)
            cols["mass"][i, k] = 0.1 * pt if t in (T["bjet"], T["jet"]) else 0.0
            cols["btag"][i, k] = 0.9 if t == T["bjet"] else (0.05 if t == T["jet"] else 0.0)
    p4 = np.stack(from_pt_eta_phi_m(cols["pt"], cols["eta"], cols["phi"], cols["mass"]), -1) * mask[..., None]
    return JetChunk(p4=p4.astype(np.float32), mask=mask, label=y.astype(np.int64), class_names=CLASSES,
                    particles={"charge": cols["charge"], "object_type": typ, "btag": cols["btag"]})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("events_ft")
    out = {}
    for name, n, seed in (("train", 800, 1), ("val", 200, 2), ("test", 400, 3)):
        out[name] = root / f"{name}.h5"
        write_jets(out[name], [labeled_events(n, seed)], "hepfm", {"what": "synthetic events"})
    out["photons"] = root / "photons.h5"
    write_jets(out["photons"], [labeled_events(100, 4, photons=True)], "hepfm")
    out["pre"] = root / "pre.root"  # unlabeled NanoAOD events for pretraining (with taus)
    write_nanoaod_events(out["pre"], 400, taus=True, seed=3)
    out["nanoaod"] = root / "nano.root"  # no Tau_*, no Photon_*
    write_nanoaod_events(out["nanoaod"], 40, seed=5)
    for name, seed in (("jets_train", 6), ("jets_val", 7)):
        out[name] = root / f"{name}.h5"
        write_jets(out[name], [random_chunk(200, 20, seed=seed)], "hepfm")
    return out


@pytest.fixture(scope="module")
def pretrained(files, tmp_path_factory):
    """A masked-object run (few SGD steps of the CPU preset) and a jet backbone and classifier."""
    root = tmp_path_factory.mktemp("events_pre")
    runs = {"events": root / "mo", "jets": root / "jets", "jet_clf": root / "jet_clf"}
    assert main(["pretrain", "--objective", "masked-object", "--preset", "masked-object-cpu", "--data",
                 str(files["pre"]), "--out", str(runs["events"]), "--steps", "30", "--batch-size", "32",
                 "--no-progress"]) == 0
    assert main(["pretrain", "--objective", "jetclr", "--data", str(files["jets_train"]), "--out",
                 str(runs["jets"]), "--steps", "2", "--batch-size", "16", "--backbone", "pfn-small",
                 "--features", "kin", "--max-particles", "20", "--no-progress"]) == 0
    assert main(["train", "--data", str(files["jets_train"]), "--val", str(files["jets_val"]), "--out",
                 str(runs["jet_clf"]), "--steps", "2", "--batch-size", "16", "--backbone", "pfn-small",
                 "--features", "kin", "--max-particles", "20", "--no-progress"]) == 0
    return runs


def _one_line(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


class Recording(Trainer):
    """The engine, noting the objective's weights as training starts (after the backbone was loaded)."""

    at_start: ClassVar[dict[str, torch.Tensor]] = {}

    def fit(self, *args, **kwargs):
        Recording.at_start = {k: v.detach().clone() for k, v in self.objective.state_dict().items()}
        return super().fit(*args, **kwargs)


# -- finetuning -------------------------------------------------------------------------------------
def test_finetune_transfers_the_encoder_and_trains_a_new_classifier(files, pretrained, tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.setattr(finetune_module, "Trainer", Recording)
    pre = pretrained["events"]
    spec, bb_state, _ = ckpt.read_weights(pre / "backbone")
    assert spec["input_kind"] == "events"
    assert spec["object_types"] == ["electron", "muon", "tau", "bjet", "jet", "met"]
    # the exported backbone is embedding + encoder: the masked-object head and dummy stay behind
    assert not any(k.startswith(("head.", "dummy")) for k in bb_state)
    _, pre_state, _ = ckpt.read_weights(pre / "best")
    pre_head = {k: v for k, v in pre_state.items() if k.startswith("head.")}
    assert pre_head["head.3.weight"].shape == (6, 64)  # predicts the six seed types

    out = tmp_path / "ft"
    assert main(["finetune", "--pretrained", str(pre), "--data", str(files["train"]), "--val",
                 str(files["val"]), "--out", str(out), "--steps", "200", "--no-progress"]) == 0
    start = Recording.at_start
    for k, v in bb_state.items():  # loaded: equal to the checkpoint before the first step
        torch.testing.assert_close(start[f"backbone.{k}"], v, rtol=0, atol=0)
    head = {k: v for k, v in start.items() if k.startswith("head.")}
    assert head
    assert not any(h.shape == p.shape and torch.equal(h, p) for h in head.values() for p in pre_head.values())
    assert start["head.fc.weight"].shape == (2, 64)  # a classifier of the two classes
    config = (out / "config.yaml").read_text()  # the events preset: the seed's SGD + cosine
    assert "name: sgd" in config
    assert "name: cosine" in config
    best = json.loads((out / "best.json").read_text())
    assert best["input_kind"] == "events"
    assert best["features"]["name"] == "objects"

    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(files["test"]), "--json", "--no-plots"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_jets"] == 400
    assert metrics["auc"] > 0.7, metrics


@pytest.mark.parametrize("mode", ["frozen", "scratch"])
def test_frozen_keeps_and_scratch_reinitialises_the_encoder(files, pretrained, tmp_path, monkeypatch, mode):
    monkeypatch.setattr(finetune_module, "Trainer", Recording)
    pre = pretrained["events"]
    _, bb_state, _ = ckpt.read_weights(pre / "backbone")
    out = tmp_path / mode
    assert main(["finetune", "--pretrained", str(pre), "--mode", mode, "--data", str(files["train"]),
                 "--val", str(files["val"]), "--out", str(out), "--steps", "20", "--no-progress"]) == 0
    _, final, _ = ckpt.read_weights(out)
    same = [torch.equal(final[f"backbone.{k}"], v) for k, v in bb_state.items()]
    if mode == "frozen":  # trained the head only: the encoder is the checkpoint's, bit for bit
        assert all(same)
    else:  # the same architecture from random weights
        assert not any(torch.equal(Recording.at_start[f"backbone.{k}"], v) for k, v in bb_state.items()
                       if v.numel() > 1 and v.std() > 0)


def test_finetune_augment_is_asked_for_and_training_only(files, pretrained, tmp_path):
    out = tmp_path / "aug"
    assert main(["finetune", "--pretrained", str(pretrained["events"]), "--data", str(files["train"]),
                 "--val", str(files["val"]), "--out", str(out), "--steps", "3", "--no-progress",
                 "-o", "finetune.augment={rotate: 1.0, flip: 0.5}"]) == 0
    assert "rotate: 1.0" in (out / "config.yaml").read_text()
    # the classifier applies it to training batches only
    calls = []

    def augment(batch):
        calls.append(1)
        return batch

    fs = get_feature_set("objects")
    bb = create_backbone("event-transformer-small", fs.dim)
    model = Supervised(bb, create_head_for("linear", bb, 2), augment=augment)
    batch = next(iter(make_loader([open_source(files["val"])], fs, 8)))
    model.train()(batch)
    model.eval()(batch)
    assert len(calls) == 1


# -- reading options and the event selection ------------------------------------------------------
def test_event_selection_keeps_exact_lengths_and_the_passing_events(files):
    path = files["pre"]
    full = open_source(path, max_particles=None).read(0, 400)
    counts = count_types(full.particles["object_type"], full.mask)
    # muons pass their ID in even events only: two leptons there, one elsewhere
    sel = open_source(path, max_particles=None, min_objects={"lepton": 2, "jet": 2, "bjet": 1})
    want = np.flatnonzero((counts["lepton"] >= 2) & (counts["jet"] >= 2) & (counts["bjet"] >= 1))
    assert 150 < len(want) < 200  # the even events, less a few whose b-jet was cleaned against a lepton
    assert len(sel) == len(want) == sel.reading["events_selected"]
    assert sel.reading["events_in_file"] == 400
    got = sel.read(0, len(sel))
    np.testing.assert_array_equal(got.jets["event"], full.jets["event"][want])
    np.testing.assert_array_equal(got.p4, full.p4[want])
    part = sel.read(37, 61)  # any window is exactly that many passing events
    np.testing.assert_array_equal(part.jets["event"], full.jets["event"][want[37:61]])
    assert f"lepton >= 2, jet >= 2, bjet >= 1: {len(want)} of 400 events pass" in sel.field_map["events"]
    # the same selection over events already read into a hepfm file
    h5 = path.with_suffix(".h5")
    write_jets(h5, [full], "hepfm")
    wrapped = SelectedEvents(open_source(h5), MinObjects(lepton=2))
    even = np.flatnonzero(counts["lepton"] >= 2)
    assert len(wrapped) == len(even) == 200
    np.testing.assert_allclose(wrapped.read(0, 200).p4[:, : full.max_particles], full.p4[even], atol=1e-6)


def test_selected_events_stream_once_each_and_resume_exactly(files):
    fs = get_feature_set("objects")
    src = open_source(files["pre"], max_particles=10, min_objects={"lepton": 2})

    def make():
        return make_loader([src], fs, 16, streaming=True, shuffle=True, seed=3, chunk_size=40, buffer_size=80,
                           max_particles=10)

    def ids(batch):
        return batch.p4[:, :, 0].sum(1).numpy()

    full = [ids(b) for b in make()]
    assert len(full) == len(make()) == -(-200 // 16)  # len() is exact: no event is dropped on reading
    assert sum(len(b) for b in full) == 200
    loader = make()
    head = []
    for b in loader:
        head.append(ids(b))
        if len(head) == 5:
            break
    state = loader.state_dict()
    fresh = make()
    fresh.load_state_dict(state)
    rest = [ids(b) for b in fresh]
    for x, y in zip(head + rest, full, strict=True):
        np.testing.assert_array_equal(x, y)


def test_object_cuts_caps_and_collections(files):
    path = files["pre"]
    base = open_source(path, max_particles=None).read(0, 50)
    cut = open_source(path, max_particles=None, cuts={"jet": {"min_pt": 35, "max_count": 1}}).read(0, 50)
    t, tc = base.particles["object_type"], cut.particles["object_type"]
    jets = lambda ty, c: ((ty == T["jet"]) | (ty == T["bjet"])) & c.mask  # noqa: E731
    assert jets(t, base).sum(1).max() >= 2
    assert jets(tc, cut).sum(1).max() == 1
    pt = np.hypot(cut.p4[..., 0], cut.p4[..., 1])
    assert np.all(pt[jets(tc, cut)] > 35)
    no_taus = open_source(path, taus=False)
    assert "tau" not in no_taus.object_types
    assert (no_taus.read(0, 50).particles["object_type"] == T["tau"]).sum() == 0
    opts = EventOptions.from_options(cuts={"muon": {"max_abs_eta": 2.1}}, min_objects={"lepton": 1})
    assert opts.reader_options() == {"photons": False, "taus": True, "cuts": {"muon": {
        "min_pt": None, "max_abs_eta": 2.1, "max_count": None}}, "min_objects": {"lepton": 1}}
    for bad, msg in (({"cuts": {"jets": {}}}, "unknown collection 'jets'"),
                     ({"min_objects": {"leptons": 1}}, "did you mean events.min_objects.lepton"),
                     ({"cuts": {"jet": {"min_pt": -1}}}, "events.jet.min_pt must be >= 0"),
                     ({"min_objects": {"photon": 1}}, "needs photons read")):
        with pytest.raises(HepfmInputError, match=msg):
            EventOptions.from_options(**bad)


def test_reading_options_from_the_config_and_cli(files, tmp_path):
    out = tmp_path / "sel"
    assert main(["pretrain", "--objective", "masked-object", "--data", str(files["pre"]), "--out", str(out),
                 "--steps", "2", "--batch-size", "16", "--no-progress",
                 "-o", "data.events.min_objects={lepton: 2, bjet: 1}",
                 "-o", "data.events.jet.min_pt=30"]) == 0
    prov = json.loads((out / "provenance.json").read_text())["data"]["train"][0]
    want = open_source(files["pre"], min_objects={"lepton": 2, "bjet": 1}, cuts={"jet": {"min_pt": 30}})
    assert prov["events"]["events_selected"] == len(want) < 200
    assert prov["events"]["min_objects"] == {"lepton": 2, "bjet": 1}
    spec = json.loads((out / "backbone.json").read_text())
    assert spec["events"]["cuts"]["jet"]["min_pt"] == 30
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["events"]["jet"]["min_pt"] == 30
    assert config["data"]["events"]["min_objects"]["lepton"] == 2


# -- bad input: one line naming the file, exit 2, nothing written -----------------------------------
def test_reading_refusals_from_the_cli(files, tmp_path, capsys):
    def pretrain(*extra):
        out = tmp_path / "never"
        code = main(["pretrain", "--objective", "masked-object", "--data", *extra, "--out", str(out),
                     "--steps", "2", "--no-progress"])
        assert not out.exists()  # nothing written
        return _one_line(capsys, code)

    msg = pretrain(str(files["pre"]), "-o", "data.events.min_objects.lepton=5")
    assert "pre.root: no event passes the event selection (lepton >= 5) among the file's 400 events" in msg
    msg = pretrain(str(files["nanoaod"]), "--photons")
    assert "nano.root: NanoAOD file without Photon_pt/eta/phi, but photons were asked for" in msg
    msg = pretrain(str(files["nanoaod"]), "-o", "data.events.min_objects.tau=1")
    assert "nano.root: NanoAOD file without Tau_pt/eta/phi, which the event selection needs (tau >= 1)" in msg
    msg = pretrain(str(files["pre"]), str(files["jets_train"]))
    assert "jets_train.h5: the files mix jets and events" in msg
    msg = pretrain(str(files["jets_train"]), "-o", "data.events.min_objects.jet=1", "--features", "kin")
    assert "jets_train.h5: data.events (how events of objects are read) is set, but the file holds jets" \
        in msg


def test_models_refuse_data_they_were_not_trained_on(files, pretrained, tmp_path, capsys):
    def finetune(pre, data, val, *extra):
        out = tmp_path / "never"
        code = main(["finetune", "--pretrained", str(pre), "--data", str(data), "--val", str(val),
                     "--out", str(out), "--steps", "2", "--no-progress", *extra])
        assert not out.exists()
        return _one_line(capsys, code)

    # a jet backbone given events, even with a feature set events can provide (kin)
    msg = finetune(pretrained["jets"], files["train"], files["val"])
    assert "train.h5: the file holds events (sets of reconstructed objects), but the model" in msg
    assert "was trained on jets" in msg
    # an event backbone given jets
    msg = finetune(pretrained["events"], files["jets_train"], files["jets_val"])
    assert "jets_train.h5: the file holds jets, but the model" in msg
    assert "was trained on events" in msg
    # events with photons; the masked-object pretraining read none
    msg = finetune(pretrained["events"], files["photons"], files["val"])
    assert "photons.h5: the events hold photon objects, which the model" in msg
    assert "was never trained on (its events held electron, muon, tau, bjet, jet, met)" in msg
    msg = finetune(pretrained["events"], files["train"], files["jets_val"])  # the validation files too
    assert "jets_val.h5: the file holds jets" in msg
    msg = finetune(pretrained["jets"], files["jets_train"], files["jets_val"], "-o", "finetune.augment={}")
    assert "finetune.augment: the Lorentz augmentations are for events" in msg

    # evaluate: a jet classifier on events, an event classifier on jets and on photons
    ev = tmp_path / "ev"
    assert main(["finetune", "--pretrained", str(pretrained["events"]), "--data", str(files["train"]),
                 "--val", str(files["val"]), "--out", str(ev), "--steps", "2", "--no-progress"]) == 0
    capsys.readouterr()
    for run, data, want in ((pretrained["jet_clf"], files["test"], "test.h5: the file holds events"),
                            (ev, files["jets_val"], "jets_val.h5: the file holds jets, but the model"),
                            (ev, files["photons"], "photons.h5: the events hold photon objects")):
        msg = _one_line(capsys, main(["evaluate", str(run), "--data", str(data), "--no-plots"]))
        assert want in msg
        assert not (run / "eval").exists()


def test_labeled_nanoaod_events_and_the_photon_hint(files, pretrained, tmp_path, capsys):
    """Labeled events written as NanoAOD are read labeled; asking for their photons is refused with a hint."""
    nano = tmp_path / "labeled.root"
    write_jets(nano, [labeled_events(60, 8, photons=True)], "nanoaod")
    src = open_source(nano, photons=True)
    assert src.has_labels
    assert src.class_names == CLASSES
    assert "photon" in src.object_types
    c = src.read(0, 60)
    assert set(np.unique(c.label)) == {0, 1}
    base = ["finetune", "--pretrained", str(pretrained["events"]), "--data", str(nano), "--val", str(nano),
            "--steps", "2", "--batch-size", "16", "--no-progress"]
    msg = _one_line(capsys, main([*base, "--out", str(tmp_path / "x"), "--photons"]))
    assert "labeled.root: the events hold photon objects" in msg
    assert "read without photons (data.events.photons: false)" in msg
    # read without them (the default) they finetune
    assert main([*base, "--out", str(tmp_path / "ok")]) == 0


def test_event_batches_keep_labels_through_the_augmentation():
    from hepfm.objectives.events import EventAugmentation
    from hepfm.physics.lorentz import LorentzConfig

    fs = get_feature_set("objects")
    chunk = labeled_events(8, 0)
    batch = next(iter(make_loader([ArraySource(chunk)], fs, 8, shuffle=False)))
    out = EventAugmentation(LorentzConfig(rotate=1.0, flip=1.0), fs)(batch)
    assert isinstance(out, ParticleBatch)
    torch.testing.assert_close(out.label, batch.label)
    assert not torch.allclose(out.p4, batch.p4)
    types = slice(5, 5 + len(OBJECT_TYPES))
    torch.testing.assert_close(out.x[..., types], batch.x[..., types])  # types kept
