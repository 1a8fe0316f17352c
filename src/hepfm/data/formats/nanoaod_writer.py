"""Events of reconstructed objects written as a NanoAOD-like ROOT file (writer name ``nanoaod``).

Why: generated (or re-selected) events in the layout CMS tools read (coffea, ROOT's ``RDataFrame``,
an analysis' own NanoAOD scripts), with CMS's branch names, and read back by hepfm's
``nanoaod-events`` reader unchanged.

Input: :class:`~hepfm.data.jets.JetChunk` rows that are events (``particles["object_type"]``
indexing :data:`~hepfm.data.jets.OBJECT_TYPES`, with ``charge`` and ``btag`` where present). Output:
one TTree ``Events``, one entry per event, collections as CMSSW writes them (``<Coll>_<field>``
branches sharing an ``n<Coll>`` counter), objects in their event order (pT-sorted):

* ``Electron_pt/eta/phi/mass/charge/cutBased`` (4 = tight), ``Muon_pt/eta/phi/mass/charge/looseId/
  mediumId`` (true), ``Tau_pt/eta/phi/mass/charge/idDeepTau2018v2p5VSjet`` (7 = VTight),
  ``Jet_pt/eta/phi/mass/btagDeepFlavB/jetId`` (6 = tight + lepton veto) for ``jet`` and ``bjet``
  objects, ``Photon_pt/eta/phi/mass/cutBased`` (3 = tight) only if some event has a photon;
  the ID values pass the reader's default selection (:data:`~hepfm.data.formats.nanoaod_events.SELECTIONS`);
* ``MET_pt``, ``MET_phi`` of the event's ``met`` object (0 where an event has none; its η and mass
  are not stored);
* ``run``, ``luminosityBlock``, ``event`` from ``JetChunk.jets`` where present, else 1, 1 and
  1, 2, 3, ... ; other event-level fields are dropped (listed in the metadata);
* ``hepfm_label`` (int32 class index) for labeled events, the class names under ``class_names`` of
  the metadata, stored as JSON in a ``TObjString`` ``hepfm_metadata`` (as the JetClass writer does).

b-tag scores: the type is what a reader must get back, so the score is made to agree with the
``btagDeepFlavB`` medium working point the reader applies (:data:`BTAG_WP`): scores are clipped
to [0, 1] (unfilled taggers store -1 or less), a ``bjet`` whose score is not above the working point
(e.g. a file without scores, or another tagger's scale) is written with score 1, a ``jet`` above it
with score 0; how many were replaced is in the metadata (``btag.scores_replaced``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hepfm.data.formats.jetclass_root import METADATA_KEY
from hepfm.data.formats.nanoaod_events import BTAG_SCORES
from hepfm.data.jets import OBJECT_TYPES, JetChunk, kinematics
from hepfm.errors import HepfmInputError
from hepfm.io import atomic_path

TREE = "Events"
LABEL_BRANCH = "hepfm_label"
BTAG_BRANCH = "btagDeepFlavB"
#: The working point the ``nanoaod-events`` reader applies to :data:`BTAG_BRANCH`.
BTAG_WP = next(wp for b, wp, _ in BTAG_SCORES if b == BTAG_BRANCH)
#: Object type -> (collection, identification branches written: name -> (dtype, value)).
COLLECTIONS: dict[str, tuple[str, dict[str, tuple[Any, Any]]]] = {
    "electron": ("Electron", {"cutBased": (np.uint8, 4)}),  # tight
    "muon": ("Muon", {"looseId": (np.bool_, True), "mediumId": (np.bool_, True)}),
    "tau": ("Tau", {"idDeepTau2018v2p5VSjet": (np.uint8, 7)}),  # VTight
    "jet": ("Jet", {"jetId": (np.uint8, 6)}),  # tight + lepton veto; bjets too
    "photon": ("Photon", {"cutBased": (np.uint8, 3)}),  # tight
}
CHARGED = ("electron", "muon", "tau")
#: Event-level fields of ``JetChunk.jets`` written as NanoAOD's event branches, with their types.
EVENT_BRANCHES = {"run": np.uint32, "luminosityBlock": np.uint32, "event": np.uint64}
DEFAULT_BASKET_EVENTS = 8192
_T = {k: i for i, k in enumerate(OBJECT_TYPES)}


class _EventTreeWriter:
    """Buffers events into baskets of at least ``basket_events`` and extends the ``Events`` tree."""

    def __init__(self, f: Any, path: Path, basket_events: int, photons: bool | None) -> None:
        self.f, self.path, self.basket_events, self.photons = f, path, basket_events, photons
        self.tree: Any = None
        self.buffer: list[JetChunk] = []
        self.labeled: bool | None = None
        self.class_names: tuple[str, ...] = ()
        self.replaced = 0
        self.dropped: set[str] = set()
        self.n = 0

    def add(self, chunk: JetChunk) -> None:
        if len(chunk) == 0:
            return
        if "object_type" not in chunk.particles:
            raise HepfmInputError("--to nanoaod writes events of reconstructed objects, but these rows have "
                                  "no per-object 'object_type' (jets of particles?)", self.path)
        if self.labeled is None:
            self.labeled, self.class_names = chunk.label is not None, tuple(chunk.class_names)
        labeled = chunk.label is not None
        if labeled != self.labeled or (labeled and tuple(chunk.class_names) != self.class_names):
            raise ValueError("chunks differ in labels or class names")
        self.buffer.append(chunk)
        if sum(len(c) for c in self.buffer) >= self.basket_events:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        chunk = JetChunk.concat(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        self.buffer = []
        if self.photons is None:  # decided by the first basket: a TTree's branches are fixed when made
            self.photons = bool(np.any(chunk.particles["object_type"][chunk.mask] == _T["photon"]))
        data = self._arrays(chunk)
        if self.tree is None:
            import awkward as ak

            self.tree = self.f.mktree(TREE, {k: v.type if isinstance(v, ak.Array) else v.dtype
                                             for k, v in data.items()})
        self.tree.extend(data)
        self.n += len(chunk)

    def _arrays(self, chunk: JetChunk) -> dict[str, Any]:
        import awkward as ak

        n, mask = len(chunk), chunk.mask
        event = np.nonzero(mask)[0]  # event of each object, events in order, objects in slot order
        kin = kinematics(chunk.p4[mask].astype(np.float64))
        pt, eta, phi, mass = kin["pt"], kin["eta"], kin["phi"], kin["mass"]
        kind = chunk.particles["object_type"][mask].astype(np.int64)
        bad = np.flatnonzero((kind < 0) | (kind >= len(OBJECT_TYPES)))
        if bad.size:
            i = bad[0]
            raise HepfmInputError(f"event {self.n + int(event[i])}: object_type {kind[i]} is not an index "
                                  f"into {OBJECT_TYPES}", self.path)
        zeros = np.zeros(len(kind))
        charge = chunk.particles["charge"][mask] if "charge" in chunk.particles else zeros
        score = chunk.particles["btag"][mask].astype(np.float64) if "btag" in chunk.particles else zeros
        data: dict[str, Any] = {}
        for name, (coll, ids) in COLLECTIONS.items():
            sel = (kind == _T["jet"]) | (kind == _T["bjet"]) if name == "jet" else kind == _T[name]
            if name == "photon" and not self.photons:
                if sel.any():
                    raise HepfmInputError(
                        f"event {self.n + int(event[sel][0])} has a photon but the first events had none "
                        "(a TTree's branches are fixed when it is made): write with photons=True", self.path)
                continue
            counts = np.bincount(event[sel], minlength=n)
            k = int(sel.sum())
            fields: dict[str, np.ndarray] = {
                "pt": pt[sel].astype(np.float32), "eta": eta[sel].astype(np.float32),
                "phi": phi[sel].astype(np.float32), "mass": mass[sel].astype(np.float32)}
            if name in CHARGED:
                fields["charge"] = np.rint(charge[sel]).astype(np.int32)
            if name == "jet":
                fields[BTAG_BRANCH] = self._scores(score[sel], kind[sel] == _T["bjet"]).astype(np.float32)
            fields |= {b: np.full(k, value, dtype) for b, (dtype, value) in ids.items()}
            data[coll] = ak.zip({f: ak.unflatten(v, counts) for f, v in fields.items()})
        met = kind == _T["met"]
        per_event = np.bincount(event[met], minlength=n)
        if per_event.max(initial=0) > 1:
            i = int(np.argmax(per_event > 1))
            raise HepfmInputError(f"event {self.n + i} has {per_event[i]} met objects; NanoAOD has one MET "
                                  "per event", self.path)
        for b, v in (("MET_pt", pt), ("MET_phi", phi)):
            data[b] = np.zeros(n, np.float32)
            data[b][event[met]] = v[met]
        for b, dtype in EVENT_BRANCHES.items():
            if b in chunk.jets:
                data[b] = np.asarray(chunk.jets[b]).astype(dtype)
            else:
                default = np.arange(self.n + 1, self.n + n + 1) if b == "event" else np.ones(n)
                data[b] = default.astype(dtype)
        self.dropped |= set(chunk.jets) - set(EVENT_BRANCHES)
        if chunk.label is not None:
            data[LABEL_BRANCH] = chunk.label.astype(np.int32)
        return data

    def _scores(self, score: np.ndarray, is_b: np.ndarray) -> np.ndarray:
        """b-tag scores that give each jet back its type at :data:`BTAG_WP` (see the module docstring)."""
        s = np.clip(score, 0.0, 1.0)
        wrong_b, wrong_light = is_b & (s <= BTAG_WP), ~is_b & (s > BTAG_WP)
        self.replaced += int(wrong_b.sum() + wrong_light.sum())
        return np.where(wrong_b, 1.0, np.where(wrong_light, 0.0, s))


def write_nanoaod_events(
    path: str | Path,
    chunks: Iterable[JetChunk],
    metadata: dict | None = None,
    *,
    photons: bool | None = None,
    basket_events: int = DEFAULT_BASKET_EVENTS,
) -> int:
    """Write events of objects as a NanoAOD-like ROOT file (see the module docstring); returns events written.

    ``photons``: write a ``Photon`` collection (None: if the first ``basket_events`` events have a
    photon; a photon after that is then an error, since a TTree's branches are fixed when it is made).
    """
    if basket_events < 1:
        raise ValueError(f"basket_events must be positive, got {basket_events}")
    import uproot

    from hepfm.data.formats.hepfm_h5 import dumps_metadata

    path = Path(path)
    with atomic_path(path, suffix=".root") as tmp, uproot.recreate(tmp) as f:
        w = _EventTreeWriter(f, path, basket_events, photons)
        for chunk in chunks:
            w.add(chunk)
        w.flush()
        if w.tree is None:
            raise HepfmInputError("nothing to write: no events", path)
        meta = dict(metadata or {})
        if w.labeled:
            meta |= {"class_names": list(w.class_names), "label_branch": LABEL_BRANCH}
        meta["btag"] = {"branch": f"Jet_{BTAG_BRANCH}", "working_point": BTAG_WP,
                        "scores_replaced": w.replaced}
        if w.dropped:
            meta["dropped_event_fields"] = sorted(w.dropped)
        f[METADATA_KEY] = dumps_metadata(meta)
    return w.n
