"""Pileup overlay: minimum-bias Pythia events added to each hard event before the detector and clustering.

Recorded LHC events carry mu ~ 30-60 (HL-LHC: up to 200) extra proton-proton interactions from the same
bunch crossing. Each hard event gets k ~ Poisson(mu) minimum-bias events (``SoftQCD:nonDiffractive``,
the same beams); their visible final-state particles join the hard ones, so the detector preset
smears and thresholds them like everything else and the jets' constituents simply include them.

Generating ~mu min-bias events per hard event costs ~mu times a hard event, so by default the events are
drawn (with replacement) from a library of pre-generated ones, built once per worker process and
reused by all its shards. Each draw is rotated by a random azimuth, reflected in z with probability
1/2 (pp collisions are symmetric under both) and placed at its own vertex, so a library event reused
many times still lands differently in every jet. ``library_size = 0`` generates fresh events for every
hard event instead (exact, slow): see docs/generator.md for the rates and the trade-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hepfm.generation.detector import impact_parameters
from hepfm.generation.truth import INVISIBLE_IDS

#: Longitudinal size of the luminous region (mm, Gaussian sigma; LHC Run 2-3: 35-50 mm).
VERTEX_SIGMA_Z = 45.0
#: Default number of pre-generated min-bias events per worker (~3 s to build on one core).
DEFAULT_LIBRARY = 1000
#: Mean pT (GeV) one min-bias interaction adds to a selected anti-kT R = 0.8 jet (toptag, 14 TeV, Monash).
PILEUP_PT_PER_MU = 3.0
#: Upper bound on --pileup: memory per batch grows like batch_events * mu * ~150 particles.
MAX_PILEUP = 1000.0
#: Min-bias events per ``nextBatch`` call (bounds the memory of Pythia's full event records).
_CHUNK = 500
#: Particle fields of a min-bias event, as stored in the library.
_FIELDS = ("px", "py", "pz", "e", "pid", "charge", "vx", "vy", "vz")


def reach_rapidity(eta_max: float, radius: float) -> float:
    """The |rapidity| beyond which a pileup particle cannot join a selected jet (|eta| < eta_max).

    Anti-kT jets are cones of radius R (in rapidity and azimuth, and |y| <= |eta| for a jet) around their
    hard core, and a soft cluster joins one only within R of it: a margin of 2R. Dropping the particles
    beyond it saves ~1/3 of the time at mu = 50 (docs/generator.md).
    """
    return eta_max + 2 * radius


def pileup_pthat_min(pthat_min: float, radius: float, mu: float) -> float:
    """The hard process's pTHat floor with pileup: lowered by the pT pileup adds to a selected jet.

    Pileup adds ~3 GeV per interaction to an R = 0.8 jet (measured: 2.4-3.2 at mu = 10-50), so jets in the
    pT window come from softer hard events: without the shift the pTHat floor would cut into them (at
    mu = 50, a quarter of the selected jets would sit within 8 GeV of it) and most hard jets would be
    pushed above the window (pass fraction 0.13 instead of 0.35). Floor: a quarter of the original.
    """
    if mu == 0:
        return pthat_min
    return round(max(pthat_min - PILEUP_PT_PER_MU * mu * (radius / 0.8) ** 2, pthat_min / 4), 1)


def minbias_settings(common: tuple[str, ...], seed: int) -> list[str]:
    """All ``readString`` lines of the min-bias Pythia instance (recorded in the output's metadata).

    Non-diffractive events carry nearly all the pileup energy in the tracker and calorimeter
    acceptance; the diffractive ones add little there and ``SoftQCD:inelastic`` needs ~5 s more
    start-up per worker, so mu counts non-diffractive interactions (sigma_ND ~ 0.7 sigma_inel at 14 TeV).
    """
    return [
        *common,
        "SoftQCD:nonDiffractive = on",
        "Next:numberCount = 0",
        "Print:quiet = on",
        "Random:setSeed = on",
        f"Random:seed = {seed}",
    ]


@dataclass(frozen=True)
class MinBiasEvents:
    """Visible final-state particles of min-bias events: flat arrays (keys ``_FIELDS``) plus offsets.

    ``vx, vy, vz`` are production vertices (mm) relative to the event's own interaction point.
    """

    offsets: np.ndarray  # (n_events + 1,)
    fields: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.offsets) - 1


class MinBiasSource:
    """A second Pythia instance generating min-bias events, cut to the region jets can reach."""

    def __init__(self, common: tuple[str, ...], seed: int, rap_max: float) -> None:
        import pythia8mc

        self.rap_max = rap_max
        self.pythia = pythia8mc.Pythia("", False)
        for line in minbias_settings(common, seed):
            if not self.pythia.readString(line):
                raise ValueError(f"Pythia rejected min-bias setting {line!r}")
        if not self.pythia.init():
            raise RuntimeError("Pythia init failed for the min-bias (pileup) events")
        self._charge: dict[int, float] = {}

    def generate(self, n: int) -> MinBiasEvents:
        """``n`` events; particles beyond rapidity ``rap_max`` are dropped (they cannot reach a jet)."""
        parts: list[MinBiasEvents] = []
        for start in range(0, n, _CHUNK):
            parts.append(self._batch(min(_CHUNK, n - start)))
        return concat_events(parts)

    def _batch(self, n: int) -> MinBiasEvents:
        import awkward as ak

        prt = self.pythia.nextBatch(n).prt
        counts = ak.to_numpy(ak.num(prt.id, axis=1))
        event = np.repeat(np.arange(len(counts)), counts)
        pid = ak.to_numpy(ak.flatten(prt.id)).astype(np.int64)
        status = ak.to_numpy(ak.flatten(prt.status))
        f = {k: ak.to_numpy(ak.flatten(prt.p[k])).astype(np.float64) for k in ("px", "py", "pz", "e")}
        for k in ("px", "py", "pz"):
            f["v" + k[1]] = ak.to_numpy(ak.flatten(ak.fill_none(prt.vProd[k], 0.0))).astype(np.float64)
        keep = (status > 0) & ~np.isin(np.abs(pid), INVISIBLE_IDS)
        # FastJet clusters in rapidity, not pseudorapidity: |y| < Y, i.e. |pz| < E tanh(Y), without a log.
        keep &= np.abs(f["pz"]) < f["e"] * np.tanh(self.rap_max)
        f = {k: v[keep] for k, v in f.items()}
        f["pid"] = pid[keep]
        f["charge"] = self._charges(f["pid"])
        kept = np.bincount(event[keep], minlength=len(counts))
        return MinBiasEvents(np.concatenate([[0], np.cumsum(kept)]), f)

    def _charges(self, pid: np.ndarray) -> np.ndarray:
        uniq, inv = np.unique(pid, return_inverse=True)
        for u in uniq:
            if int(u) not in self._charge:
                self._charge[int(u)] = float(self.pythia.particleData.charge(int(u)))
        return np.array([self._charge[int(u)] for u in uniq], dtype=np.float64)[inv]


def concat_events(parts: list[MinBiasEvents]) -> MinBiasEvents:
    if len(parts) == 1:
        return parts[0]
    offsets = [np.zeros(1, np.int64)]
    for p in parts:
        offsets.append(p.offsets[1:] + offsets[-1][-1])
    fields = {k: np.concatenate([p.fields[k] for p in parts]) for k in _FIELDS}
    return MinBiasEvents(np.concatenate(offsets), fields)


#: This process's library: (key, events). One entry, so a worker holds at most one library in memory.
_LIBRARY: tuple[tuple, MinBiasEvents] | None = None


def library(common: tuple[str, ...], seed: int, size: int, rap_max: float) -> MinBiasEvents:
    """The min-bias library for these settings, built on first use and kept for later shards.

    It depends only on its arguments (not on the shard), so whichever worker runs a shard draws from
    the same events: the output stays independent of the number of workers.
    """
    global _LIBRARY
    key = (common, seed, size, rap_max)
    if _LIBRARY is None or _LIBRARY[0] != key:
        _LIBRARY = None  # free the old one before building the new one
        _LIBRARY = (key, MinBiasSource(common, seed, rap_max).generate(size))
    return _LIBRARY[1]


class PileupOverlay:
    """Adds k ~ Poisson(mu) min-bias events to every hard event of a batch.

    Args:
        mu: mean number of pileup interactions per hard event.
        common: the dataset's beam settings (``Beams:eCM``), shared with the hard process.
        library_size: min-bias events in the library; 0 = fresh events for every hard event.
        minbias_seed: Pythia seed of the library (or of the fresh min-bias events).
        draw_seed: seed of the Poisson counts, library draws, rotations and vertices.
        rap_max: pileup particles beyond this |rapidity| are dropped (none can reach a selected jet).
    """

    def __init__(self, mu: float, common: tuple[str, ...], library_size: int, minbias_seed: int,
                 draw_seed: int, rap_max: float) -> None:
        self.mu = mu
        self.rng = np.random.default_rng(draw_seed)
        self.events: MinBiasEvents | None = None
        self.source: MinBiasSource | None = None
        self.last_draws = 0  # min-bias events overlaid in the last batch (for the shard's stats)
        if library_size > 0:
            self.events = library(common, minbias_seed, library_size, rap_max)
        else:
            self.source = MinBiasSource(common, minbias_seed, rap_max)

    def overlay(self, parts: dict[str, np.ndarray], n_events: int) -> dict[str, np.ndarray]:
        """``parts`` (flat, sorted by event) plus the pileup particles, sorted by event, hard ones first.

        Adds the key ``pileup`` (1.0 for pileup particles, 0.0 for hard ones).
        """
        pu = self.draw(n_events)
        merged = {k: np.concatenate([parts[k], pu[k]]) for k in parts}
        merged["pileup"] = np.concatenate([np.zeros(len(parts["px"])), np.ones(len(pu["px"]))])
        order = np.argsort(merged["event"], kind="stable")
        return {k: v[order] for k, v in merged.items()}

    def draw(self, n_events: int) -> dict[str, np.ndarray]:
        """The pileup particles of ``n_events`` hard events: keys of detector.FIELDS."""
        k = self.rng.poisson(self.mu, n_events)
        n = self.last_draws = int(k.sum())
        if self.source is not None:
            ev = self.source.generate(n)
            idx = np.arange(n)
        else:
            assert self.events is not None
            ev = self.events
            idx = self.rng.integers(0, len(ev), n)
        host = np.repeat(np.arange(n_events), k)  # the hard event each draw joins
        phi = self.rng.uniform(0.0, 2 * np.pi, n)
        flip = np.where(self.rng.random(n) < 0.5, -1.0, 1.0)
        # The hard vertex is the origin; both ~ N(0, sigma_z), so their distance is ~ N(0, sqrt2 sigma_z).
        z0 = self.rng.normal(0.0, np.sqrt(2.0) * VERTEX_SIGMA_Z, n)

        counts = ev.offsets[idx + 1] - ev.offsets[idx]
        draw = np.repeat(np.arange(n), counts)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]) if n else np.zeros(0, np.int64)
        pidx = np.repeat(ev.offsets[idx], counts) + np.arange(int(counts.sum())) - np.repeat(first, counts)
        f = {key: v[pidx] for key, v in ev.fields.items()}
        c, s, sign = np.cos(phi)[draw], np.sin(phi)[draw], flip[draw]
        px, py = c * f["px"] - s * f["py"], s * f["px"] + c * f["py"]
        x, y = c * f["vx"] - s * f["vy"], s * f["vx"] + c * f["vy"]
        pz, z = sign * f["pz"], sign * f["vz"] + z0[draw]
        d0, dz = impact_parameters(px, py, pz, x, y, z)
        return {
            "px": px, "py": py, "pz": pz, "e": f["e"], "pid": f["pid"], "charge": f["charge"],
            "d0": d0, "dz": dz, "event": host[draw],
        }
