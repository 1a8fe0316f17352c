"""Test helpers: realistic-looking random JetChunks and hand-computable jets.

Import from tests as ``from _factories import random_chunk, ...`` (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

import numpy as np

from hepfm.data.jets import JETCLASS_CLASSES, TOPTAG_CLASSES, JetChunk

PION_MASS = 0.13957


def random_chunk(
    n: int = 64,
    max_particles: int = 40,
    *,
    class_names: tuple[str, ...] | None = TOPTAG_CLASSES,
    seed: int = 0,
    particle_fields: bool = False,
    mean_particles: float = 25.0,
    min_particles: int = 2,
    jet_pt: tuple[float, float] = (550.0, 650.0),
) -> JetChunk:
    """``n`` jets of ``max_particles`` slots, pT-sorted and zero-padded.

    Jets have pT in ``jet_pt`` and |eta| < 2; particles share the jet pT by a Dirichlet draw and sit
    within about 0.3 in (eta, phi) of the axis, so jets have masses of tens of GeV. Charged
    particles get the pion mass, neutral ones are massless. ``class_names=None`` gives unlabeled
    jets. ``particle_fields`` adds JetClass-like per-particle fields (charge, PID flags, impact
    parameters, pid).
    """
    rng = np.random.default_rng(seed)
    nmax = max_particles
    counts = np.clip(rng.poisson(mean_particles, size=n), min_particles, nmax)
    p4 = np.zeros((n, nmax, 4), dtype=np.float64)
    mask = np.arange(nmax)[None, :] < counts[:, None]
    charge = np.zeros((n, nmax))
    for i, k in enumerate(counts):
        pt_j = rng.uniform(*jet_pt)
        eta_j = rng.uniform(-2.0, 2.0)
        phi_j = rng.uniform(-np.pi, np.pi)
        z = np.sort(rng.dirichlet(np.full(k, 0.7)))[::-1]
        pt = z * pt_j
        eta = eta_j + rng.normal(0, 0.15, k)
        phi = phi_j + rng.normal(0, 0.15, k)
        q = rng.choice([-1.0, 0.0, 1.0], size=k, p=[0.3, 0.4, 0.3])
        m = np.where(q != 0, PION_MASS, 0.0)
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        e = np.sqrt(px**2 + py**2 + pz**2 + m**2)
        p4[i, :k] = np.stack([px, py, pz, e], axis=1)
        charge[i, :k] = q
    chunk = JetChunk(
        p4=p4.astype(np.float32),
        mask=mask,
        label=None if class_names is None else rng.integers(0, len(class_names), n).astype(np.int64),
        class_names=() if class_names is None else tuple(class_names),
    )
    if particle_fields:
        neutral = charge == 0
        photon = neutral & (rng.random((n, nmax)) < 0.5)
        chunk.particles = {
            "charge": (charge * mask).astype(np.float32),
            "isChargedHadron": ((charge != 0) & mask).astype(np.float32),
            "isNeutralHadron": (neutral & ~photon & mask).astype(np.float32),
            "isPhoton": (photon & mask).astype(np.float32),
            "isElectron": np.zeros((n, nmax), np.float32),
            "isMuon": np.zeros((n, nmax), np.float32),
            "d0val": (rng.normal(0, 0.05, (n, nmax)) * (charge != 0) * mask).astype(np.float32),
            "d0err": (rng.uniform(0.01, 0.1, (n, nmax)) * (charge != 0) * mask).astype(np.float32),
            "dzval": (rng.normal(0, 0.05, (n, nmax)) * (charge != 0) * mask).astype(np.float32),
            "dzerr": (rng.uniform(0.01, 0.1, (n, nmax)) * (charge != 0) * mask).astype(np.float32),
            "pid": np.where(mask, np.where(charge != 0, 211 * charge, np.where(photon, 22, 130)), 0).astype(
                np.int32
            ),
        }
    return chunk


def jetclass_chunk(n: int = 50, max_particles: int = 40, seed: int = 1, **kw) -> JetChunk:
    """A labeled JetClass-like chunk with all per-particle fields."""
    return random_chunk(n, max_particles, class_names=JETCLASS_CLASSES, seed=seed, particle_fields=True, **kw)


def two_particle_jet(mass: float, pt1: float = 300.0, pt2: float = 200.0, eta: float = 0.3) -> np.ndarray:
    """(2, 4) (px, py, pz, E) of two massless particles with invariant mass ``mass``.

    Both at pseudorapidity ``eta``, separated by dphi with m^2 = 2 pt1 pt2 (1 - cos dphi).
    """
    cos_dphi = 1.0 - mass**2 / (2.0 * pt1 * pt2)
    dphi = np.arccos(cos_dphi)
    out = []
    for pt, phi in ((pt1, 0.0), (pt2, dphi)):
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        out.append([px, py, pz, np.sqrt(px**2 + py**2 + pz**2)])
    return np.array(out)


def chunk_from_jets(
    jets: list[np.ndarray],
    max_particles: int,
    labels: list[int] | None = None,
    class_names: tuple[str, ...] = TOPTAG_CLASSES,
) -> JetChunk:
    """A chunk from a list of (k_i, 4) particle arrays (given in pT order), zero-padded."""
    n = len(jets)
    p4 = np.zeros((n, max_particles, 4), np.float32)
    mask = np.zeros((n, max_particles), bool)
    for i, j in enumerate(jets):
        p4[i, : len(j)] = j
        mask[i, : len(j)] = True
    return JetChunk(
        p4=p4,
        mask=mask,
        label=None if labels is None else np.asarray(labels, np.int64),
        class_names=class_names if labels is not None else (),
    )


def official_jetclass_columns(chunk: JetChunk, label_types: bool = True) -> dict:
    """The JetClass columns of ``chunk`` as separate jagged particle arrays and per-jet arrays, as the
    official files hold them (with ``label_types``: float, bool and int32 labels, as in the official
    example file; else all float32)."""
    import awkward as ak

    m = chunk.mask
    npart = m.sum(1)
    data: dict = {}
    for c, b in enumerate(("part_px", "part_py", "part_pz", "part_energy")):
        data[b] = ak.unflatten(chunk.p4[..., c][m], npart)
    for k, v in chunk.particles.items():
        if k == "pid":
            continue
        dtype = np.int32 if k.startswith("is") else np.float32
        data[f"part_{k}"] = ak.unflatten(v[m].astype(dtype), npart)
    assert chunk.label is not None
    for i, cls in enumerate(JETCLASS_CLASSES):
        dtype = np.float32
        if label_types and i > 0:
            dtype = np.bool_ if i < 6 else np.int32
        data[f"label_{cls}"] = (chunk.label == i).astype(dtype)
    data["jet_pt"] = np.linspace(500, 1000, len(chunk)).astype(np.float32)
    data["jet_sdmass"] = np.linspace(10, 200, len(chunk)).astype(np.float32)
    data["jet_nparticles"] = npart.astype(np.float32)
    return data
