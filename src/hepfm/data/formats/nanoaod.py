"""Jets with their particle-flow constituents from CMS NanoAOD and PFNano, read with uproot.

NanoAOD stores one entry per *event* in the TTree (or RNTuple) ``Events``: a jet collection
(``FatJet_*``: AK8 PUPPI jets; ``Jet_*``: AK4 jets) and the event's PF candidates, tied together by
an index map with one row per (jet, constituent). The names depend on the producer:

=================  ==================  ======================================  ==================
scheme             candidates          map (for ``<Jets>`` = FatJet or Jet)    candidate index
=================  ==================  ======================================  ==================
PFNano             ``PFCands_*``       ``<Jets>PFCands_jetIdx``                ``_pFCandsIdx``
NanoAOD v15        ``PFCand_*``        ``<Jets>PFCand_jetIdx``                 ``_pfCandIdx``
=================  ==================  ======================================  ==================

The reader presents the jets of the chosen collection as a jet file: jet ``i`` of the file is the
``i``-th jet, in event order, that has at least one constituent in the map (jets without stored
constituents are skipped: PFNano stores them only for some jets). The collection is ``FatJet`` when
the file maps FatJet constituents, else ``Jet``; ``FILE:Jet`` (or ``FILE:FatJet``) chooses it.

Per particle: (px, py, pz, E) from ``pt, eta, phi, mass``; ``charge``; ``pid`` from ``pdgId`` (the
particle-flow hypothesis, not MC truth) and the five JetClass PID flags from it; ``d0val, d0err,
dzval, dzerr`` from ``d0, d0Err, dz, dzErr`` where the file has them, converted from CMS's cm to the
JetClass files' mm and set to 0 for neutral candidates (which have no track). A field the file lacks
is not offered (a feature set that needs it is refused with one line, before training). With
``puppi_weight`` (default: for FatJet, whose AK8 jets are clustered from PUPPI-weighted candidates),
four-momenta are scaled by ``puppiWeight`` and candidates of weight 0 dropped, so the constituents
add up to the jet CMS clustered (up to its energy corrections).

Per jet (``JetChunk.jets``): ``jet_pt, jet_eta, jet_phi, jet_mass`` (the collection's, i.e.
corrected), ``jet_sdmass`` (``msoftdrop``), ``jet_tau1..4``, ``jet_nconstituents``, every tagger
score the file has (branches starting with one of :data:`TAGGER_PREFIXES`, under ``jet_<name>``),
and ``run``, ``luminosityBlock``, ``event`` to trace a jet to its event. The file is unlabeled.

Why not coffea's ``PFNanoAODSchema``: it builds whole awkward events and resolves the cross-references
per event object; this reader needs one flat gather per read (numpy index arithmetic over the map,
as the JetClass readers scatter), no extra heavy dependency, and the v15 names as well.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hepfm.data.formats.base import ValidatingSource
from hepfm.data.formats.flat import pad_particles
from hepfm.data.jets import FULL_JET_P4, PID_FLAGS, JetChunk, from_pt_eta_phi_m, pid_flags
from hepfm.data.validate import ROOT_ERRORS, read_errors, select_fields
from hepfm.errors import HepfmInputError

EVENTS = "Events"
COLLECTIONS = ("FatJet", "Jet")
#: Events per read when the index of jets is built on opening a file.
INDEX_EVENTS = 100_000
#: Per-jet fields read from ``<Jets>_<name>`` to ``JetChunk.jets[key]``, where the file has them.
JET_FIELDS = {
    "jet_pt": "pt",
    "jet_eta": "eta",
    "jet_phi": "phi",
    "jet_mass": "mass",
    "jet_sdmass": "msoftdrop",
    "jet_tau1": "tau1",
    "jet_tau2": "tau2",
    "jet_tau3": "tau3",
    "jet_tau4": "tau4",
    "jet_nconstituents": "nConstituents",
}
#: Per-jet branches kept as tagger scores (``<Jets>_<prefix>...``).
TAGGER_PREFIXES = ("btag", "deepTag", "particleNet", "ParticleNet", "globalParT", "UParT", "PNet", "pnet")
#: Per-event branches copied to every jet of the event.
EVENT_FIELDS = ("run", "luminosityBlock", "event")
#: Per-particle fields from candidate branches (``<cands>_<name>``); d0/dz in cm in the file.
CANDIDATE_FIELDS = {"charge": "charge", "pid": "pdgId", "d0val": "d0", "d0err": "d0Err",
                    "dzval": "dz", "dzerr": "dzErr"}
IMPACT_FIELDS = ("d0val", "d0err", "dzval", "dzerr")
CM_TO_MM = 10.0
#: |pdgId| of charged particles whose charge has the sign of the id (the leptons' is opposite).
_POSITIVE_IDS = (211, 321, 2212, 3222)
_LEPTON_IDS = (11, 13, 15)


def charge_from_pdg_id(pdg_id: np.ndarray) -> np.ndarray:
    """Electric charge (float32) from PDG ids: e-/mu-/tau- have positive ids and charge -1."""
    a = np.abs(pdg_id)
    sign = np.sign(pdg_id).astype(np.float32)
    return np.where(np.isin(a, _POSITIVE_IDS), sign, np.where(np.isin(a, _LEPTON_IDS), -sign, 0.0)).astype(
        np.float32
    )


@dataclass(frozen=True)
class ConstituentScheme:
    """How one producer names the PF candidates and the jet-to-candidate maps."""

    name: str
    candidates: str  #: collection prefix of the candidates, e.g. PFCands
    map_suffix: str  #: the map of jets <J> is <J><map_suffix>
    candidate_index: str  #: the map's column pointing into the candidates

    def map_of(self, collection: str) -> str:
        return f"{collection}{self.map_suffix}"


SCHEMES = (
    ConstituentScheme("PFNano", "PFCands", "PFCands", "pFCandsIdx"),
    ConstituentScheme("NanoAOD v15", "PFCand", "PFCand", "pfCandIdx"),
)


def candidate_fields(raw: dict[str, np.ndarray], want: Collection[str]) -> dict[str, np.ndarray]:
    """CMS PF-candidate columns as the per-particle fields ``want`` (NanoAOD and Aspen Open Jets alike).

    ``raw`` holds the file's columns under their JetClass names (``charge``, ``pid`` = pdgId,
    ``d0val``, ``d0err``, ``dzval``, ``dzerr`` in cm). The charge comes from pdgId where the file has
    none; impact parameters are converted to mm and set to 0 for neutral candidates (no track); the
    five PID flags come from pdgId.
    """
    out = dict(raw)
    if "charge" not in out and "pid" in out:
        out["charge"] = charge_from_pdg_id(out["pid"])
    for k in IMPACT_FIELDS:
        if k in out:
            v = out[k].astype(np.float32) * np.float32(CM_TO_MM)
            out[k] = np.where(out["charge"] != 0, v, np.float32(0.0)) if "charge" in out else v
    if set(want) & set(PID_FLAGS):
        out.update(pid_flags(out["pid"], out["charge"]))
    return {k: v for k, v in out.items() if k in want}


def split_selector(text: str) -> tuple[str, str | None]:
    """``"f.root:Jet"`` -> ``("f.root", "Jet")`` (also ``FatJet``, ``Events``); else ``(text, None)``.

    A name that exists as a file is never split (a file may contain a colon).
    """
    head, sep, tail = text.rpartition(":")
    if not sep or not head or "/" in tail or Path(text).exists():
        return text, None
    if tail in (*COLLECTIONS, "Events"):
        return head, tail
    return text, None


def flat_names(keys: Collection[str]) -> list[str]:
    """Branch names as a NanoAOD TTree has them: an RNTuple collection of records (``Jet`` with
    subfield ``pt``, listed by uproot as ``Jet.pt``) answers to ``Jet_pt`` as well."""
    keys = list(keys)
    return keys + [k.replace(".", "_", 1) for k in keys if k.count(".") == 1]


def read_events(events, start: int, stop: int, branches: list[str]) -> dict:
    """``{name: array}`` of entries ``[start, stop)``; a record field ``Jet.pt`` answers to ``Jet_pt``."""
    stored = set(events.keys())
    direct = [b for b in branches if b in stored]
    out = dict(events.arrays(direct, entry_start=start, entry_stop=stop, library="ak", how=dict,
                             array_cache=None)) if direct else {}
    for b in branches:
        if b not in stored:
            coll, _, sub = b.partition("_")
            out[b] = events[f"{coll}.{sub}"].array(entry_start=start, entry_stop=stop, library="ak")
    return out


def find_events(f):
    """The ``Events`` TTree or RNTuple of an open uproot file, or None."""
    if EVENTS not in f or f.classname_of(EVENTS) not in ("TTree", "ROOT::RNTuple"):
        return None
    return f[EVENTS]


def constituent_maps(keys: Collection[str]) -> list[tuple[ConstituentScheme, str]]:
    """(scheme, collection) for every jet collection whose constituent map and candidates exist."""
    names = set(keys)
    out = []
    for scheme in SCHEMES:
        if f"{scheme.candidates}_pt" not in names:
            continue
        for coll in COLLECTIONS:
            m = scheme.map_of(coll)
            if f"{m}_jetIdx" in names and f"{m}_{scheme.candidate_index}" in names and f"{coll}_pt" in names:
                out.append((scheme, coll))
    return out


def describe_nanoaod(keys: Collection[str]) -> str:
    """What a NanoAOD ``Events`` tree without usable constituents holds (for the error message)."""
    names = set(keys)
    colls = sorted({k[1:] for k in names if k.startswith("n") and f"{k[1:]}_pt" in names})
    cands = [s.candidates for s in SCHEMES if f"{s.candidates}_pt" in names]
    what = (f"candidates {', '.join(cands)} but no FatJet/Jet index map to them" if cands
            else "no PF candidates")
    return f"{what}; collections: {', '.join(colls[:20]) or 'none'}"


class NanoAODSource(ValidatingSource):
    """The base of the NanoAOD readers: the file, and its ``Events`` tree (TTree or RNTuple)."""

    def _open(self):
        import uproot

        return uproot.open(self.path)

    def _events(self):
        events = find_events(self._file())
        if events is None:
            raise HepfmInputError(f"no TTree or RNTuple {EVENTS!r} (NanoAOD)", self.path)
        return events


class NanoAODJetSource(NanoAODSource):
    """Jets of one NanoAOD collection with their PF constituents (see the module docstring).

    Args:
        path: the file.
        collection: ``FatJet`` or ``Jet`` (default: FatJet if its constituents are mapped).
        max_particles: slots per jet (default 128; None = the longest jet in each chunk read).
        puppi_weight: scale candidates by their PUPPI weight (default: for FatJet only).
        validate, skip_bad: see :class:`~hepfm.data.formats.base.ValidatingSource`.
    """

    format = "nanoaod"

    def __init__(
        self,
        path: str | Path,
        *,
        collection: str | None = None,
        max_particles: int | None = 128,
        puppi_weight: bool | None = None,
        validate: bool = True,
        skip_bad: bool = False,
    ) -> None:
        super().__init__(path, validate=validate, skip_bad=skip_bad)
        self.max_particles = max_particles
        with read_errors(self.path, "reading the NanoAOD Events tree", ROOT_ERRORS):
            self._init_layout(collection, puppi_weight)

    # -- layout ------------------------------------------------------------------------------
    def _init_layout(self, collection: str | None, puppi_weight: bool | None) -> None:
        events = self._events()
        keys = flat_names(events.keys())
        names = set(keys)
        found = constituent_maps(keys)
        if not found:
            raise HepfmInputError(f"NanoAOD file without jet constituents: {describe_nanoaod(keys)}",
                                  self.path)
        if collection is not None and collection not in COLLECTIONS:
            raise HepfmInputError(f"unknown jet collection {collection!r} (NanoAOD: FatJet or Jet)",
                                  self.path)
        chosen = [(s, c) for s, c in found if collection is None or c == collection]
        if not chosen:
            have = ", ".join(c for _, c in found)
            raise HepfmInputError(f"no constituents mapped for {collection} jets (the file maps: {have})",
                                  self.path)
        self.scheme, self.collection = chosen[0]
        s, coll = self.scheme, self.collection
        self.puppi_weight = (coll == "FatJet") if puppi_weight is None else bool(puppi_weight)
        cands = s.candidates
        for comp in ("pt", "eta", "phi", "mass"):
            if f"{cands}_{comp}" not in names:
                raise HepfmInputError(f"missing branch {cands}_{comp}", self.path)
        if self.puppi_weight and f"{cands}_puppiWeight" not in names:
            raise HepfmInputError(f"puppi_weight needs branch {cands}_puppiWeight, which is missing",
                                  self.path)
        self._cand_fields = {k: f"{cands}_{b}" for k, b in CANDIDATE_FIELDS.items()
                             if f"{cands}_{b}" in names}
        fields = list(self._cand_fields)
        if "pid" in fields:
            fields += [*(["charge"] if "charge" not in fields else []), *PID_FLAGS]  # charge from pdgId
        self.particle_fields = tuple(fields)
        self._jet_branches = {k: f"{coll}_{b}" for k, b in JET_FIELDS.items() if f"{coll}_{b}" in names}
        for k in keys:
            rest = k[len(coll) + 1 :]
            if k.startswith(f"{coll}_") and rest.startswith(TAGGER_PREFIXES):
                self._jet_branches[f"jet_{rest}"] = k
        self._event_branches = [b for b in EVENT_FIELDS if b in names]
        self._map = s.map_of(coll)
        self._build_index(events)
        self.detected = (
            f"NanoAOD ({s.name} scheme): {coll} jets with constituents {cands}_* through "
            f"{self._map}_jetIdx/_{s.candidate_index}" + ("; PUPPI-weighted" if self.puppi_weight else "")
        )
        self.field_map = {
            "p4": f"{cands}_pt/eta/phi/mass" + (" x puppiWeight" if self.puppi_weight else ""),
            **{k: v + (" (cm -> mm)" if k in IMPACT_FIELDS else "") for k, v in self._cand_fields.items()},
            **({"PID flags": f"{cands}_pdgId"} if "pid" in self._cand_fields else {}),
            "jet fields": ", ".join(f"{coll}_{JET_FIELDS[k]}" for k in JET_FIELDS if k in self._jet_branches)
            + f" and {sum(k not in JET_FIELDS for k in self._jet_branches)} tagger scores",
        }

    def _build_index(self, events) -> None:
        """Which (event, jet) each jet of the file is: the jets with at least one mapped constituent."""
        import awkward as ak

        coll, m = self.collection, self._map
        n_events = int(events.num_entries)
        ev_parts, jet_parts = [], []
        for lo in range(0, n_events, INDEX_EVENTS):
            hi = min(lo + INDEX_EVENTS, n_events)
            a = read_events(events, lo, hi, [f"{coll}_pt", f"{m}_jetIdx"])
            n_jets = ak.to_numpy(ak.num(a[f"{coll}_pt"], axis=1)).astype(np.int64)
            jet_idx = a[f"{m}_jetIdx"]
            per_event = ak.to_numpy(ak.num(jet_idx, axis=1)).astype(np.int64)
            flat_idx = ak.to_numpy(ak.flatten(jet_idx)).astype(np.int64)
            ev = np.repeat(np.arange(hi - lo, dtype=np.int64), per_event)
            bad = (flat_idx < 0) | (flat_idx >= n_jets[ev])
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise HepfmInputError(
                    f"index map {m}_jetIdx points outside the {coll} list: event {lo + ev[i]} has "
                    f"{n_jets[ev[i]]} {coll} jets, the map says jet {flat_idx[i]}",
                    self.path,
                )
            first = np.zeros(hi - lo + 1, dtype=np.int64)
            np.cumsum(n_jets, out=first[1:])
            has = np.zeros(int(first[-1]), dtype=bool)
            has[first[ev] + flat_idx] = True
            owner = np.repeat(np.arange(hi - lo, dtype=np.int64), n_jets)
            within = np.arange(int(first[-1]), dtype=np.int64) - first[owner]
            ev_parts.append(lo + owner[has])
            jet_parts.append(within[has].astype(np.int32))
        self._jet_event = np.concatenate(ev_parts) if ev_parts else np.zeros(0, np.int64)
        self._jet_within = np.concatenate(jet_parts) if jet_parts else np.zeros(0, np.int32)
        self._n = len(self._jet_event)
        self.n_events = n_events

    # -- reading -----------------------------------------------------------------------------
    def _read(
        self, start: int, stop: int, fields: Collection[str] | None, jet_fields: Collection[str] | None
    ) -> JetChunk:
        n = stop - start
        if n == 0:
            return JetChunk(p4=np.zeros((0, self.max_particles or 0, 4), np.float32),
                            mask=np.zeros((0, self.max_particles or 0), bool))
        with read_errors(self.path, f"reading jets {start}-{stop}", ROOT_ERRORS):
            return self._gather(start, stop, fields, jet_fields)

    def _gather(self, start: int, stop: int, fields, jet_fields) -> JetChunk:
        import awkward as ak

        s, coll, m, cands = self.scheme, self.collection, self._map, self.scheme.candidates
        want = set(select_fields(list(self.particle_fields), fields))
        need = set(want)
        if want & set(PID_FLAGS):
            need |= {"pid", "charge"}
        if want & set(IMPACT_FIELDS):
            need.add("charge")  # neutral candidates have no track
        if "charge" in need and "charge" not in self._cand_fields:
            need.add("pid")
        cand_fields = {k: b for k, b in self._cand_fields.items() if k in need}
        jet_keys = select_fields(list(self._jet_branches), jet_fields)
        jet_keys += [k for k in self._event_branches if jet_fields is None or k in jet_fields]
        e0, e1 = int(self._jet_event[start]), int(self._jet_event[stop - 1]) + 1
        momentum = [f"{cands}_{c}" for c in ("pt", "eta", "phi", "mass")]
        weight = [f"{cands}_puppiWeight"] if self.puppi_weight else []
        branches = sorted({
            f"{coll}_pt", f"{m}_jetIdx", f"{m}_{s.candidate_index}", *momentum, *weight,
            *cand_fields.values(), *(self._jet_branches[k] for k in jet_keys if k in self._jet_branches),
            *(k for k in jet_keys if k in self._event_branches),
        })
        a = read_events(self._events(), e0, e1, branches)
        n_ev = e1 - e0
        # global (within the read) numbering of jets and candidates
        n_jets = ak.to_numpy(ak.num(a[f"{coll}_pt"], axis=1)).astype(np.int64)
        n_cands = ak.to_numpy(ak.num(a[momentum[0]], axis=1)).astype(np.int64)
        jet_first = np.concatenate([[0], np.cumsum(n_jets)])
        cand_first = np.concatenate([[0], np.cumsum(n_cands)])
        ev_of_jet = self._jet_event[start:stop] - e0
        rows = jet_first[ev_of_jet] + self._jet_within[start:stop]
        row_of = np.full(int(jet_first[-1]), -1, dtype=np.int64)
        row_of[rows] = np.arange(stop - start)
        # the map: one entry per (jet, constituent)
        per_event = ak.to_numpy(ak.num(a[f"{m}_jetIdx"], axis=1)).astype(np.int64)
        ev = np.repeat(np.arange(n_ev, dtype=np.int64), per_event)
        jet_idx = ak.to_numpy(ak.flatten(a[f"{m}_jetIdx"])).astype(np.int64)
        cand_idx = ak.to_numpy(ak.flatten(a[f"{m}_{s.candidate_index}"])).astype(np.int64)
        bad = (cand_idx < 0) | (cand_idx >= n_cands[ev])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise HepfmInputError(
                f"index map {m}_{s.candidate_index} points outside the candidate list: event {e0 + ev[i]} "
                f"has {n_cands[ev[i]]} {cands}, the map says candidate {cand_idx[i]}",
                self.path,
            )
        row = row_of[jet_first[ev] + jet_idx]
        cand = cand_first[ev] + cand_idx

        def flat(branch: str) -> np.ndarray:
            return ak.to_numpy(ak.flatten(a[branch]))

        # the constituents of the jets read, grouped by jet: gather each column once, for them only
        keep = row >= 0
        if self.puppi_weight:
            w = flat(weight[0]).astype(np.float64)[cand]
            keep &= w > 0
        sel = np.flatnonzero(keep)[np.argsort(row[keep], kind="stable")]
        counts = np.bincount(row[sel], minlength=stop - start)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        src = cand[sel]
        pt, eta, phi, mass = (flat(b).astype(np.float64)[src] for b in momentum)
        if self.puppi_weight:
            pt, mass = pt * w[sel], mass * w[sel]
        extra = candidate_fields({k: flat(b)[src] for k, b in cand_fields.items()}, want)
        padded = pad_particles(offsets, from_pt_eta_phi_m(pt, eta, phi, mass), extra, self.max_particles)
        jets: dict[str, np.ndarray] = {}
        for k in jet_keys:
            if k in self._event_branches:
                jets[k] = ak.to_numpy(a[k]).astype(np.int64)[ev_of_jet]
            else:
                jets[k] = flat(self._jet_branches[k])[rows]
        if padded.full is not None:
            jets[FULL_JET_P4] = padded.full
        return JetChunk(p4=padded.p4, mask=padded.mask, particles=padded.particles, jets=jets)
