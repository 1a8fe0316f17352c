"""Truth matching on the Pythia event record (numpy arrays of one event).

A signal jet must contain the resonance and *all* its visible decay partons (quarks, gluons,
charged leptons, taken before final-state radiation) within the jet radius, as in the Top
Tagging and JetClass definitions. Decays are followed through intermediate t/W/Z/H.
"""

from __future__ import annotations

import numpy as np

RESONANCE_IDS = (6, 23, 24, 25)
INVISIBLE_IDS = (12, 14, 16)
LEPTON_IDS = (11, 13, 15)


def daughters(d1: int, d2: int) -> range:
    if d1 <= 0:
        return range(0)
    if d2 < d1:
        return range(d1, d1 + 1)
    return range(d1, d2 + 1)


def bottom_copy(i: int, pid: np.ndarray, dau1: np.ndarray, dau2: np.ndarray) -> int:
    """Follow a particle through its recoil/shower copies to the last one (Pythia's iBotCopyId)."""
    while True:
        nxt = next((j for j in daughters(dau1[i], dau2[i]) if pid[j] == pid[i]), None)
        if nxt is None:
            return i
        i = nxt


def visible_decay_partons(
    i: int, pid: np.ndarray, dau1: np.ndarray, dau2: np.ndarray
) -> list[int]:
    """Indices of the visible decay products of resonance ``i``, descending through resonances."""
    out: list[int] = []
    last = bottom_copy(i, pid, dau1, dau2)
    for j in daughters(dau1[last], dau2[last]):
        aid = abs(int(pid[j]))
        if aid in RESONANCE_IDS:
            out.extend(visible_decay_partons(j, pid, dau1, dau2))
        elif aid not in INVISIBLE_IDS:
            out.append(j)
    return out


def delta_r(eta1: float, phi1: float, eta2: np.ndarray, phi2: np.ndarray) -> np.ndarray:
    dphi = (phi2 - phi1 + np.pi) % (2 * np.pi) - np.pi
    return np.hypot(eta2 - eta1, dphi)


def match_resonance(
    record: dict[str, np.ndarray],
    jet_eta: float,
    jet_phi: float,
    *,
    resonances: tuple[int, ...],
    n_visible: int,
    need_lepton: bool,
    radius: float,
) -> int | None:
    """Index of a hard-process resonance fully contained in the jet, or None.

    Args:
        record: one event's ``id``, ``status``, ``daughter1``, ``daughter2``, ``px``..``e`` arrays.
    """
    pid, status = record["id"], record["status"]
    dau1, dau2 = record["daughter1"], record["daughter2"]
    pt = np.hypot(record["px"], record["py"])
    eta = np.arcsinh(record["pz"] / np.maximum(pt, 1e-9))
    phi = np.arctan2(record["py"], record["px"])
    candidates = np.flatnonzero(np.isin(np.abs(pid), resonances) & (np.abs(status) == 22))
    for i in candidates:
        last = bottom_copy(int(i), pid, dau1, dau2)
        partons = visible_decay_partons(int(i), pid, dau1, dau2)
        if len(partons) != n_visible:
            continue
        if need_lepton and not any(abs(int(pid[j])) in LEPTON_IDS for j in partons):
            continue
        idx = np.array([last, *partons])
        if np.all(delta_r(jet_eta, jet_phi, eta[idx], phi[idx]) < radius):
            return last
    return None
