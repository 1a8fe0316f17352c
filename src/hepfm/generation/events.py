"""Whole collision events as sets of reconstructed objects (seed 003), from Pythia 8 + the detector.

Per batch of Pythia events: visible final-state particles -> the detector preset (tracks and
calorimeter cells, :func:`~hepfm.generation.detector.apply_detector`) -> objects, the way a
simplified CMS reconstruction makes them (:class:`ObjectReco`, recorded in every file's provenance):

1. **isolated leptons**: detector-level electrons and muons above threshold whose relative isolation
   (scalar pT of the other particles within ΔR < 0.3, over the lepton's pT) is below 0.15, kept with an
   identification efficiency; leptons from b and c decays mostly fail the isolation;
2. **jets**: anti-kT R = 0.4 on every other detector-level particle (FastJet, the whole batch in one
   call);
3. **hadronic taus**: the generator's τ leptons that decay to hadrons, with their visible momentum
   (τ minus its neutrinos) smeared by the jet resolution and kept with an efficiency; jets within
   ΔR < 0.4 of a kept lepton or tau are removed (as the NanoAOD reader cleans them);
4. **b-tagging** by truth: a jet is b (c) if a b (c) hadron with pT > 5 GeV lies within ΔR < 0.4, and is
   tagged with the efficiency (mistag rate) of a DeepJet-like medium working point; its ``btag`` score
   is drawn above the working point when tagged and below it otherwise, so the NanoAOD reader's
   threshold gives back the same tag;
5. **missing pT**: minus the vector sum of every detector-level particle's pT (so it carries the
   detector's resolution and acceptance, not just the neutrinos).

An event is one :class:`~hepfm.data.jets.JetChunk` row in the order the NanoAOD events reader uses
(electrons, muons, taus, jets by pT, MET last), with ``particles`` ``charge``, ``object_type`` and
``btag``: generated events and CMS NanoAOD events go through the same loaders and models.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from hepfm.data.formats.nanoaod_events import count_groups
from hepfm.data.jets import OBJECT_TYPES, JetChunk, from_pt_eta_phi_m, kinematics
from hepfm.generation.detector import DETECTORS, apply_detector
from hepfm.generation.truth import INVISIBLE_IDS, daughters, delta_r
from hepfm.generation.worker import PythiaShard, ShardTask, batch_particles


@dataclass(frozen=True)
class ObjectReco:
    """Thresholds, efficiencies and rates of the object reconstruction (pT in GeV)."""

    jet_radius: float = 0.4
    jet_min_pt: float = 25.0
    jet_max_eta: float = 2.4
    electron_min_pt: float = 10.0
    electron_max_eta: float = 2.5
    electron_eff: float = 0.85
    muon_min_pt: float = 10.0
    muon_max_eta: float = 2.4
    muon_eff: float = 0.95
    isolation_cone: float = 0.3
    isolation_max: float = 0.15
    tau_min_pt: float = 20.0
    tau_max_eta: float = 2.3
    tau_eff: float = 0.6
    tau_pt_resolution: float = 0.10
    btag_eff: float = 0.70  # b jets
    btag_mistag_c: float = 0.10
    btag_mistag_light: float = 0.01
    btag_wp: float = 0.2783  # the DeepJet medium working point the NanoAOD reader applies
    hadron_match_dr: float = 0.4
    hadron_min_pt: float = 5.0
    cleaning_dr: float = 0.4

    def to_dict(self) -> dict:
        return asdict(self)


RECO = ObjectReco()
_TYPE = {name: i for i, name in enumerate(OBJECT_TYPES)}


def hadron_flavour(pid: np.ndarray) -> np.ndarray:
    """5 for b hadrons, 4 for c hadrons (without b), 0 otherwise, from PDG id digits."""
    a = np.abs(pid)
    q1, q2, q3 = (a // 1000) % 10, (a // 100) % 10, (a // 10) % 10
    hadron = (a > 100) & (a < 10_000) & (q3 != 0)  # q3 = 0: a diquark, not a hadron
    has_b = hadron & ((q1 == 5) | (q2 == 5) | (q3 == 5))
    has_c = hadron & ((q1 == 4) | (q2 == 4) | (q3 == 4))
    return np.where(has_b, 5, np.where(has_c, 4, 0))


@dataclass
class EventObjects:
    """One event's objects before padding: flat per-object arrays, in reader order."""

    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    mass: np.ndarray
    charge: np.ndarray
    kind: np.ndarray  # index into OBJECT_TYPES
    btag: np.ndarray


class EventReconstructor:
    """Turns one Pythia batch (awkward record) into per-event object lists (see the module docstring)."""

    def __init__(self, detector, rng: np.random.Generator, charge_of, reco: ObjectReco = RECO) -> None:
        from hepfm.fastjet_quiet import quiet_fastjet

        self.fastjet = quiet_fastjet()
        self.det, self.rng, self.reco, self.charge_of = detector, rng, reco, charge_of
        self.jet_def = self.fastjet.JetDefinition(self.fastjet.antikt_algorithm, reco.jet_radius)

    def batch(self, prt) -> list[EventObjects]:
        import awkward as ak

        n_ev = len(prt)
        rec, offsets, parts = batch_particles(prt, self.charge_of)
        parts = apply_detector(parts, self.det, self.rng)
        p_counts = np.bincount(parts["event"], minlength=n_ev)
        p_off = np.concatenate([[0], np.cumsum(p_counts)])
        pt = np.hypot(parts["px"], parts["py"])
        eta = np.arcsinh(parts["pz"] / np.maximum(pt, 1e-9))
        phi = np.arctan2(parts["py"], parts["px"])

        leptons = self._isolated_leptons(parts, pt, eta, phi, p_off)
        # jets from every particle but the isolated leptons
        keep = np.ones(len(pt), bool)
        for ev_leptons in leptons:
            keep[ev_leptons] = False
        j_counts = np.bincount(parts["event"][keep], minlength=n_ev)
        arr = ak.unflatten(ak.zip({"px": parts["px"][keep], "py": parts["py"][keep], "pz": parts["pz"][keep],
                                   "E": parts["e"][keep]}), j_counts)
        cs = self.fastjet.ClusterSequence(arr, self.jet_def)
        jets = cs.inclusive_jets(min_pt=self.reco.jet_min_pt)
        jets = {k: ak.to_list(jets[k]) for k in ("px", "py", "pz", "E")}

        # truth: hadronic taus and heavy-flavour hadrons
        flavour = hadron_flavour(rec["id"])
        rpt = np.hypot(rec["px"], rec["py"])
        heavy = (flavour > 0) & (rpt > self.reco.hadron_min_pt)
        out = []
        for ev in range(n_ev):
            sl = slice(offsets[ev], offsets[ev + 1])
            record = {k: v[sl] for k, v in rec.items()}
            taus = self._hadronic_taus(record)
            h = heavy[sl]
            hpt = rpt[sl][h]
            heta = np.arcsinh(record["pz"][h] / np.maximum(hpt, 1e-9))
            hphi = np.arctan2(record["py"][h], record["px"][h])
            jet_list = {k: np.asarray(v[ev], dtype=np.float64) for k, v in jets.items()}
            ps = slice(p_off[ev], p_off[ev + 1])
            met = -np.array([parts["px"][ps].sum(), parts["py"][ps].sum()])
            out.append(self._objects(parts, leptons[ev], taus, jet_list, (heta, hphi, flavour[sl][h]), met))
        return out

    # -- leptons
    def _isolated_leptons(self, parts, pt, eta, phi, p_off) -> list[list[int]]:
        """Per event, the particle indices of the isolated, identified electrons and muons."""
        r = self.reco
        apid = np.abs(parts["pid"])
        cand = np.flatnonzero(
            ((apid == 11) & (pt > r.electron_min_pt) & (np.abs(eta) < r.electron_max_eta))
            | ((apid == 13) & (pt > r.muon_min_pt) & (np.abs(eta) < r.muon_max_eta))
        )
        out: list[list[int]] = [[] for _ in range(len(p_off) - 1)]
        for i in cand:
            ev = int(parts["event"][i])
            lo, hi = p_off[ev], p_off[ev + 1]
            dr = delta_r(eta[i], phi[i], eta[lo:hi], phi[lo:hi])
            near = (dr < r.isolation_cone)
            near[i - lo] = False
            if pt[lo:hi][near].sum() > r.isolation_max * pt[i]:
                continue
            if self.rng.random() < (r.electron_eff if apid[i] == 11 else r.muon_eff):
                out[ev].append(int(i))
        return out

    # -- taus
    def _hadronic_taus(self, record: dict[str, np.ndarray]) -> list[tuple[float, float, float, float, float]]:
        """(pt, eta, phi, mass, charge) of the reconstructed hadronic taus of one event."""
        r = self.reco
        pid, d1, d2 = record["id"], record["daughter1"], record["daughter2"]
        out = []
        for i in np.flatnonzero(np.abs(pid) == 15):
            dau = list(daughters(d1[i], d2[i]))
            dau_ids = np.abs(pid[dau])
            if not dau or 15 in dau_ids or np.isin(dau_ids, (11, 13)).any():
                continue  # an intermediate copy, or a leptonic decay
            nu = [j for j in dau if abs(pid[j]) in INVISIBLE_IDS]
            p = np.array([record[k][i] - sum(record[k][j] for j in nu) for k in ("px", "py", "pz", "e")])
            smear = max(0.0, 1.0 + r.tau_pt_resolution * self.rng.standard_normal())
            vpt = float(np.hypot(p[0], p[1])) * smear
            veta = float(np.arcsinh(p[2] / max(np.hypot(p[0], p[1]), 1e-9)))
            if vpt < r.tau_min_pt or abs(veta) > r.tau_max_eta or self.rng.random() >= r.tau_eff:
                continue
            mass = float(np.sqrt(max(p[3] ** 2 - p[0] ** 2 - p[1] ** 2 - p[2] ** 2, 0.0)))
            out.append((vpt, veta, float(np.arctan2(p[1], p[0])), mass, -float(np.sign(pid[i]))))
        return out

    # -- one event's objects
    def _objects(self, parts, lepton_idx, taus, jets, hadrons, met) -> EventObjects:
        r = self.reco
        cols: dict[str, list[float]] = {k: [] for k in ("pt", "eta", "phi", "mass", "charge", "kind", "btag")}

        def add(pt, eta, phi, mass, charge, kind, btag=0.0):
            for k, v in zip(cols, (pt, eta, phi, mass, charge, kind, btag), strict=True):
                cols[k].append(float(v))

        for flavour in (11, 13):
            sel = np.array([i for i in lepton_idx if abs(parts["pid"][i]) == flavour], dtype=np.int64)
            lep = kinematics(np.stack([parts[k][sel] for k in ("px", "py", "pz", "e")], axis=-1))
            for j in np.argsort(-lep["pt"], kind="stable"):
                add(lep["pt"][j], lep["eta"][j], lep["phi"][j], lep["mass"][j], parts["charge"][sel[j]],
                    _TYPE["electron" if flavour == 11 else "muon"])
        for t in sorted(taus, key=lambda t: -t[0]):
            add(t[0], t[1], t[2], t[3], t[4], _TYPE["tau"])
        veto_eta, veto_phi = np.array(cols["eta"]), np.array(cols["phi"])
        jet = kinematics(np.stack([jets[k] for k in ("px", "py", "pz", "E")], axis=-1).reshape(-1, 4))
        jpt, jeta, jphi = jet["pt"], jet["eta"], jet["phi"]
        heta, hphi, hflav = hadrons
        for j in np.argsort(-jpt, kind="stable"):
            if abs(jeta[j]) > r.jet_max_eta:
                continue
            if len(veto_eta) and (delta_r(jeta[j], jphi[j], veto_eta, veto_phi) < r.cleaning_dr).any():
                continue
            near = delta_r(jeta[j], jphi[j], heta, hphi) < r.hadron_match_dr
            flav = 5 if (hflav[near] == 5).any() else 4 if (hflav[near] == 4).any() else 0
            eff = {5: r.btag_eff, 4: r.btag_mistag_c, 0: r.btag_mistag_light}[flav]
            tagged = self.rng.random() < eff
            u = self.rng.random()
            score = r.btag_wp + (1.0 - r.btag_wp) * max(u, 1e-6) if tagged else r.btag_wp * u
            add(jpt[j], jeta[j], jphi[j], jet["mass"][j], 0.0, _TYPE["bjet" if tagged else "jet"], score)
        add(np.hypot(*met), 0.0, np.arctan2(met[1], met[0]), 0.0, 0.0, _TYPE["met"])
        return EventObjects(**{k: np.array(v) for k, v in cols.items()})


def pad_events(events: list[EventObjects], n_max: int
               ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(p4 (n, n_max, 4), mask (n, n_max), per-object fields) in the NanoAOD events reader's layout.

    An event with more objects than slots loses its softest jets, never its leptons, taus or MET.
    """
    n = len(events)
    p4 = np.zeros((n, n_max, 4), np.float32)
    mask = np.zeros((n, n_max), bool)
    fields = {"charge": np.zeros((n, n_max), np.float32), "object_type": np.zeros((n, n_max), np.int32),
              "btag": np.zeros((n, n_max), np.float32)}
    for i, ev in enumerate(events):
        idx = np.arange(len(ev.pt))
        if len(idx) > n_max:
            is_jet = np.isin(ev.kind, [_TYPE["bjet"], _TYPE["jet"]])
            n_drop = len(idx) - n_max
            drop = np.flatnonzero(is_jet)[::-1][:n_drop]  # jets come pT-ordered: the softest last
            idx = np.setdiff1d(idx, drop)
        m = len(idx)
        p4[i, :m] = np.stack(from_pt_eta_phi_m(ev.pt[idx], ev.eta[idx], ev.phi[idx], ev.mass[idx]), axis=-1)
        mask[i, :m] = True
        fields["charge"][i, :m] = ev.charge[idx]
        fields["object_type"][i, :m] = ev.kind[idx]
        fields["btag"][i, :m] = ev.btag[idx]
    return p4, mask, fields


class EventShardGenerator(PythiaShard):
    """Selected reconstructed-object events of one class from the shard's Pythia instance."""

    def __init__(self, task: ShardTask) -> None:
        super().__init__(task)
        rng = np.random.default_rng(task.seed)
        self.reco = EventReconstructor(DETECTORS.get(task.detector), rng, self.charges)
        self.stats: dict[str, float] = {"events": 0, "batches": 0, "accepted": 0, "truncated": 0}

    def _batch(self) -> list[EventObjects]:
        selection = self.spec.events
        assert selection is not None  # an event dataset
        evs = self.pythia.nextBatch(self.task.batch_events)
        self.stats["events"] += len(evs.prt)
        self.stats["batches"] += 1
        objects = self.reco.batch(evs.prt)
        counts = count_groups({t: np.array([(ev.kind == i).sum() for ev in objects], dtype=np.int64)
                               for i, t in enumerate(OBJECT_TYPES)})
        out = [ev for ev, ok in zip(objects, selection.passes(counts), strict=True) if ok]
        self.stats["accepted"] += len(out)
        return out

    def cross_section(self) -> dict[str, float]:
        """Pythia's cross-section (pb) of what was generated, times the decay filter's measured share."""
        info = self.pythia.infoPython()
        kept = 1.0
        if self._hook is not None and self._hook.tries:
            kept = (self._hook.tries - self._hook.vetoed) / self._hook.tries
        return {"sigma_pb": float(info.sigmaGen()) * 1e9 * kept,
                "sigma_err_pb": float(info.sigmaErr()) * 1e9 * kept,
                "decay_filter_share": kept}

    def pilot(self, n_events: int) -> dict[str, float]:
        """The cross-section (pb) and the selection's acceptance over ``n_events`` events."""
        while self.stats["events"] < n_events:
            self._batch()
        return {**self.cross_section(), "events": self.stats["events"], "accepted": self.stats["accepted"]}

    def run(self, n_events: int) -> tuple[JetChunk, dict]:
        """Generate whole batches until ``n_events`` events pass the selection; keep the first ones."""
        t0 = time.perf_counter()
        events: list[EventObjects] = []
        while len(events) < n_events:
            events.extend(self._batch())
            if self.stats["batches"] >= 50 and not events:
                raise RuntimeError(f"no event of class {self.class_name} passes after {self.stats['events']} "
                                   "events")
        events = events[:n_events]
        self.stats["truncated"] = sum(len(e.pt) > self.spec.max_particles for e in events)
        self.stats.update(self.cross_section())
        self.stats["seconds"] = time.perf_counter() - t0
        p4, mask, fields = pad_events(events, self.spec.max_particles)
        chunk = JetChunk(p4=p4, mask=mask, label=np.full(len(events), self.task.class_index, np.int64),
                         class_names=self.spec.class_names, particles=fields,
                         jets={"n_objects": np.array([len(e.pt) for e in events], np.int32)})
        return chunk, dict(self.stats)
