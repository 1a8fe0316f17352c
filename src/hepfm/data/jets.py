"""`JetChunk`: the in-memory, numpy form of a block of jets, shared by every reader, writer and the generator.

Particles are zero-padded to a common length ``N`` and sorted by decreasing pT; ``mask`` is True for
real particles. Four-vectors are (px, py, pz, E) in GeV, the order ParT's ``pf_vectors`` use; the
Top Tagging files store (E, px, py, pz) and their reader reorders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Optional per-particle fields, named as in the JetClass ROOT files (without the ``part_`` prefix).
PARTICLE_FIELDS = (
    "charge",
    "isChargedHadron",
    "isNeutralHadron",
    "isPhoton",
    "isElectron",
    "isMuon",
    "d0val",
    "d0err",
    "dzval",
    "dzerr",
    "pid",
)
PID_FLAGS = ("isChargedHadron", "isNeutralHadron", "isPhoton", "isElectron", "isMuon")

#: The ten JetClass classes, in the order of the ``label_*`` branches of the official files.
JETCLASS_CLASSES = ("QCD", "Hbb", "Hcc", "Hgg", "H4q", "Hqql", "Zqq", "Wqq", "Tbqq", "Tbl")
TOPTAG_CLASSES = ("QCD", "Top")

#: ``JetChunk.jets`` key of the (n, 4) float64 four-vector sum of *all* a jet's constituents, set
#: when a particle cap (a reader's or :meth:`JetChunk.truncate`'s) drops particles of the chunk. Jet-relative
#: features (pT and energy fractions, the axis of Δη/Δφ) then refer to the whole jet, as in ParT's
#: data configs (their ``jet_pt``/``jet_eta``/... are the clustered jet's), not to the kept particles.
FULL_JET_P4 = "constituents_p4"


@dataclass
class JetChunk:
    """A block of ``n`` jets with up to ``N`` particles each.

    Attributes:
        p4: (n, N, 4) float32 particle (px, py, pz, E), zero where ``mask`` is False.
        mask: (n, N) bool, True = real particle.
        label: (n,) int64 class index into ``class_names``, or None for unlabeled data.
        class_names: names of the classes ``label`` indexes.
        particles: optional per-particle arrays (n, N), keys from :data:`PARTICLE_FIELDS`.
        jets: optional per-jet arrays (n,) or (n, k), e.g. ``n_const`` (count before truncation).
    """

    p4: np.ndarray
    mask: np.ndarray
    label: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    particles: dict[str, np.ndarray] = field(default_factory=dict)
    jets: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.p4.ndim != 3 or self.p4.shape[-1] != 4:
            raise ValueError(f"p4 must be (n, N, 4), got {self.p4.shape}")
        if self.mask.shape != self.p4.shape[:2]:
            raise ValueError(f"mask shape {self.mask.shape} does not match p4 {self.p4.shape}")
        if self.label is not None and self.label.shape != (len(self),):
            raise ValueError(f"label shape {self.label.shape} != ({len(self)},)")

    def __len__(self) -> int:
        return self.p4.shape[0]

    @property
    def max_particles(self) -> int:
        return self.p4.shape[1]

    @property
    def n_particles(self) -> np.ndarray:
        """(n,) number of stored (real) particles per jet."""
        return self.mask.sum(axis=1)

    def take(self, index: np.ndarray | slice) -> JetChunk:
        """Select jets (a slice or an index array)."""
        return JetChunk(
            p4=self.p4[index],
            mask=self.mask[index],
            label=None if self.label is None else self.label[index],
            class_names=self.class_names,
            particles={k: v[index] for k, v in self.particles.items()},
            jets={k: v[index] for k, v in self.jets.items()},
        )

    def with_jets(self, jets: dict[str, np.ndarray]) -> JetChunk:
        """The same jets with per-jet fields ``jets`` added (or replaced)."""
        return JetChunk(p4=self.p4, mask=self.mask, label=self.label, class_names=self.class_names,
                        particles=self.particles, jets=self.jets | jets)

    def truncate(self, n_max: int, *, keep_jet_sums: bool = True) -> JetChunk:
        """Keep at most ``n_max`` particle slots (particles are pT-ordered, so the softest go).

        ``keep_jet_sums`` records the whole jets' four-vectors (:data:`FULL_JET_P4`) so that jet
        quantities still describe the whole jet; writers that cap what they store pass False (a
        file's jets are what it stores).
        """
        if n_max >= self.max_particles:
            return self
        sl = (slice(None), slice(0, n_max))
        dropped = bool(self.mask[:, n_max:].any())
        return JetChunk(
            p4=self.p4[sl],
            mask=self.mask[sl],
            label=self.label,
            class_names=self.class_names,
            particles={k: v[sl] for k, v in self.particles.items()},
            jets=self.jets | {FULL_JET_P4: self.jet_p4()} if keep_jet_sums and dropped else dict(self.jets),
        )

    def jet_p4(self) -> np.ndarray:
        """(n, 4) float64 jet four-momentum: the sum of all its constituents (:data:`FULL_JET_P4`,
        if particles were dropped), else of its stored particles."""
        full = self.jets.get(FULL_JET_P4)
        return (
            np.asarray(full, dtype=np.float64) if full is not None else self.p4.sum(axis=1, dtype=np.float64)
        )

    def jet_kinematics(self) -> dict[str, np.ndarray]:
        """Jet pt, eta, phi, energy, mass (float64) from the stored particles."""
        return kinematics(self.jet_p4())

    @staticmethod
    def concat(chunks: list[JetChunk]) -> JetChunk:
        """Concatenate chunks, padding to the largest particle count; keeps fields all chunks share."""
        if not chunks:
            raise ValueError("nothing to concatenate")
        n_max = max(c.max_particles for c in chunks)
        names = chunks[0].class_names
        for c in chunks[1:]:
            if c.class_names != names:
                raise ValueError(f"class names differ: {names} vs {c.class_names}")
        labelled = all(c.label is not None for c in chunks)
        if any(FULL_JET_P4 in c.jets for c in chunks):  # keep whole-jet sums for every jet
            chunks = [c if FULL_JET_P4 in c.jets else c.with_jets({FULL_JET_P4: c.jet_p4()}) for c in chunks]
        pkeys = set.intersection(*(set(c.particles) for c in chunks))
        jkeys = set.intersection(*(set(c.jets) for c in chunks))

        def pad(a: np.ndarray) -> np.ndarray:
            if a.shape[1] == n_max:
                return a
            widths = [(0, 0), (0, n_max - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
            return np.pad(a, widths)

        return JetChunk(
            p4=np.concatenate([pad(c.p4) for c in chunks]),
            mask=np.concatenate([pad(c.mask) for c in chunks]),
            label=np.concatenate([c.label for c in chunks]) if labelled else None,
            class_names=names,
            particles={k: np.concatenate([pad(c.particles[k]) for c in chunks]) for k in sorted(pkeys)},
            jets={k: np.concatenate([c.jets[k] for c in chunks]) for k in sorted(jkeys)},
        )


def pt_eta_phi(p4: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-particle pT, pseudorapidity and azimuth from (..., 4) (px, py, pz, E); zero-safe."""
    px, py, pz = p4[..., 0], p4[..., 1], p4[..., 2]
    pt = np.hypot(px, py)
    safe = np.where(pt > 0, pt, 1.0)
    eta = np.where(pt > 0, np.arcsinh(pz / safe), 0.0)
    phi = np.arctan2(py, px)
    return pt, eta, phi


def kinematics(p4: np.ndarray) -> dict[str, np.ndarray]:
    """pt, eta, phi, energy, mass of (n, 4) four-vectors (px, py, pz, E); zero-pT safe."""
    px, py, pz, e = p4.T
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(np.where(pt > 0, pz / pt, 0.0))
    phi = np.arctan2(py, px)
    mass = np.sqrt(np.clip(e**2 - px**2 - py**2 - pz**2, 0.0, None))
    return {"pt": pt, "eta": eta, "phi": phi, "energy": e, "mass": mass}
