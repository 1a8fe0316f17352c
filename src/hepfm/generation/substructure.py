"""Jet substructure observables stored with generated jets (JetClass's ``jet_sdmass``, ``jet_tau1..4``).

Soft-drop mass: Cambridge/Aachen reclustering, beta = 0, z_cut = 0.1, R0 = 0.8 (the CMS/JetClass
choice). N-subjettiness: tau_N = sum_i pT_i min_k dR(i, axis_k) / (sum_i pT_i * R0) with exclusive-kT
axes (beta = 1), as in Thaler & Van Tilburg. Both are computed for all jets of a batch in one FastJet
call per observable (each jet is one "event" of the awkward array).
"""

from __future__ import annotations

import warnings

import numpy as np


def _wrap(dphi: np.ndarray) -> np.ndarray:
    return (dphi + np.pi) % (2 * np.pi) - np.pi


def substructure(p4: np.ndarray, mask: np.ndarray, radius: float = 0.8) -> dict[str, np.ndarray]:
    """Soft-drop mass and tau_1..tau_4 for a padded block of jets (FastJet's spurious warnings muted)."""
    with (
        warnings.catch_warnings()
    ):  # "dcut and exclusive jets for jet-finders other than kt..." (also for kt)
        warnings.simplefilter("ignore", UserWarning)
        return _substructure(p4, mask, radius)


def _substructure(p4: np.ndarray, mask: np.ndarray, radius: float) -> dict[str, np.ndarray]:
    """Soft-drop mass and tau_1..tau_4 for a padded block of jets.

    Shape:
        p4: (n, N, 4) px, py, pz, E; mask: (n, N). Returns (n,) float32 arrays.
    """
    import awkward as ak

    from hepfm.fastjet_quiet import quiet_fastjet

    fastjet = quiet_fastjet()

    n = len(p4)
    counts = mask.sum(1)
    flat = p4[mask].astype(np.float64)
    jets = ak.unflatten(
        ak.zip({"px": flat[:, 0], "py": flat[:, 1], "pz": flat[:, 2], "E": flat[:, 3]}), counts
    )
    out: dict[str, np.ndarray] = {}

    ca = fastjet.ClusterSequence(jets, fastjet.JetDefinition(fastjet.cambridge_algorithm, 10.0))
    groomed = ca.exclusive_jets_softdrop_grooming(njets=1, beta=0.0, symmetry_cut=0.1, R0=radius)
    gm = groomed.msoftdrop if "msoftdrop" in groomed.fields else None
    if gm is None:
        px, py, pz, e = (ak.to_numpy(groomed[k]) for k in ("px", "py", "pz", "E"))
        out["jet_sdmass"] = np.sqrt(np.clip(e**2 - px**2 - py**2 - pz**2, 0, None)).astype(np.float32)
    else:
        out["jet_sdmass"] = ak.to_numpy(gm).astype(np.float32)

    pt = np.hypot(p4[..., 0], p4[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.where(mask, np.arcsinh(p4[..., 2] / np.where(pt > 0, pt, 1)), 0.0)
    phi = np.arctan2(p4[..., 1], p4[..., 0])
    norm = (pt * mask).sum(1) * radius
    kt = fastjet.ClusterSequence(jets, fastjet.JetDefinition(fastjet.kt_algorithm, radius))
    for n_axes in range(1, 5):
        ok = counts >= n_axes  # FastJet throws for fewer constituents than requested subjets
        tau = np.zeros(n)
        if ok.any():
            sub = fastjet.ClusterSequence(jets[ok], fastjet.JetDefinition(fastjet.kt_algorithm, radius)) \
                if not ok.all() else kt
            axes = sub.exclusive_jets(n_jets=n_axes)
            apx, apy, apz = (ak.to_numpy(axes[k]).reshape(-1, n_axes) for k in ("px", "py", "pz"))
            apt = np.hypot(apx, apy)
            aeta = np.arcsinh(apz / np.maximum(apt, 1e-9))
            aphi = np.arctan2(apy, apx)
            d = np.hypot(
                eta[ok][:, :, None] - aeta[:, None, :], _wrap(phi[ok][:, :, None] - aphi[:, None, :])
            ).min(-1)
            tau[ok] = (pt[ok] * d * mask[ok]).sum(1) / np.maximum(norm[ok], 1e-9)
        out[f"jet_tau{n_axes}"] = tau.astype(np.float32)
    return out
