"""Collision events from CMS NanoAOD as sets of reconstructed objects (Kishimoto's event-level model).

An event is read as a set, exactly like a jet of particles (a :class:`~hepfm.data.jets.JetChunk`
row: four-vectors, mask, per-object fields), so every set backbone, loader, sharding and resume path
runs on events unchanged. Its objects are electrons, muons, hadronic taus, b-tagged jets, other jets,
the missing transverse momentum and, with ``photons=True``, photons; per object
``JetChunk.particles`` holds ``charge``, ``object_type`` (int32 index into :data:`OBJECT_TYPES`)
and ``btag`` (the jet's b-tag score, 0 for other objects). MET is an object of its own: pT and φ
from the file, η = 0, massless.

Selections (:data:`SELECTIONS`, the defaults of a typical top-quark analysis): pT and |η| cuts and an
identification requirement per collection, using the first identification branch the file has
(they change between NanoAOD versions: a DeepTau ID in Run 2 UL and Run 3, MVA IDs in 2015; see
:data:`SELECTIONS`), and that is *filled*: some files carry branches of taggers or IDs that were
not run, filled with a default (the 2015 open-data NanoAOD has ``Jet_btagDeepFlavB = -3000`` and
``Muon_looseId`` false everywhere), so the first :data:`SAMPLE_EVENTS` events decide: an ID branch
no object passes and a b-tag branch with no score in [0, 1] are passed over for the next one (no
filled ID branch: no ID cut, and ``hepfm inspect`` says so). Jets within ΔR < 0.4 of a selected
lepton or tau are dropped (NanoAOD jets contain them). b-tagging uses the first filled score branch
among :data:`BTAG_SCORES` with its medium working point (a year-dependent number: the values here
are one year's recommendation, stated next to each); MET is ``MET_*``, or ``PFMET_*`` (NanoAOD
v15), or ``PuppiMET_*``. A file without ``Tau_*`` is read without taus; one without jets, leptons
or MET is refused with one line naming what is missing, and so is one without ``Photon_*`` when
photons are asked for (they are off by default) or without ``Tau_*`` when the event selection needs
taus. ``hepfm inspect`` lists which branches were used.

Reading options (:class:`EventOptions`; ``data.events`` of a run configuration, or keyword options
of ``open_source``): ``photons`` / ``taus`` switch those collections on or off; ``cuts`` overrides
the pT and |η| cut of a collection and caps its objects (``{"jet": {"min_pt": 30, "max_count": 8}}``);
``min_objects`` is an event selection (``{"lepton": 1, "jet": 2, "bjet": 1}``, the seed's
pretraining selection: electrons + muons >= 1, jets of any flavour >= 2, b-jets >= 1), counted on the
objects an event keeps (after cuts, cleaning and caps, before the ``max_particles`` slot cap).

Event selection and lengths: events that fail are not there at all. Opening with a selection reads
the selection's branches once and keeps the indices of the passing events, so ``len()`` is the number
of passing events, ``read(start, stop)`` returns exactly ``stop - start`` of them, and loaders shuffle,
shard, limit (``n_train``) and resume exactly, as on any file (``skip_bad`` keeps its own meaning:
bad events among the passing ones are dropped on reading). The price is that pass over the file
when it is opened; a file in which no event passes is refused with one line. :class:`SelectedEvents`
does the same for events already read into another format (a hepfm file of objects).

Labels: a file written by hepfm's NanoAOD writer carries its class index per event in the branch
its ``hepfm_metadata`` names (``label_branch``, with ``class_names``); such files are read labeled.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from hepfm.data.formats.base import JetSource, ValidatingSource, read_selected
from hepfm.data.formats.flat import pad_particles
from hepfm.data.formats.nanoaod import NanoAODSource, flat_names, read_events
from hepfm.data.jets import OBJECT_TYPES, JetChunk, from_pt_eta_phi_m
from hepfm.data.validate import ROOT_ERRORS, labels_from_values, read_errors, select_fields
from hepfm.errors import HepfmInputError
from hepfm.options import from_dict, require


@dataclass(frozen=True)
class ObjectSelection:
    """Which objects of one NanoAOD collection an event keeps.

    ``ids``: (branch, test, value) in order of preference; the first branch the file has is used:
    test ``"min"`` keeps value >= ``value`` (an integer working-point index or a bool), ``"bit"``
    keeps ``value & bit != 0`` (the bitmask IDs of older NanoAOD). No branch present: no ID cut.
    ``max_count``: keep only the hardest that many (None: all).
    """

    collection: str
    min_pt: float
    max_abs_eta: float
    ids: tuple[tuple[str, str, int], ...] = ()
    max_count: int | None = None


#: The default selection of each object collection (pT in GeV).
SELECTIONS = {
    "electron": ObjectSelection("Electron", 10.0, 2.5, (("cutBased", "min", 2),)),  # loose cut-based ID
    "muon": ObjectSelection("Muon", 10.0, 2.4, (("looseId", "min", 1), ("mediumId", "min", 1))),
    "tau": ObjectSelection("Tau", 20.0, 2.3, (
        ("idDeepTau2018v2p5VSjet", "min", 5),  # Run 3: 5 = Medium
        ("idDeepTau2017v2p1VSjet", "bit", 16),  # Run 2 UL: bit 16 = Medium
        ("idMVAoldDM2017v2", "bit", 4),  # older: bit 4 = Medium
        ("idMVAoldDM", "bit", 4),
        ("idDecayModeNewDMs", "min", 1),
        ("idDecayMode", "min", 1),
    )),
    "jet": ObjectSelection("Jet", 25.0, 2.4, (("jetId", "bit", 2),)),  # tight jet ID
    "photon": ObjectSelection("Photon", 20.0, 2.5, (("cutBased", "min", 2), ("cutBasedBitmap", "bit", 2))),
}
#: (score branch, medium working point, where the number comes from), in order of preference.
BTAG_SCORES = (
    ("btagUParTAK4B", 0.1272, "UParT AK4, Run 3 2024 medium (approximate)"),
    ("btagPNetB", 0.245, "ParticleNet AK4, Run 3 2022 medium"),
    ("btagDeepFlavB", 0.2783, "DeepJet, Run 2 UL 2018 medium"),
    ("btagDeepB", 0.4168, "DeepCSV, Run 2 UL 2018 medium"),
    ("btagCSVV2", 0.8484, "CSVv2, 2016 medium"),
)
MET_NAMES = ("MET", "PFMET", "PuppiMET")
#: Events read on opening to tell filled identification and b-tag branches from placeholder ones.
SAMPLE_EVENTS = 2000
#: Objects closer than this in ΔR to a selected lepton or tau are not also kept as jets.
CLEANING_DR = 0.4
_LEPTONS = ("electron", "muon", "tau")
#: File entries read per block when an event selection is applied (the scan on opening, and reads
#: of sparse selections), so memory stays bounded however few events pass.
SCAN_EVENTS = 65536
#: What an event selection can count: each object type, ``lepton`` (electrons + muons) and ``jet``
#: (every jet, b-tagged or not: the seed's "jets >= 2" counts its b-jets too).
COUNTED = ("lepton", "electron", "muon", "tau", "jet", "bjet", "photon")


@dataclass(frozen=True)
class Cuts:
    """Overrides of one collection's default selection (:data:`SELECTIONS`); None keeps the default.

    Attributes:
        min_pt: objects need pT above this (GeV).
        max_abs_eta: objects need |η| below this.
        max_count: keep only the hardest this many of the collection (after cuts and jet cleaning):
            an analysis' "leading four jets".
    """

    min_pt: float | None = None
    max_abs_eta: float | None = None
    max_count: int | None = None

    def check(self, where: str) -> None:
        """One line naming ``where`` (e.g. ``events.jet``) for a value out of range."""
        require(self.min_pt is None or self.min_pt >= 0, f"{where}.min_pt", "must be >= 0", self.min_pt)
        require(self.max_abs_eta is None or self.max_abs_eta > 0, f"{where}.max_abs_eta", "must be > 0",
                self.max_abs_eta)
        require(self.max_count is None or self.max_count >= 1, f"{where}.max_count", "must be >= 1",
                self.max_count)

    def apply(self, sel: ObjectSelection) -> ObjectSelection:
        """``sel`` with these overrides."""
        return replace(sel, **{f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)
                               is not None})


@dataclass(frozen=True)
class MinObjects:
    """An event selection: the fewest objects of each kind an event must have (0: no requirement).

    ``lepton`` counts electrons and muons, ``jet`` every jet (b-tagged or not), ``bjet`` the b-tagged ones.
    """

    lepton: int = 0
    electron: int = 0
    muon: int = 0
    tau: int = 0
    jet: int = 0
    bjet: int = 0
    photon: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            require(isinstance(value, int) and value >= 0, f"events.min_objects.{f.name}",
                    "must be an integer >= 0", value)

    @property
    def active(self) -> bool:
        return any(getattr(self, k) > 0 for k in COUNTED)

    def required(self) -> dict[str, int]:
        """The requirements set, e.g. ``{"lepton": 1, "jet": 2}``."""
        return {k: getattr(self, k) for k in COUNTED if getattr(self, k) > 0}

    def describe(self) -> str:
        return ", ".join(f"{k} >= {v}" for k, v in self.required().items()) or "none"

    def passes(self, counts: Mapping[str, np.ndarray]) -> np.ndarray:
        """(n,) bool: which events pass, from per-event ``counts`` of every :data:`COUNTED` kind."""
        n = len(next(iter(counts.values())))
        ok = np.ones(n, dtype=bool)
        for k, v in self.required().items():
            ok &= np.asarray(counts[k]) >= v
        return ok


@dataclass(frozen=True)
class EventOptions:
    """How events are read from NanoAOD (``data.events``): which collections, their cuts, which events.

    Attributes:
        photons: keep photons as objects (default off: the seed's object list has none).
        taus: keep hadronic taus as objects (default on; off, a tau is whatever jet it also is).
        electron, muon, tau, jet, photon: :class:`Cuts` overriding that collection's default selection.
        min_objects: the event selection (:class:`MinObjects`); events that fail are not read.
    """

    photons: bool = False
    taus: bool = True
    electron: Cuts = field(default_factory=Cuts)
    muon: Cuts = field(default_factory=Cuts)
    tau: Cuts = field(default_factory=Cuts)
    jet: Cuts = field(default_factory=Cuts)
    photon: Cuts = field(default_factory=Cuts)
    min_objects: MinObjects = field(default_factory=MinObjects)

    def __post_init__(self) -> None:
        for kind in SELECTIONS:
            getattr(self, kind).check(f"events.{kind}")
        if self.min_objects.photon and not self.photons:
            raise HepfmInputError("events.min_objects.photon needs photons read (events.photons: true)")
        if self.min_objects.tau and not self.taus:
            raise HepfmInputError("events.min_objects.tau needs taus read (events.taus: true)")

    @classmethod
    def from_options(cls, *, photons: bool = False, taus: bool = True,
                     cuts: Mapping[str, Cuts | Mapping[str, Any]] | None = None,
                     min_objects: MinObjects | Mapping[str, int] | None = None) -> EventOptions:
        """From the reader's keyword options, checked as a config section is (one line per mistake)."""
        d: dict[str, Any] = {"photons": photons, "taus": taus}
        for kind, c in (cuts or {}).items():
            if kind not in SELECTIONS:
                raise HepfmInputError(f"events cuts: unknown collection {kind!r} "
                                      f"(known: {', '.join(SELECTIONS)})")
            d[kind] = c
        if min_objects is not None:
            d["min_objects"] = min_objects
        return from_dict(cls, d, "events")

    def cuts(self) -> dict[str, Cuts]:
        """The collections whose selection differs from the default."""
        return {k: getattr(self, k) for k in SELECTIONS if getattr(self, k) != Cuts()}

    def reader_options(self) -> dict[str, Any]:
        """Keyword options of :class:`NanoAODEventSource` (and ``open_source``) for these settings."""
        return {"photons": self.photons, "taus": self.taus,
                "cuts": {k: asdict(c) for k, c in self.cuts().items()},
                "min_objects": self.min_objects.required()}

    @property
    def is_default(self) -> bool:
        return self == EventOptions()

    def selection(self, kind: str) -> ObjectSelection:
        """The selection of collection ``kind`` after the overrides."""
        return getattr(self, kind).apply(SELECTIONS[kind])


def count_types(object_type: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Per-event counts of every :data:`COUNTED` kind from padded object types.

    Shape: object_type, mask (n, N) -> {kind: (n,) int64}.
    """
    counts = {t: ((object_type == i) & mask).sum(axis=1) for i, t in enumerate(OBJECT_TYPES)}
    return count_groups(counts)


def count_groups(counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-type counts plus the groups an event selection counts (``lepton``, ``jet`` = all jets)."""
    zero = np.zeros_like(next(iter(counts.values())))
    out = {t: np.asarray(counts.get(t, zero), dtype=np.int64) for t in OBJECT_TYPES if t != "jet"}
    out["jet"] = np.asarray(counts.get("jet", zero) + counts.get("bjet", zero), dtype=np.int64)
    out["lepton"] = out["electron"] + out["muon"]
    return out


def is_nanoaod_events(keys: Collection[str]) -> bool:
    """Whether an ``Events`` tree has what an event of objects needs: jets and a MET."""
    names = set(keys)
    return "Jet_pt" in names and any(f"{m}_pt" in names for m in MET_NAMES)


class NanoAODEventSource(NanoAODSource):
    """NanoAOD events as sets of objects (see the module docstring); one entry per (passing) event.

    Args:
        path: the file.
        max_particles: object slots per event (default 128; None = the most objects in each read).
        photons: keep photons as objects (default False: the seed's object list has none).
        taus: keep hadronic taus as objects (default True; used where the file has ``Tau_*``).
        cuts: per collection, :class:`Cuts` (or a mapping of them) overriding :data:`SELECTIONS`.
        min_objects: an event selection (:class:`MinObjects` or a mapping, e.g. ``{"lepton": 1}``).
        validate, skip_bad: see :class:`~hepfm.data.formats.base.ValidatingSource`.

    Attributes:
        options: the :class:`EventOptions` read with; ``object_types``: the types this file's events
        can hold under them; ``n_file``: entries in the file (``len()`` counts the passing ones).
    """

    format = "nanoaod-events"
    item = "event"

    def __init__(
        self,
        path: str | Path,
        *,
        max_particles: int | None = 128,
        photons: bool = False,
        taus: bool = True,
        cuts: Mapping[str, Cuts | Mapping[str, Any]] | None = None,
        min_objects: MinObjects | Mapping[str, int] | None = None,
        validate: bool = True,
        skip_bad: bool = False,
    ) -> None:
        super().__init__(path, validate=validate, skip_bad=skip_bad)
        self.max_particles = max_particles
        self.options = EventOptions.from_options(photons=photons, taus=taus, cuts=cuts,
                                                 min_objects=min_objects)
        self.photons = self.options.photons
        self._rows: np.ndarray | None = None  # file entries of the passing events (None: every entry)
        with read_errors(self.path, "reading the NanoAOD Events tree", ROOT_ERRORS):
            self._init_layout()
            if self.options.min_objects.active:
                self._select_events()

    def _init_layout(self) -> None:
        events = self._events()
        names = set(flat_names(events.keys()))
        if "Jet_pt" not in names:
            raise HepfmInputError("NanoAOD file without a Jet collection (Jet_pt)", self.path)
        met = next((m for m in MET_NAMES if {f"{m}_pt", f"{m}_phi"} <= names), None)
        if met is None:
            known = ", ".join(m + "_pt" for m in MET_NAMES)
            raise HepfmInputError(f"NanoAOD file without missing pT ({known})", self.path)
        self._met = met
        opts = self.options
        self._kinds: dict[str, tuple[ObjectSelection, tuple[str, str, int] | None]] = {}
        skipped = []
        for kind in SELECTIONS:
            if (kind == "photon" and not opts.photons) or (kind == "tau" and not opts.taus):
                continue
            sel = opts.selection(kind)
            c = sel.collection
            if not {f"{c}_pt", f"{c}_eta", f"{c}_phi"} <= names:
                if kind in ("electron", "muon"):
                    raise HepfmInputError(f"NanoAOD file without {c}_pt/eta/phi", self.path)
                if kind == "photon":
                    raise HepfmInputError(f"NanoAOD file without {c}_pt/eta/phi, but photons were asked for "
                                          "(events.photons)", self.path)
                if getattr(opts.min_objects, kind):
                    raise HepfmInputError(f"NanoAOD file without {c}_pt/eta/phi, which the event selection "
                                          f"needs ({opts.min_objects.describe()})", self.path)
                skipped.append(c)
                continue
            ident = next((i for i in sel.ids if f"{c}_{i[0]}" in names and self._usable_id(c, i)), None)
            self._kinds[kind] = (sel, ident)
        self._masses = {k: f"{s.collection}_mass" in names for k, (s, _) in self._kinds.items()}
        self._charges = {k: f"{s.collection}_charge" in names for k, (s, _) in self._kinds.items()}
        btags = [(b, wp, src) for b, wp, src in BTAG_SCORES if f"Jet_{b}" in names and self._usable_score(b)]
        if not btags:
            known = ", ".join("Jet_" + b for b, _, _ in BTAG_SCORES)
            raise HepfmInputError(f"NanoAOD file without a filled b-tag score (one of {known})", self.path)
        btag, wp, src = btags[0]
        self._btag_branch, self._btag_wp = f"Jet_{btag}", wp
        self._event_branches = [b for b in ("run", "luminosityBlock", "event") if b in names]
        self._init_labels(names)
        self.n_file = self._n = int(events.num_entries)
        self.particle_fields = ("charge", "object_type", "btag")
        self.object_types = tuple(t for t in OBJECT_TYPES if t in self._kinds or t in ("bjet", "met"))
        self.detected = (
            f"NanoAOD events as objects ({', '.join(self.object_types)})"
            + (f"; no {', '.join(skipped)} in the file" if skipped else "")
        )
        self.field_map = {
            **{k: f"{s.collection}_pt/eta/phi/mass, pT > {s.min_pt:g}, |eta| < {s.max_abs_eta:g}, "
               + (f"{s.collection}_{i[0]} {'>=' if i[1] == 'min' else '&'} {i[2]}" if i
                  else "no filled ID branch")
               + (f", the hardest {s.max_count}" if s.max_count is not None else "")
               for k, (s, i) in self._kinds.items()},
            "bjet": f"Jet_{btag} > {wp} ({src})",
            "met": f"{met}_pt/phi",
        }
        if self.has_labels:
            self.field_map["label"] = f"{self._label_branch} ({', '.join(self.class_names)})"

    def _init_labels(self, names: set[str]) -> None:
        """Labels of a file from hepfm's NanoAOD writer: the branch and classes its metadata names."""
        from hepfm.data.formats.jetclass_root import root_metadata

        self._label_branch: str | None = None
        meta = root_metadata(self._file())
        self.metadata = meta
        branch, classes = meta.get("label_branch"), meta.get("class_names")
        if isinstance(branch, str) and branch in names and isinstance(classes, list) and classes:
            self._label_branch = branch
            self.class_names = tuple(str(c) for c in classes)
            self.has_labels = True

    def _sample(self, branch: str) -> np.ndarray:
        """The values of a per-object branch in the first :data:`SAMPLE_EVENTS` events, flattened."""
        import awkward as ak

        events = self._events()
        a = read_events(events, 0, min(SAMPLE_EVENTS, int(events.num_entries)), [branch])[branch]
        return ak.to_numpy(ak.flatten(a)) if a.ndim > 1 else ak.to_numpy(a)

    def _usable_id(self, collection: str, ident: tuple[str, str, int]) -> bool:
        """An ID branch some object passes (some files carry IDs filled with a default: all false)."""
        import awkward as ak

        values = self._sample(f"{collection}_{ident[0]}")
        return values.size == 0 or bool(np.any(ak.to_numpy(_passes(ak.Array(values), ident[1], ident[2]))))

    def _usable_score(self, btag: str) -> bool:
        """A b-tag branch with real scores (unfilled taggers hold -1, -10 or -3000 everywhere)."""
        values = self._sample(f"Jet_{btag}")
        return values.size == 0 or bool(np.any((values >= 0) & (values <= 1)))

    # -- the event selection -----------------------------------------------------------------
    def _select_events(self) -> None:
        """Index the passing events (one pass over the selection's branches, block by block)."""
        sel = self.options.min_objects
        rows = []
        for lo in range(0, self.n_file, SCAN_EVENTS):
            hi = min(lo + SCAN_EVENTS, self.n_file)
            parts = self._parts(read_events(self._events(), lo, hi, self._branches(kinematics=False)),
                                kinematics=False)
            rows.append(lo + np.flatnonzero(sel.passes(self._counts(parts))))
        self._rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        self._n = len(self._rows)
        if self._n == 0:
            raise HepfmInputError(f"no event passes the event selection ({sel.describe()}) among the file's "
                                  f"{self.n_file} events", self.path)
        self.detected += f"; events with {sel.describe()}"
        self.field_map["events"] = f"{sel.describe()}: {self._n} of {self.n_file} events pass"

    @property
    def reading(self) -> dict[str, Any]:
        """How the file was read, for provenance: the options and, with a selection, the events kept."""
        out: dict[str, Any] = self.options.reader_options()
        if self._rows is not None:
            out |= {"events_in_file": self.n_file, "events_selected": self._n}
        return out

    # -- reading -----------------------------------------------------------------------------
    def _read(
        self, start: int, stop: int, fields: Collection[str] | None, jet_fields: Collection[str] | None
    ) -> JetChunk:
        with read_errors(self.path, f"reading events {start}-{stop}", ROOT_ERRORS):
            return self._objects(self._arrays(start, stop), fields, jet_fields)

    def _arrays(self, start: int, stop: int) -> dict:
        """The branches of events ``[start, stop)`` (passing events, with a selection)."""
        import awkward as ak

        if self._rows is None:
            return read_events(self._events(), start, stop, self._branches())
        rows = self._rows[start:stop]
        if len(rows) == 0:
            return read_events(self._events(), 0, 0, self._branches())
        blocks = []
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        for a in range(lo, hi, SCAN_EVENTS):  # sparse selections: never more than a block unfiltered
            b = min(a + SCAN_EVENTS, hi)
            mine = rows[(rows >= a) & (rows < b)] - a
            if len(mine):
                arrays = read_events(self._events(), a, b, self._branches())
                blocks.append({k: v[mine] for k, v in arrays.items()})
        if len(blocks) == 1:
            return blocks[0]
        return {k: ak.concatenate([blk[k] for blk in blocks]) for k in blocks[0]}

    def _branches(self, kinematics: bool = True) -> list[str]:
        """The branches to read: all of them, or (``kinematics=False``) only what selection needs."""
        out = [self._btag_branch]
        if kinematics:
            out += [f"{self._met}_pt", f"{self._met}_phi", *self._event_branches]
            out += [self._label_branch] if self._label_branch else []
        for kind, (sel, ident) in self._kinds.items():
            c = sel.collection
            out += [f"{c}_pt", f"{c}_eta", f"{c}_phi"]
            out += [f"{c}_mass"] if kinematics and self._masses[kind] else []
            out += [f"{c}_charge"] if kinematics and self._charges[kind] else []
            out += [f"{c}_{ident[0]}"] if ident else []
        return out

    def _parts(self, a: dict, kinematics: bool = True) -> dict[str, dict]:
        """The selected objects of each collection (jagged arrays per field), cleaned and capped."""
        import awkward as ak

        parts: dict[str, dict[str, ak.Array]] = {}
        for kind, (sel, ident) in self._kinds.items():
            c = sel.collection
            pt, eta = a[f"{c}_pt"], a[f"{c}_eta"]
            keep = (pt > sel.min_pt) & (abs(eta) < sel.max_abs_eta)
            if ident is not None:
                keep = keep & _passes(a[f"{c}_{ident[0]}"], ident[1], ident[2])
            obj = {"pt": pt[keep], "eta": eta[keep], "phi": a[f"{c}_phi"][keep]}
            if kinematics:
                obj["mass"] = a[f"{c}_mass"][keep] if self._masses[kind] else ak.zeros_like(pt[keep])
                obj["charge"] = a[f"{c}_charge"][keep] if self._charges[kind] else ak.zeros_like(pt[keep])
            if kind == "jet":
                obj["btag"] = a[self._btag_branch][keep]
            parts[kind] = obj
        if "jet" in parts:
            parts["jet"] = _clean(parts["jet"], [parts[k] for k in _LEPTONS if k in parts])
        for kind, obj in parts.items():
            cap = self._kinds[kind][0].max_count
            if cap is not None:
                hardest = ak.argsort(obj["pt"], axis=1, ascending=False)[:, :cap]
                parts[kind] = {k: v[hardest] for k, v in obj.items()}
        return parts

    def _counts(self, parts: dict[str, dict]) -> dict[str, np.ndarray]:
        """Per-event counts of every :data:`COUNTED` kind among the selected objects."""
        import awkward as ak

        counts = {k: ak.to_numpy(ak.num(obj["pt"], axis=1)) for k, obj in parts.items() if k != "jet"}
        if "jet" in parts:
            b = ak.to_numpy(ak.sum(parts["jet"]["btag"] > self._btag_wp, axis=1))
            counts["bjet"] = b
            counts["jet"] = ak.to_numpy(ak.num(parts["jet"]["pt"], axis=1)) - b
        return count_groups(counts)

    def _objects(self, a: dict, fields, jet_fields) -> JetChunk:
        import awkward as ak

        n = len(a[self._btag_branch])
        parts = self._parts(a)
        # the event's objects, collection after collection: flat arrays + per-event counts
        columns: dict[str, list[np.ndarray]] = {
            k: [] for k in ("pt", "eta", "phi", "mass", "charge", "type", "btag")}
        counts = np.zeros(n, dtype=np.int64)
        event_of: list[np.ndarray] = []
        for kind, obj in parts.items():
            num = ak.to_numpy(ak.num(obj["pt"], axis=1)).astype(np.int64)
            counts += num
            event_of.append(np.repeat(np.arange(n), num))
            for k in ("pt", "eta", "phi", "mass", "charge"):
                columns[k].append(ak.to_numpy(ak.flatten(obj[k])).astype(np.float64))
            if kind == "jet":
                score = ak.to_numpy(ak.flatten(obj["btag"])).astype(np.float64)
                kinds = np.where(score > self._btag_wp, OBJECT_TYPES.index("bjet"), OBJECT_TYPES.index("jet"))
                columns["type"].append(kinds)
                columns["btag"].append(score)
            else:
                columns["type"].append(np.full(int(num.sum()), OBJECT_TYPES.index(kind)))
                columns["btag"].append(np.zeros(int(num.sum())))
        met_pt = ak.to_numpy(a[f"{self._met}_pt"]).astype(np.float64)
        event_of.append(np.arange(n))
        counts += 1
        for k, v in (("pt", met_pt), ("eta", np.zeros(n)), ("phi", ak.to_numpy(a[f"{self._met}_phi"])),
                     ("mass", np.zeros(n)), ("charge", np.zeros(n)), ("btag", np.zeros(n)),
                     ("type", np.full(n, OBJECT_TYPES.index("met")))):
            columns[k].append(np.asarray(v, dtype=np.float64))
        order = np.argsort(np.concatenate(event_of), kind="stable")  # group by event
        flat = {k: np.concatenate(v)[order] for k, v in columns.items()}
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        p4 = from_pt_eta_phi_m(flat["pt"], flat["eta"], flat["phi"], flat["mass"])
        want = set(select_fields(list(self.particle_fields), fields))
        extra = {"charge": flat["charge"].astype(np.float32), "object_type": flat["type"].astype(np.int32),
                 "btag": flat["btag"].astype(np.float32)}
        padded = pad_particles(offsets, p4, {k: v for k, v in extra.items() if k in want}, self.max_particles)
        jets: dict[str, np.ndarray] = {b: ak.to_numpy(a[b]).astype(np.int64) for b in self._event_branches
                                       if jet_fields is None or b in jet_fields}
        label = None
        if self._label_branch is not None:
            label = labels_from_values(ak.to_numpy(a[self._label_branch]), len(self.class_names))
        return JetChunk(p4=padded.p4, mask=padded.mask, particles=padded.particles, jets=jets, label=label,
                        class_names=self.class_names)


class SelectedEvents(ValidatingSource):
    """The events of another source of events that pass an event selection (:class:`MinObjects`).

    Why: events already read into another format (a hepfm file of objects, written by ``hepfm
    convert`` or by hand) are selected like NanoAOD events, with the same exact lengths: opening reads
    the object types once and keeps the indices of the passing events (see the module docstring).
    The wrapped source is read unvalidated and this one validates what it returns, so ``skip_bad``
    drops bad events among the passing ones only, as the NanoAOD reader does.
    """

    item = "event"

    def __init__(self, source: JetSource, min_objects: MinObjects | Mapping[str, int], *,
                 validate: bool = True, skip_bad: bool = False) -> None:
        super().__init__(source.path, validate=validate, skip_bad=skip_bad)
        self.source = source
        if hasattr(source, "validate"):  # the wrapper checks what it returns, after selecting
            source.validate, source.skip_bad = False, False  # type: ignore[attr-defined]
        self.format = source.format
        self.min_objects = (min_objects if isinstance(min_objects, MinObjects)
                            else from_dict(MinObjects, dict(min_objects), "min_objects"))
        self.class_names, self.has_labels = source.class_names, source.has_labels
        self.metadata = getattr(source, "metadata", {})
        self.particle_fields = tuple(getattr(source, "particle_fields", ()))
        self.n_file = len(source)
        rows = []
        for lo in range(0, self.n_file, SCAN_EVENTS):
            c = read_selected(source, lo, min(lo + SCAN_EVENTS, self.n_file), ("object_type",), ())
            if "object_type" not in c.particles:
                raise HepfmInputError("an event selection needs object types, but the file has none "
                                      "(it holds jets, not events of objects)", self.path)
            counts = count_types(c.particles["object_type"], c.mask)
            rows.append(lo + np.flatnonzero(self.min_objects.passes(counts)))
        self._rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        self._n = len(self._rows)
        if self._n == 0:
            raise HepfmInputError(f"no event passes the event selection ({self.min_objects.describe()}) "
                                  f"among the file's {self.n_file} events", self.path)
        self.detected = f"{getattr(source, 'detected', '') or source.format}; events with " \
                        f"{self.min_objects.describe()}"
        self.field_map = dict(getattr(source, "field_map", {})) | {
            "events": f"{self.min_objects.describe()}: {self._n} of {self.n_file} events pass"}

    @property
    def reading(self) -> dict[str, Any]:
        return {"min_objects": self.min_objects.required(), "events_in_file": self.n_file,
                "events_selected": self._n}

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if callable(close):
            close()

    def _read(self, start: int, stop: int, fields: Collection[str] | None,
              jet_fields: Collection[str] | None) -> JetChunk:
        rows = self._rows[start:stop]
        if len(rows) == 0:
            return read_selected(self.source, 0, 0, fields, jet_fields)
        chunks = []
        for a in range(int(rows[0]), int(rows[-1]) + 1, SCAN_EVENTS):
            b = a + SCAN_EVENTS
            mine = rows[(rows >= a) & (rows < b)] - a
            if len(mine):
                read = read_selected(self.source, a, min(b, self.n_file), fields, jet_fields)
                chunks.append(read.take(mine))
        return chunks[0] if len(chunks) == 1 else JetChunk.concat(chunks)


def _passes(values, test: str, value: int):
    """The identification test of :class:`ObjectSelection` on a jagged array of ID values."""
    import awkward as ak

    if test == "min":
        return values >= value
    return (ak.values_astype(values, np.int64) & value) != 0


def _clean(jets: dict, others: list[dict]) -> dict:
    """``jets`` without those within :data:`CLEANING_DR` of any object in ``others`` (per event)."""
    import awkward as ak

    if not others:
        return jets
    eta = ak.concatenate([o["eta"] for o in others], axis=1)
    phi = ak.concatenate([o["phi"] for o in others], axis=1)
    pairs_eta = ak.cartesian([jets["eta"], eta], nested=True)
    pairs_phi = ak.cartesian([jets["phi"], phi], nested=True)
    deta = pairs_eta["0"] - pairs_eta["1"]
    dphi = (pairs_phi["0"] - pairs_phi["1"] + np.pi) % (2 * np.pi) - np.pi
    near = ak.any(deta * deta + dphi * dphi < CLEANING_DR**2, axis=-1)
    return {k: v[~near] for k, v in jets.items()}
