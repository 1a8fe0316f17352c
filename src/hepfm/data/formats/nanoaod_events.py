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
v15), or ``PuppiMET_*``. A file without ``Tau_*`` or ``Photon_*`` is read without them; one
without jets, leptons or MET is refused with one line naming what is missing. ``hepfm inspect``
lists which branches were used.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hepfm.data.formats.flat import pad_particles
from hepfm.data.formats.nanoaod import NanoAODSource, flat_names, read_events
from hepfm.data.jets import OBJECT_TYPES, JetChunk, from_pt_eta_phi_m
from hepfm.data.validate import ROOT_ERRORS, read_errors, select_fields
from hepfm.errors import HepfmInputError


@dataclass(frozen=True)
class ObjectSelection:
    """Which objects of one NanoAOD collection an event keeps.

    ``ids``: (branch, test, value) in order of preference; the first branch the file has is used:
    test ``"min"`` keeps value >= ``value`` (an integer working-point index or a bool), ``"bit"``
    keeps ``value & bit != 0`` (the bitmask IDs of older NanoAOD). No branch present: no ID cut.
    """

    collection: str
    min_pt: float
    max_abs_eta: float
    ids: tuple[tuple[str, str, int], ...] = ()


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


def is_nanoaod_events(keys: Collection[str]) -> bool:
    """Whether an ``Events`` tree has what an event of objects needs: jets and a MET."""
    names = set(keys)
    return "Jet_pt" in names and any(f"{m}_pt" in names for m in MET_NAMES)


class NanoAODEventSource(NanoAODSource):
    """NanoAOD events as sets of objects (see the module docstring); one entry per event.

    Args:
        path: the file.
        max_particles: object slots per event (default 128; None = the most objects in each read).
        photons: keep photons as objects (default False: the seed's object list has none).
        validate, skip_bad: see :class:`~hepfm.data.formats.base.ValidatingSource`.
    """

    format = "nanoaod-events"
    item = "event"

    def __init__(
        self,
        path: str | Path,
        *,
        max_particles: int | None = 128,
        photons: bool = False,
        validate: bool = True,
        skip_bad: bool = False,
    ) -> None:
        super().__init__(path, validate=validate, skip_bad=skip_bad)
        self.max_particles = max_particles
        self.photons = photons
        with read_errors(self.path, "reading the NanoAOD Events tree", ROOT_ERRORS):
            self._init_layout()

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
        self._kinds: dict[str, tuple[ObjectSelection, tuple[str, str, int] | None]] = {}
        skipped = []
        for kind, sel in SELECTIONS.items():
            if kind == "photon" and not self.photons:
                continue
            c = sel.collection
            if not {f"{c}_pt", f"{c}_eta", f"{c}_phi"} <= names:
                if kind in ("electron", "muon"):
                    raise HepfmInputError(f"NanoAOD file without {c}_pt/eta/phi", self.path)
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
        self._n = int(events.num_entries)
        self.particle_fields = ("charge", "object_type", "btag")
        self.detected = (
            f"NanoAOD events as objects ({', '.join(OBJECT_TYPES[:6] if not self.photons else OBJECT_TYPES)})"
            + (f"; no {', '.join(skipped)} in the file" if skipped else "")
        )
        self.field_map = {
            **{k: f"{s.collection}_pt/eta/phi/mass, pT > {s.min_pt:g}, |eta| < {s.max_abs_eta:g}, "
               + (f"{s.collection}_{i[0]} {'>=' if i[1] == 'min' else '&'} {i[2]}" if i
                  else "no filled ID branch")
               for k, (s, i) in self._kinds.items()},
            "bjet": f"Jet_{btag} > {wp} ({src})",
            "met": f"{met}_pt/phi",
        }

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

    # -- reading -----------------------------------------------------------------------------
    def _read(
        self, start: int, stop: int, fields: Collection[str] | None, jet_fields: Collection[str] | None
    ) -> JetChunk:
        with read_errors(self.path, f"reading events {start}-{stop}", ROOT_ERRORS):
            return self._objects(start, stop, fields, jet_fields)

    def _branches(self) -> list[str]:
        out = [f"{self._met}_pt", f"{self._met}_phi", self._btag_branch, *self._event_branches]
        for kind, (sel, ident) in self._kinds.items():
            c = sel.collection
            out += [f"{c}_pt", f"{c}_eta", f"{c}_phi"]
            out += [f"{c}_mass"] if self._masses[kind] else []
            out += [f"{c}_charge"] if self._charges[kind] else []
            out += [f"{c}_{ident[0]}"] if ident else []
        return out

    def _objects(self, start: int, stop: int, fields, jet_fields) -> JetChunk:
        import awkward as ak

        a = read_events(self._events(), start, stop, self._branches())
        n = stop - start
        parts: dict[str, dict[str, ak.Array]] = {}
        for kind, (sel, ident) in self._kinds.items():
            c = sel.collection
            pt, eta = a[f"{c}_pt"], a[f"{c}_eta"]
            keep = (pt > sel.min_pt) & (abs(eta) < sel.max_abs_eta)
            if ident is not None:
                keep = keep & _passes(a[f"{c}_{ident[0]}"], ident[1], ident[2])
            obj = {"pt": pt[keep], "eta": eta[keep], "phi": a[f"{c}_phi"][keep],
                   "mass": a[f"{c}_mass"][keep] if self._masses[kind] else ak.zeros_like(pt[keep]),
                   "charge": a[f"{c}_charge"][keep] if self._charges[kind] else ak.zeros_like(pt[keep])}
            if kind == "jet":
                obj["btag"] = a[self._btag_branch][keep]
            parts[kind] = obj
        if "jet" in parts:
            parts["jet"] = _clean(parts["jet"], [parts[k] for k in _LEPTONS if k in parts])
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
        return JetChunk(p4=padded.p4, mask=padded.mask, particles=padded.particles, jets=jets)


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
