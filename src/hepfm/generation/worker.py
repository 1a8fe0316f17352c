"""One generation shard: Pythia 8 events in batches -> pileup overlay (optional) -> detector -> FastJet
anti-kT -> selected jets.

Per batch everything is vectorised (``Pythia.nextBatch`` returns awkward arrays converted in C++,
FastJet clusters the whole batch in one call); Python loops run only over events with a jet in the
window, for truth matching and for gathering constituents.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hepfm.data.jets import JetChunk, pid_flags
from hepfm.errors import HepfmInputError
from hepfm.generation.detector import DETECTORS, apply_detector, impact_parameters
from hepfm.generation.pileup import DEFAULT_LIBRARY, PileupOverlay, pileup_pthat_min, reach_rapidity
from hepfm.generation.processes import DATASETS, PROCESSES, DatasetSpec, Process
from hepfm.generation.substructure import substructure
from hepfm.generation.truth import INVISIBLE_IDS, LEPTON_IDS, match_resonance

MAX_PYTHIA_SEED = 900_000_000
#: Last SeedSequence word of the pileup streams (class indices, the other words, are small).
PILEUP_STREAM = 0x70696C65


def pythia_seed(entropy: list[int]) -> int:
    """A Pythia ``Random:seed`` (1 .. 9e8) from integers, e.g. (job seed, class index, shard index)."""
    return int(np.random.SeedSequence(entropy).generate_state(1)[0]) % MAX_PYTHIA_SEED + 1


@dataclass(frozen=True)
class ShardTask:
    """A deterministic unit of work: the same task always yields the same jets.

    ``pileup_seed`` seeds the min-bias library (the job passes one per job, so every worker builds the
    same library); None derives one from ``seed``.
    """

    dataset: str
    class_index: int
    shard: int
    n_jets: int
    seed: int
    detector: str = "none"
    batch_events: int = 200
    extra_settings: tuple[str, ...] = ()
    pileup: float = 0.0
    pileup_library: int = DEFAULT_LIBRARY
    pileup_seed: int | None = None


def pythia_settings(
    spec: DatasetSpec, proc: Process, seed: int, extra: tuple[str, ...] = (), pileup: float = 0.0
) -> list[str]:
    """All ``readString`` lines for one class (recorded in the output file's metadata).

    With pileup the pTHat floor is lowered (:func:`~hepfm.generation.pileup.pileup_pthat_min`); an
    ``extra`` line ``PhaseSpace:pTHatMin = ...`` still overrides it.
    """
    # event datasets take the whole process's phase space (a process sets its own pTHat floor if needed)
    pthat = [] if spec.events is not None else [
        f"PhaseSpace:pTHatMin = {pileup_pthat_min(spec.pthat_range[0], spec.radius, pileup)}",
        f"PhaseSpace:pTHatMax = {spec.pthat_range[1]}",
    ]
    return [
        *spec.common,
        *proc.settings,
        *pthat,
        f"PartonLevel:MPI = {'on' if proc.mpi else 'off'}",
        "Next:numberCount = 0",
        "Print:quiet = on",
        "Random:setSeed = on",
        f"Random:seed = {seed}",
        *extra,
    ]


def check_pythia_settings(lines: tuple[str, ...]) -> None:
    """Refuse, in the calling process and before any generation, a ``--set`` line Pythia would reject.

    Otherwise the error would surface only inside a worker, after Pythia's start-up, as a traceback.
    Pythia silently reads a blank line or one not starting with a letter or digit (``! ...``) as a
    comment, so such lines are refused too.
    """
    if not lines:
        return
    import pythia8mc

    pythia = pythia8mc.Pythia("", False)  # a throwaway instance: readString changes its settings
    for line in lines:
        if not line.strip()[:1].isalnum():
            raise HepfmInputError(f"--set {line!r}: expected a Pythia setting 'Key = value'")
        if not pythia.readString(line, False):
            raise HepfmInputError(f"--set {line!r}: Pythia does not accept this setting "
                                  "(unknown key or bad value)")


def decay_hook(accept):
    import pythia8mc

    class DecayVeto(pythia8mc.UserHooks):
        """Vetoes resonance decays the decay tables cannot express; Pythia then re-draws the decays."""

        def canVetoResonanceDecays(self) -> bool:
            return True

        tries = 0  # decay configurations drawn, and how many were vetoed: the filter's efficiency
        vetoed = 0

        def doVetoResonanceDecays(self, process) -> bool:
            self.tries += 1
            decays = []
            for i in range(process.size()):
                p = process[i]
                if p.idAbs() in (23, 24) and p.daughter1() > 0:
                    d = abs(process[p.daughter1()].id())
                    mode = "nu" if d in INVISIBLE_IDS else "lep" if d in LEPTON_IDS else "had"
                    decays.append((p.idAbs(), process[p.mother1()].idAbs() == 25, mode))
            veto = not accept(decays)
            self.vetoed += veto
            return veto

    return DecayVeto()


class PythiaShard:
    """One shard's Pythia instance configured for its class (settings, decay-veto hook), and the
    charges of the particles it makes (looked up once per PDG id): what jet and event shards share."""

    def __init__(self, task: ShardTask) -> None:
        import pythia8mc

        self.task = task
        self.spec = DATASETS.get(task.dataset)
        self.class_name = self.spec.class_names[task.class_index]
        self.proc = PROCESSES.get(self.spec.classes[self.class_name])
        self.pythia = pythia8mc.Pythia("", False)
        for line in pythia_settings(self.spec, self.proc, task.seed, task.extra_settings, task.pileup):
            if not self.pythia.readString(line):
                raise ValueError(f"Pythia rejected setting {line!r}")
        self._hook = None  # keep the Python hook alive as long as Pythia uses it
        if self.proc.decay_filter is not None:
            self._hook = decay_hook(self.proc.decay_filter)
            self.pythia.setUserHooksPtr(self._hook)
        if not self.pythia.init():
            raise RuntimeError(f"Pythia init failed for class {self.class_name}")
        self._charge: dict[int, float] = {}

    def charges(self, pid: np.ndarray) -> np.ndarray:
        uniq, inv = np.unique(pid, return_inverse=True)
        for u in uniq:
            if int(u) not in self._charge:
                self._charge[int(u)] = float(self.pythia.particleData.charge(int(u)))
        return np.array([self._charge[int(u)] for u in uniq])[inv]


class ShardGenerator(PythiaShard):
    """Turns event batches of one class into selected jets."""

    def __init__(self, task: ShardTask) -> None:
        from hepfm.fastjet_quiet import quiet_fastjet

        fastjet = quiet_fastjet()
        super().__init__(task)
        self.det = DETECTORS.get(task.detector)
        self.rng = np.random.default_rng(task.seed)
        self.pileup: PileupOverlay | None = None
        if task.pileup > 0:
            # Fresh min-bias events (no library) need a seed per shard, hence from the shard's own seed.
            library_seed = task.pileup_seed if task.pileup_library > 0 else None
            self.pileup = PileupOverlay(
                task.pileup, self.spec.common, task.pileup_library,
                minbias_seed=library_seed or pythia_seed([task.seed, PILEUP_STREAM]),
                draw_seed=pythia_seed([task.seed, PILEUP_STREAM, 1]),
                rap_max=reach_rapidity(self.spec.eta_max, self.spec.radius),
            )
        self.jet_def = fastjet.JetDefinition(fastjet.antikt_algorithm, self.spec.radius)
        self.stats: dict[str, float] = {
            "events": 0, "batches": 0, "in_window": 0, "accepted": 0, "truncated": 0,
        }
        if self.pileup is not None:
            self.stats["pileup_events"] = 0

    def run(self, n_jets: int) -> tuple[JetChunk, dict]:
        """Generate whole batches until ``n_jets`` jets pass; keep the first ``n_jets``."""
        t0 = time.perf_counter()
        jets: list[dict] = []
        while len(jets) < n_jets:
            jets.extend(self._batch())
            if self.stats["batches"] > 50 and not jets:
                raise RuntimeError(
                    f"no jet of class {self.class_name} passes after {self.stats['events']} events"
                )
        self.stats["seconds"] = time.perf_counter() - t0
        return self._to_chunk(jets[:n_jets]), dict(self.stats)

    # -- one batch of events
    def _batch(self) -> list[dict]:
        import awkward as ak

        from hepfm.fastjet_quiet import quiet_fastjet

        fastjet = quiet_fastjet()

        evs = self.pythia.nextBatch(self.task.batch_events)
        prt = evs.prt
        n_ev = len(prt)
        self.stats["events"] += n_ev
        self.stats["batches"] += 1
        rec, offsets, parts = batch_particles(prt, self.charges)
        if self.pileup is not None:
            parts = self.pileup.overlay(parts, n_ev)
            self.stats["pileup_events"] += self.pileup.last_draws
        parts = apply_detector(parts, self.det, self.rng)
        vis_counts = np.bincount(parts["event"], minlength=n_ev)
        vis_offsets = np.concatenate([[0], np.cumsum(vis_counts)])

        arr = ak.unflatten(
            ak.zip({"px": parts["px"], "py": parts["py"], "pz": parts["pz"], "E": parts["e"]}), vis_counts
        )
        ptmin = 0.8 * self.spec.pt_range[0]
        cs = fastjet.ClusterSequence(arr, self.jet_def)
        jets = cs.inclusive_jets(min_pt=ptmin)
        cidx = cs.constituent_index(min_pt=ptmin)
        jpx, jpy, jpz = (ak.to_list(jets[k]) for k in ("px", "py", "pz"))
        cidx = ak.to_list(cidx)
        pthat = np.sqrt(ak.to_numpy(evs.info.pT2Hat))

        out = []
        lo, hi = self.spec.pt_range
        n_cand = self.spec.candidates if self.proc.resonances else 1
        for ev in range(n_ev):
            if not jpx[ev]:
                continue
            jpt = np.hypot(jpx[ev], jpy[ev])
            order = np.argsort(-jpt)[:n_cand]
            for rank, j in enumerate(order):
                jeta = float(np.arcsinh(jpz[ev][j] / jpt[j]))
                if not (lo < jpt[j] < hi and abs(jeta) < self.spec.eta_max):
                    continue
                if rank == 0:
                    self.stats["in_window"] += 1
                truth: np.ndarray | None = None
                if self.proc.resonances:
                    sl = slice(offsets[ev], offsets[ev + 1])
                    record = {k: v[sl] for k, v in rec.items()}
                    hit = match_resonance(
                        record, jeta, float(np.arctan2(jpy[ev][j], jpx[ev][j])),
                        resonances=self.proc.resonances, n_visible=self.proc.n_visible,
                        need_lepton=self.proc.need_lepton, radius=self.spec.radius,
                    )
                    if hit is None:
                        continue
                    truth = np.array([record[k][hit] for k in ("px", "py", "pz", "e")])
                idx = vis_offsets[ev] + np.asarray(cidx[ev][j], dtype=np.int64)
                out.append(self._jet_record(parts, idx, truth, pthat[ev]))
                self.stats["accepted"] += 1
                break
        return out

    def _jet_record(self, parts: dict, idx: np.ndarray, truth: np.ndarray | None, pthat: float) -> dict:
        pt = np.hypot(parts["px"][idx], parts["py"][idx])
        extra = {}
        if "pileup" in parts:  # the pileup share of the jet's scalar constituent pT, before truncation
            extra["pileup_pt_fraction"] = float(np.dot(pt, parts["pileup"][idx]) / max(pt.sum(), 1e-12))
        idx = idx[np.argsort(-pt, kind="stable")]
        n_const = len(idx)
        if n_const > self.spec.max_particles:
            self.stats["truncated"] += 1
            idx = idx[: self.spec.max_particles]
        keys = ("px", "py", "pz", "e", "pid", "charge", "d0val", "d0err", "dzval", "dzerr")
        rec = {k: parts[k][idx] for k in keys}
        rec.update(n_const=n_const, truth=truth, pthat=pthat, **extra)
        return rec

    def _to_chunk(self, jets: list[dict]) -> JetChunk:
        n, n_max = len(jets), self.spec.max_particles
        p4 = np.zeros((n, n_max, 4), np.float32)
        mask = np.zeros((n, n_max), bool)
        fields = {k: np.zeros((n, n_max), np.float32) for k in ("charge", "d0val", "d0err", "dzval", "dzerr")}
        pid = np.zeros((n, n_max), np.int32)
        truth = np.zeros((n, 4), np.float32)
        for i, jet in enumerate(jets):
            m = len(jet["px"])
            p4[i, :m] = np.stack([jet["px"], jet["py"], jet["pz"], jet["e"]], axis=-1)
            mask[i, :m] = True
            pid[i, :m] = jet["pid"]
            for k in fields:
                fields[k][i, :m] = jet[k]
            if jet["truth"] is not None:
                truth[i] = jet["truth"]
        particles = dict(fields, pid=pid, **masked_pid_flags(pid, fields["charge"], mask))
        sub = substructure(p4, mask, self.spec.radius) if n and self.spec.substructure else {}
        return JetChunk(
            p4=p4,
            mask=mask,
            label=np.full(n, self.task.class_index, np.int64),
            class_names=self.spec.class_names,
            particles=particles,
            jets={
                "n_const": np.array([j["n_const"] for j in jets], np.int32),
                "pthat": np.array([j["pthat"] for j in jets], np.float32),
                "truthPX": truth[:, 0], "truthPY": truth[:, 1], "truthPZ": truth[:, 2], "truthE": truth[:, 3],
                **sub,
                **self._pileup_fields(jets),
            },
        )

    def _pileup_fields(self, jets: list[dict]) -> dict[str, np.ndarray]:
        """``pileup_pt_fraction`` per jet, only with pileup (without it the fields stay as they were)."""
        if self.pileup is None:
            return {}
        return {"pileup_pt_fraction": np.array([j["pileup_pt_fraction"] for j in jets], np.float32)}


def batch_particles(prt, charge_of: Callable[[np.ndarray], np.ndarray]
                    ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """One ``nextBatch``'s event record and its visible final-state particles.

    Returns the record as flat arrays (``id, status, daughter1, daughter2, px .. e``), the per-event
    offsets into it, and the visible final-state particles (no neutrinos) with impact parameters,
    charges and event index: the detector's input (:data:`~hepfm.generation.detector.FIELDS`).
    """
    import awkward as ak

    counts = ak.to_numpy(ak.num(prt.id, axis=1))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    rec = {k: ak.to_numpy(ak.flatten(prt[k])) for k in ("id", "status", "daughter1", "daughter2")}
    for k in ("px", "py", "pz", "e"):
        rec[k] = ak.to_numpy(ak.flatten(prt.p[k])).astype(np.float64)
    # vProd is missing (None) for particles made at the primary vertex: that is the origin.
    vx, vy, vz = (ak.to_numpy(ak.flatten(ak.fill_none(prt.vProd[k], 0.0))).astype(np.float64)
                  for k in ("px", "py", "pz"))
    event = np.repeat(np.arange(len(counts)), counts)
    final = (rec["status"] > 0) & ~np.isin(np.abs(rec["id"]), INVISIBLE_IDS)
    px, py, pz = rec["px"][final], rec["py"][final], rec["pz"][final]
    d0, dz = impact_parameters(px, py, pz, vx[final], vy[final], vz[final])
    parts = {
        "px": px, "py": py, "pz": pz, "e": rec["e"][final], "pid": rec["id"][final].astype(np.int64),
        "d0": d0, "dz": dz, "event": event[final],
    }
    parts["charge"] = charge_of(parts["pid"])
    return rec, offsets, parts


def masked_pid_flags(pid: np.ndarray, charge: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`~hepfm.data.jets.pid_flags` as float32, zero in empty slots (the generator's layout)."""
    return {k: (mask & v).astype(np.float32) for k, v in pid_flags(pid, charge).items()}


def run_shard(task: ShardTask) -> tuple[JetChunk, dict]:
    """Entry point for worker processes: ``task.n_jets`` jets, or events for an event dataset."""
    if DATASETS.get(task.dataset).events is not None:
        from hepfm.generation.events import EventShardGenerator

        return EventShardGenerator(task).run(task.n_jets)
    return ShardGenerator(task).run(task.n_jets)


def run_pilot(task: ShardTask) -> dict[str, float]:
    """Cross-section and acceptance of one event class over ``task.n_jets`` generated events."""
    from hepfm.generation.events import EventShardGenerator

    return EventShardGenerator(task).pilot(task.n_jets)
