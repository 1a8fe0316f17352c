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
    "object_type",  # events read as sets of objects: index into OBJECT_TYPES
    "btag",  # ... and a jet object's b-tag score
)
#: Per-particle fields stored as integers (the rest are float32).
INT_FIELDS = ("pid", "object_type")
PID_FLAGS = ("isChargedHadron", "isNeutralHadron", "isPhoton", "isElectron", "isMuon")

#: The ten JetClass classes, in the order of the ``label_*`` branches of the official files.
JETCLASS_CLASSES = ("QCD", "Hbb", "Hcc", "Hgg", "H4q", "Hqql", "Zqq", "Wqq", "Tbqq", "Tbl")
TOPTAG_CLASSES = ("QCD", "Top")
#: The object types of an event read as a set of reconstructed objects (``JetChunk.particles
#: ["object_type"]`` indexes this): the seed's leptons, hadronic taus, b-jets, light jets, missing pT,
#: and photons where kept.
OBJECT_TYPES = ("electron", "muon", "tau", "bjet", "jet", "met", "photon")
#: JetClass-II's 188 classes, indexed by its integer ``jet_label`` (the class list of the dataset's
#: own notebook, jet-universe/sophon ``notebooks/Interacting_with_JetClassII_and_Sophon.ipynb``, without
#: the ``label_`` prefix): 0-14 two-prong resonances X -> ab, 15-160 X -> YY -> (3-4 prongs,
#: leptons, taus), 161-187 QCD jets by the heavy-flavour partons they hold.
JETCLASS2_CLASSES = (
    "X_bb", "X_cc", "X_ss", "X_qq", "X_bc", "X_cs", "X_bq", "X_cq", "X_sq", "X_gg", "X_ee", "X_mm",
    "X_tauhtaue", "X_tauhtaum", "X_tauhtauh", "X_YY_bbbb", "X_YY_bbcc", "X_YY_bbss", "X_YY_bbqq",
    "X_YY_bbgg", "X_YY_bbee", "X_YY_bbmm", "X_YY_bbtauhtaue", "X_YY_bbtauhtaum", "X_YY_bbtauhtauh",
    "X_YY_bbb", "X_YY_bbc", "X_YY_bbs", "X_YY_bbq", "X_YY_bbg", "X_YY_bbe", "X_YY_bbm", "X_YY_cccc",
    "X_YY_ccss", "X_YY_ccqq", "X_YY_ccgg", "X_YY_ccee", "X_YY_ccmm", "X_YY_cctauhtaue", "X_YY_cctauhtaum",
    "X_YY_cctauhtauh", "X_YY_ccb", "X_YY_ccc", "X_YY_ccs", "X_YY_ccq", "X_YY_ccg", "X_YY_cce", "X_YY_ccm",
    "X_YY_ssss", "X_YY_ssqq", "X_YY_ssgg", "X_YY_ssee", "X_YY_ssmm", "X_YY_sstauhtaue", "X_YY_sstauhtaum",
    "X_YY_sstauhtauh", "X_YY_ssb", "X_YY_ssc", "X_YY_sss", "X_YY_ssq", "X_YY_ssg", "X_YY_sse", "X_YY_ssm",
    "X_YY_qqqq", "X_YY_qqgg", "X_YY_qqee", "X_YY_qqmm", "X_YY_qqtauhtaue", "X_YY_qqtauhtaum",
    "X_YY_qqtauhtauh", "X_YY_qqb", "X_YY_qqc", "X_YY_qqs", "X_YY_qqq", "X_YY_qqg", "X_YY_qqe", "X_YY_qqm",
    "X_YY_gggg", "X_YY_ggee", "X_YY_ggmm", "X_YY_ggtauhtaue", "X_YY_ggtauhtaum", "X_YY_ggtauhtauh",
    "X_YY_ggb", "X_YY_ggc", "X_YY_ggs", "X_YY_ggq", "X_YY_ggg", "X_YY_gge", "X_YY_ggm", "X_YY_bee",
    "X_YY_cee", "X_YY_see", "X_YY_qee", "X_YY_gee", "X_YY_bmm", "X_YY_cmm", "X_YY_smm", "X_YY_qmm",
    "X_YY_gmm", "X_YY_btauhtaue", "X_YY_ctauhtaue", "X_YY_stauhtaue", "X_YY_qtauhtaue", "X_YY_gtauhtaue",
    "X_YY_btauhtaum", "X_YY_ctauhtaum", "X_YY_stauhtaum", "X_YY_qtauhtaum", "X_YY_gtauhtaum",
    "X_YY_btauhtauh", "X_YY_ctauhtauh", "X_YY_stauhtauh", "X_YY_qtauhtauh", "X_YY_gtauhtauh", "X_YY_qqqb",
    "X_YY_qqqc", "X_YY_qqqs", "X_YY_bbcq", "X_YY_ccbs", "X_YY_ccbq", "X_YY_ccsq", "X_YY_sscq", "X_YY_qqbc",
    "X_YY_qqbs", "X_YY_qqcs", "X_YY_bcsq", "X_YY_bcs", "X_YY_bcq", "X_YY_bsq", "X_YY_csq", "X_YY_bcev",
    "X_YY_csev", "X_YY_bqev", "X_YY_cqev", "X_YY_sqev", "X_YY_qqev", "X_YY_bcmv", "X_YY_csmv", "X_YY_bqmv",
    "X_YY_cqmv", "X_YY_sqmv", "X_YY_qqmv", "X_YY_bctauev", "X_YY_cstauev", "X_YY_bqtauev", "X_YY_cqtauev",
    "X_YY_sqtauev", "X_YY_qqtauev", "X_YY_bctaumv", "X_YY_cstaumv", "X_YY_bqtaumv", "X_YY_cqtaumv",
    "X_YY_sqtaumv", "X_YY_qqtaumv", "X_YY_bctauhv", "X_YY_cstauhv", "X_YY_bqtauhv", "X_YY_cqtauhv",
    "X_YY_sqtauhv", "X_YY_qqtauhv", "QCD_bbccss", "QCD_bbccs", "QCD_bbcc", "QCD_bbcss", "QCD_bbcs",
    "QCD_bbc", "QCD_bbss", "QCD_bbs", "QCD_bb", "QCD_bccss", "QCD_bccs", "QCD_bcc", "QCD_bcss", "QCD_bcs",
    "QCD_bc", "QCD_bss", "QCD_bs", "QCD_b", "QCD_ccss", "QCD_ccs", "QCD_cc", "QCD_css", "QCD_cs", "QCD_c",
    "QCD_ss", "QCD_s", "QCD_light",
)

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


def pid_flags(pid: np.ndarray, charge: np.ndarray) -> dict[str, np.ndarray]:
    """JetClass's five particle-ID flags (bool) from PDG ids and charges.

    Electrons and muons are not hadrons; CMS particle flow's forward-calorimeter candidates count as
    their kind (pdgId 1: a hadron, neutral; pdgId 2: electromagnetic, flagged as a photon).
    """
    apid = np.abs(pid)
    electron = apid == 11
    muon = apid == 13
    photon = (apid == 22) | (apid == 2)
    lepton = electron | muon
    return {
        "isChargedHadron": (charge != 0) & ~lepton,
        "isNeutralHadron": (charge == 0) & ~photon & ~lepton,
        "isPhoton": photon,
        "isElectron": electron,
        "isMuon": muon,
    }


def pt_eta_phi(p4: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-particle pT, pseudorapidity and azimuth from (..., 4) (px, py, pz, E); zero-safe."""
    px, py, pz = p4[..., 0], p4[..., 1], p4[..., 2]
    pt = np.hypot(px, py)
    safe = np.where(pt > 0, pt, 1.0)
    eta = np.where(pt > 0, np.arcsinh(pz / safe), 0.0)
    phi = np.arctan2(py, px)
    return pt, eta, phi


def from_pt_eta_phi_m(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray,
                      mass: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(px, py, pz, E) from pT, pseudorapidity, azimuth and mass (how CMS files store objects)."""
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return px, py, pz, np.sqrt(px * px + py * py + pz * pz + mass * mass)


def kinematics(p4: np.ndarray) -> dict[str, np.ndarray]:
    """pt, eta, phi, energy, mass of (n, 4) four-vectors (px, py, pz, E); zero-pT safe."""
    px, py, pz, e = p4.T
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(np.where(pt > 0, pz / pt, 0.0))
    phi = np.arctan2(py, px)
    mass = np.sqrt(np.clip(e**2 - px**2 - py**2 - pz**2, 0.0, None))
    return {"pt": pt, "eta": eta, "phi": phi, "energy": e, "mass": mass}
