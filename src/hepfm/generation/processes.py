"""Jet classes as Pythia 8 processes, and the datasets (class lists + jet selection) built from them.

Settings follow the measured recipes in the project's datagen notes: Pythia's built-in 2->2
processes stand in for MadGraph; resonance decays that one decay table cannot express (e.g. the
recoil Z to neutrinos while the signal Z goes to quarks) are enforced by a decay-veto hook, which
re-draws only the decays and so costs almost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hepfm.data.formats.nanoaod_events import MinObjects
from hepfm.data.jets import JETCLASS_CLASSES, TOPTAG_CLASSES
from hepfm.registry import Registry

# A resonance decay seen by the hook: (|pdg id| of the boson, is it a Higgs daughter, mode)
# where mode is "nu" (invisible), "lep" (e/mu/tau) or "had".
Decay = tuple[int, bool, str]


@dataclass(frozen=True)
class Process:
    """One jet class: how to generate it and how to recognise a correctly matched jet.

    Attributes:
        settings: Pythia ``readString`` lines specific to this class.
        mpi: multiple parton interactions on (JetClass-like) or off (Top-Tagging-like).
        resonances: |pdg id| of the parton-level object the jet must contain (empty = background).
        n_visible: number of visible decay partons (quarks, gluons, charged leptons) it must have,
            all within the jet radius of the jet axis. Enforces the decay mode as well as containment.
        need_lepton: at least one of those partons is a charged lepton.
        decay_filter: accept(decays) -> bool for the resonance-decay veto hook, or None.
    """

    settings: tuple[str, ...]
    mpi: bool = True
    resonances: tuple[int, ...] = ()
    n_visible: int = 0
    need_lepton: bool = False
    decay_filter: Callable[[list[Decay]], bool] | None = None


# -- decay filters (module-level so worker processes can pickle them by reference)
def one_z_invisible_one_hadronic(decays: list[Decay]) -> bool:
    modes = sorted(m for b, _, m in decays if b == 23)
    return modes == ["had", "nu"]


def recoil_z_invisible_higgs_bosons_hadronic(decays: list[Decay]) -> bool:
    recoil = [m for b, from_h, m in decays if b == 23 and not from_h]
    from_higgs = [m for _, from_h, m in decays if from_h]
    return recoil == ["nu"] and len(from_higgs) == 2 and all(m == "had" for m in from_higgs)


def higgs_ww_one_leptonic_one_hadronic(decays: list[Decay]) -> bool:
    modes = sorted(m for b, from_h, m in decays if b == 24 and from_h)
    return modes == ["had", "lep"]


Z_INVISIBLE = ("23:onMode = off", "23:onIfAny = 12 14 16")
W_HADRONIC = ("24:onMode = off", "24:onIfAny = 1 2 3 4 5")
TTBAR = ("Top:gg2ttbar = on", "Top:qqbar2ttbar = on")
HZ = ("HiggsSM:ffbar2HZ = on", *Z_INVISIBLE, "25:onMode = off")

PROCESSES: Registry[Process] = Registry("process")
# Top Tagging reference-like (truth level, no MPI).
PROCESSES.add("top", Process((*TTBAR, *W_HADRONIC), mpi=False, resonances=(6,), n_visible=3))
PROCESSES.add("qcd", Process(("HardQCD:all = on",), mpi=False))
# JetClass-like (MPI on). JetClass's QCD background is Z(->nunu)+jets.
PROCESSES.add(
    "zjets",
    Process(
        ("WeakBosonAndParton:qqbar2gmZg = on", "WeakBosonAndParton:qg2gmZq = on", "WeakZ0:gmZmode = 2",
         *Z_INVISIBLE),
    ),
)
for _name, _pair in (("hbb", "5 -5"), ("hcc", "4 -4"), ("hgg", "21 21")):
    PROCESSES.add(_name, Process((*HZ, f"25:onIfMatch = {_pair}"), resonances=(25,), n_visible=2))
PROCESSES.add(
    "h4q",
    Process(
        ("HiggsSM:ffbar2HZ = on", "25:onMode = off", "25:onIfMatch = 24 -24", "25:onIfMatch = 23 23",
         *W_HADRONIC, "23:onMode = off", "23:onIfAny = 1 2 3 4 5 12 14 16"),
        resonances=(25,), n_visible=4, decay_filter=recoil_z_invisible_higgs_bosons_hadronic,
    ),
)
PROCESSES.add(
    "hlvqq",
    Process(
        (*HZ, "25:onIfMatch = 24 -24", "24:onMode = off", "24:onIfAny = 1 2 3 4 5 11 13"),
        resonances=(25,), n_visible=3, need_lepton=True, decay_filter=higgs_ww_one_leptonic_one_hadronic,
    ),
)
PROCESSES.add(
    "zqq",
    Process(
        ("WeakDoubleBoson:ffbar2gmZgmZ = on", "WeakZ0:gmZmode = 2", "23:onMode = off",
         "23:onIfAny = 1 2 3 4 5 12 14 16"),
        resonances=(23,), n_visible=2, decay_filter=one_z_invisible_one_hadronic,
    ),
)
PROCESSES.add(
    "wqq",
    Process(("WeakDoubleBoson:ffbar2ZW = on", *Z_INVISIBLE, *W_HADRONIC), resonances=(24,), n_visible=2),
)
PROCESSES.add("tbqq", Process((*TTBAR, *W_HADRONIC), resonances=(6,), n_visible=3))
PROCESSES.add(
    "tbl",
    Process(
        (*TTBAR, "24:onMode = off", "24:onIfAny = 11 13"), resonances=(6,), n_visible=2, need_lepton=True
    ),
)


# -- processes of whole collision events (seed 003's signal-vs-background tasks and its "collision data")
W_LEPTONIC = ("24:onMode = off", "24:onIfAny = 11 13 15")
def leptonic_w(decays: list[Decay]) -> bool:
    """At least one W -> e/mu/tau + nu: a generator filter for selections that need a lepton.

    The veto re-draws decays only; the share it keeps is measured and multiplies the cross-section.
    """
    return any(b == 24 and m == "lep" for b, _, m in decays)


# inclusive decays (filtered to >= 1 leptonic W); extra jets from the parton shower
PROCESSES.add("ttbar", Process(TTBAR, decay_filter=leptonic_w))
PROCESSES.add("tth", Process(("HiggsSM:gg2Httbar = on", "HiggsSM:qqbar2Httbar = on"),
                             decay_filter=leptonic_w))
# H+- from g b -> t H-+ (two-Higgs-doublet model via Pythia's BSM Higgs sector), one mass per task.
CHARGED_HIGGS = ("Higgs:useBSM = on", "HiggsBSM:bg2H+-t = on", "37:onMode = off")
PROCESSES.add("hplus-tb", Process((*CHARGED_HIGGS, "37:m0 = 500.", "37:onIfAny = 6"),
                                  decay_filter=leptonic_w))
PROCESSES.add(
    "hplus-hw",
    Process((*CHARGED_HIGGS, "37:m0 = 300.", "37:onIfMatch = 24 25", "25:onMode = off",
             "25:onIfMatch = 15 -15")),
)
PROCESSES.add("single-top", Process(("Top:qq2tq(t:W) = on", "Top:ffbar2tqbar(s:W) = on"),
                                    decay_filter=leptonic_w))
PROCESSES.add(
    "wjets",
    Process(("WeakBosonAndParton:qqbar2Wg = on", "WeakBosonAndParton:qg2Wq = on", "PhaseSpace:pTHatMin = 20.",
             *W_LEPTONIC)),
)
PROCESSES.add(
    "zjets-ll",
    Process(("WeakBosonAndParton:qqbar2gmZg = on", "WeakBosonAndParton:qg2gmZq = on", "WeakZ0:gmZmode = 2",
             "PhaseSpace:pTHatMin = 20.", "23:onMode = off", "23:onIfAny = 11 13 15")),
)


@dataclass(frozen=True)
class DatasetSpec:
    """A labeled dataset: its classes (label order) and jet selection.

    ``candidates`` is how many of the leading jets may be the tagged jet: the Top Tagging set
    uses the leading jet only; for JetClass-like signal the first matched of the two leading jets
    is taken (the semileptonic objects are often the sub-leading jet). Background classes always
    take the leading jet.
    """

    classes: dict[str, str]  # class name (label order) -> process name
    pt_range: tuple[float, float]
    pthat_range: tuple[float, float]
    eta_max: float = 2.0
    radius: float = 0.8
    candidates: int = 1
    max_particles: int = 200
    # soft-drop mass and N-subjettiness (JetClass's jet_sdmass, jet_tau1..4): ~1.3 ms/jet in FastJet,
    # i.e. ~30 % of a no-MPI toptag event loop, so only datasets whose public format has them pay it.
    substructure: bool = False
    common: tuple[str, ...] = field(default=("Beams:eCM = 14000.",))
    # Whole events as sets of reconstructed objects instead of one jet per event (seed 003): the event
    # selection, and whether the class mixture follows the cross-sections (the "collision data" stand-in).
    events: MinObjects | None = None
    xsec_mix: bool = False

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.classes)


DATASETS: Registry[DatasetSpec] = Registry("dataset")
DATASETS.add(
    "toptag",
    DatasetSpec(
        classes=dict(zip(TOPTAG_CLASSES, ("qcd", "top"), strict=True)),
        pt_range=(550.0, 650.0),
        pthat_range=(500.0, 700.0),
    ),
)
DATASETS.add(
    "jetclass",
    DatasetSpec(
        classes=dict(
            zip(
                JETCLASS_CLASSES,
                ("zjets", "hbb", "hcc", "hgg", "h4q", "hlvqq", "zqq", "wqq", "tbqq", "tbl"),
                strict=True,
            )
        ),
        pt_range=(500.0, 1000.0),
        pthat_range=(500.0, 1100.0),
        candidates=2,
        substructure=True,
    ),
)

# Event datasets: class 0 is the background, class 1 the signal; max_particles = object slots per event.
_EVENTS: dict[str, Any] = {"pt_range": (0.0, float("inf")), "pthat_range": (0.0, -1.0), "radius": 0.4,
                           "max_particles": 32, "common": ("Beams:eCM = 13000.",)}
DATASETS.add("tth", DatasetSpec(classes={"ttbar": "ttbar", "ttH": "tth"},
                                events=MinObjects(lepton=1, jet=4, bjet=2), **_EVENTS))
DATASETS.add("tth-2l", DatasetSpec(classes={"ttbar": "ttbar", "ttH": "tth"},
                                   events=MinObjects(lepton=2, jet=2, bjet=1), **_EVENTS))
DATASETS.add("hplus-tb", DatasetSpec(classes={"ttbar": "ttbar", "Hplus_tb": "hplus-tb"},
                                     events=MinObjects(lepton=1, jet=4, bjet=1), **_EVENTS))
DATASETS.add("hplus-hw", DatasetSpec(classes={"ttbar": "ttbar", "Hplus_HW": "hplus-hw"},
                                     events=MinObjects(lepton=1, jet=3, bjet=1, tau=1), **_EVENTS))
# "Collision data": the SM processes that pass the pretraining selection, mixed by cross-section x
# acceptance as Pythia reports them (QCD multijet is left out: its rate of isolated leptons + b-jets
# needs ~1e6 generated events per accepted one). Generate with --unlabeled for pretraining.
DATASETS.add("collision", DatasetSpec(
    classes={"ttbar": "ttbar", "single_top": "single-top", "wjets": "wjets", "zjets": "zjets-ll"},
    events=MinObjects(lepton=1, jet=2, bjet=1), xsec_mix=True, **_EVENTS))
