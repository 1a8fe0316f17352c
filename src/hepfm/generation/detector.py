"""Detector-like presets applied to visible final-state particles before jet clustering.

These are parametrised stand-ins, not Delphes: they make "another detector" for transfer studies
(pretrain on one preset, finetune on another, as in the MPM paper) and give realistic resolution
effects. Every number is documented in docs/generator.md. ``none`` is particle level.

Per preset:
  * charged particles (tracks) inside the tracker acceptance: pT resolution
    sigma/pT = a (+) b*pT, a pT threshold and a tracking efficiency; outside the acceptance,
    charged hadrons are measured by the calorimeters like neutral hadrons;
  * photons (and electrons outside the tracker): merged into ECAL cells, energy resolution
    sigma/E = s/sqrt(E) (+) c; neutral hadrons: merged into HCAL cells, likewise;
  * a calorimeter cell becomes one massless particle at the cell centre; cells and tracks below
    their thresholds are dropped.
Impact parameters (d0, dz) of tracks are always smeared with the preset's tracker resolution
sigma(d0) = d0_a (+) d0_b/pT, sigma(dz) = dz_a (+) dz_b/pT (mm, pT in GeV); neutrals get 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hepfm.registry import Registry


@dataclass(frozen=True)
class DetectorPreset:
    name: str
    smear: bool  # False = particle level (no smearing, no merging, no thresholds)
    tracker_eta: float = 2.5
    track_res_a: float = 0.0
    track_res_b: float = 0.0  # per GeV
    track_pt_min: float = 0.0
    track_eff: float = 1.0
    calo_eta: float = 5.0
    ecal_cell: float = 0.0  # cell size in eta and phi
    hcal_cell: float = 0.0
    ecal_stoch: float = 0.0
    ecal_const: float = 0.0
    hcal_stoch: float = 0.0
    hcal_const: float = 0.0
    ecal_e_min: float = 0.0
    hcal_e_min: float = 0.0
    # impact-parameter resolution, mm and mm*GeV
    d0_a: float = 0.010
    d0_b: float = 0.100
    dz_a: float = 0.020
    dz_b: float = 0.150

    def to_dict(self) -> dict:
        return asdict(self)


DETECTORS: Registry[DetectorPreset] = Registry("detector preset")
DETECTORS.add("none", DetectorPreset("none", smear=False))
# CMS-like: fine ECAL crystals, coarse HCAL towers, excellent tracking (particle-flow-like inputs).
DETECTORS.add(
    "cms",
    DetectorPreset(
        "cms", smear=True, tracker_eta=2.5, track_res_a=0.008, track_res_b=0.00015, track_pt_min=0.5,
        track_eff=0.95, calo_eta=3.0, ecal_cell=0.0174, hcal_cell=0.087, ecal_stoch=0.03,
        ecal_const=0.005, hcal_stoch=1.0, hcal_const=0.05, ecal_e_min=0.5, hcal_e_min=1.0,
        d0_a=0.010, d0_b=0.100, dz_a=0.020, dz_b=0.150,
    ),
)
# ATLAS-like: coarser ECAL, better HCAL, the Delphes-ATLAS-card-like resolutions of the Top Tagging set.
DETECTORS.add(
    "atlas",
    DetectorPreset(
        "atlas", smear=True, tracker_eta=2.5, track_res_a=0.013, track_res_b=0.00036, track_pt_min=1.0,
        track_eff=0.90, calo_eta=3.2, ecal_cell=0.025, hcal_cell=0.1, ecal_stoch=0.10, ecal_const=0.01,
        hcal_stoch=0.50, hcal_const=0.03, ecal_e_min=1.0, hcal_e_min=1.5,
        d0_a=0.012, d0_b=0.120, dz_a=0.030, dz_b=0.200,
    ),
)

# Particle records the detector sees: flat arrays over all events of a batch plus the event index.
# With a pileup overlay they also carry ``pileup`` (the pileup share of each particle's energy: 0 or 1,
# a fraction for calorimeter cells).
FIELDS = ("px", "py", "pz", "e", "pid", "charge", "d0", "dz", "event")


def impact_parameters(
    px: np.ndarray, py: np.ndarray, pz: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Transverse and longitudinal impact parameters (mm) of straight tracks from vertices (x, y, z).

    Relative to the origin (the hard vertex); the magnetic-field curvature over a few mm is negligible
    at these momenta.
    """
    pt = np.maximum(np.hypot(px, py), 1e-9)
    d0 = (x * py - y * px) / pt
    dz = z - (x * px + y * py) / pt * (pz / pt)
    return d0, dz


def _hypot(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    return np.sqrt(a * a + b * b)


def smear_impact_parameters(
    parts: dict[str, np.ndarray], det: DetectorPreset, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Add smeared ``d0val``/``dzval`` and their errors; zero for neutral particles."""
    pt = np.hypot(parts["px"], parts["py"])
    charged = parts["charge"] != 0
    inv_pt = 1.0 / np.maximum(pt, 1e-3)
    d0err = np.where(charged, _hypot(np.full_like(pt, det.d0_a), det.d0_b * inv_pt), 0.0)
    dzerr = np.where(charged, _hypot(np.full_like(pt, det.dz_a), det.dz_b * inv_pt), 0.0)
    d0 = np.where(charged, parts["d0"] + d0err * rng.standard_normal(pt.shape), 0.0)
    dz = np.where(charged, parts["dz"] + dzerr * rng.standard_normal(pt.shape), 0.0)
    out = dict(parts)
    out.update(d0val=d0, dzval=dz, d0err=d0err, dzerr=dzerr)
    return out


def apply_detector(
    parts: dict[str, np.ndarray], det: DetectorPreset, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Turn particle-level records into detector-level ones (tracks + calorimeter cells).

    Args:
        parts: flat arrays (keys :data:`FIELDS`) of visible final-state particles, sorted by event.
    Returns:
        The same keys plus d0val/d0err/dzval/dzerr, sorted by event.
    """
    if not det.smear:
        return smear_impact_parameters(parts, det, rng)
    pt = np.hypot(parts["px"], parts["py"])
    p = np.sqrt(pt**2 + parts["pz"] ** 2)
    eta = np.arcsinh(parts["pz"] / np.maximum(pt, 1e-9))
    phi = np.arctan2(parts["py"], parts["px"])
    charged = parts["charge"] != 0
    is_track = charged & (np.abs(eta) < det.tracker_eta)

    # -- tracks: momentum smearing, efficiency, threshold
    t = {k: v[is_track] for k, v in parts.items()}
    t_pt = pt[is_track]
    scale = 1.0 + _hypot(np.full_like(t_pt, det.track_res_a), det.track_res_b * t_pt) * rng.standard_normal(
        t_pt.shape
    )
    scale = np.clip(scale, 0.05, None)
    for k in ("px", "py", "pz"):
        t[k] = t[k] * scale
    t_p = p[is_track] * scale
    mass2 = np.clip(parts["e"][is_track] ** 2 - p[is_track] ** 2, 0.0, None)
    t["e"] = np.sqrt(t_p**2 + mass2)
    keep = (rng.random(t_pt.shape) < det.track_eff) & (t_pt * scale > det.track_pt_min)
    tracks = {k: v[keep] for k, v in t.items()}

    # -- calorimeter: everything else inside the calorimeter acceptance, merged into cells
    calo = ~is_track & (np.abs(eta) < det.calo_eta)
    em = calo & ((parts["pid"] == 22) | (np.abs(parts["pid"]) == 11))
    had = calo & ~em
    pileup = parts.get("pileup")
    cells = [
        _merge_cells(
            parts["event"][sel], eta[sel], phi[sel], parts["e"][sel], size, stoch, const, emin, pid, rng,
            None if pileup is None else pileup[sel],
        )
        for sel, size, stoch, const, emin, pid in (
            (em, det.ecal_cell, det.ecal_stoch, det.ecal_const, det.ecal_e_min, 22),
            (had, det.hcal_cell, det.hcal_stoch, det.hcal_const, det.hcal_e_min, 130),
        )
    ]
    keys = FIELDS if pileup is None else (*FIELDS, "pileup")
    merged = {k: np.concatenate([tracks[k]] + [c[k] for c in cells]) for k in keys}
    order = np.argsort(merged["event"], kind="stable")
    merged = {k: v[order] for k, v in merged.items()}
    return smear_impact_parameters(merged, det, rng)


def _merge_cells(
    event: np.ndarray,
    eta: np.ndarray,
    phi: np.ndarray,
    energy: np.ndarray,
    size: float,
    stoch: float,
    const: float,
    e_min: float,
    pid: int,
    rng: np.random.Generator,
    pileup: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Sum energies per (event, eta cell, phi cell); smear; one massless particle per cell centre.

    With ``pileup`` (per-deposit pileup share) the cells get their pileup energy fraction before smearing.
    """
    n_phi = int(np.floor(2 * np.pi / size))
    ieta = np.floor(eta / size).astype(np.int64)
    iphi = np.floor((phi + np.pi) / (2 * np.pi) * n_phi).astype(np.int64) % n_phi
    key = (event.astype(np.int64) * 100_000 + (ieta + 50_000)) * n_phi + iphi
    uniq, inverse = np.unique(key, return_inverse=True)
    e_cell = np.bincount(inverse, weights=energy, minlength=len(uniq))
    pu_cell = None
    if pileup is not None:
        pu_energy = np.bincount(inverse, weights=energy * pileup, minlength=len(uniq))
        pu_cell = pu_energy / np.maximum(e_cell, 1e-12)
    ev_cell = uniq // n_phi // 100_000
    ieta_cell = (uniq // n_phi) % 100_000 - 50_000
    iphi_cell = uniq % n_phi
    res = _hypot(stoch / np.sqrt(np.maximum(e_cell, 1e-6)), const)
    e_cell = e_cell * np.clip(1.0 + res * rng.standard_normal(e_cell.shape), 0.0, None)
    eta_c = (ieta_cell + 0.5) * size
    phi_c = (iphi_cell + 0.5) * (2 * np.pi / n_phi) - np.pi
    pt_c = e_cell / np.cosh(eta_c)
    keep = e_cell > e_min
    n = int(keep.sum())
    extra = {} if pu_cell is None else {"pileup": pu_cell[keep]}
    return extra | {
        "px": (pt_c * np.cos(phi_c))[keep],
        "py": (pt_c * np.sin(phi_c))[keep],
        "pz": (pt_c * np.sinh(eta_c))[keep],
        "e": e_cell[keep],
        "pid": np.full(n, pid, dtype=np.int64),
        "charge": np.zeros(n),
        "d0": np.zeros(n),
        "dz": np.zeros(n),
        "event": ev_cell[keep],
    }
