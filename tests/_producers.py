"""Jet files written the way their producers write them (not by hepfm's writers), for reader tests.

* :func:`write_nanoaod`: a CMS NanoAOD ``Events`` tree, one entry per event, with PF candidates and
  the jet-to-candidate index maps in the PFNano or the NanoAOD v15 names, as a TTree (collections
  as ``<Coll>_<field>`` branches with an ``n<Coll>`` counter, as CMSSW writes them) or an RNTuple
  (collections as records, ``<Coll>.<field>``).
* :func:`write_aspen`: an Aspen Open Jets HDF5 file (PFCands (n, 150, 11), jet_kinematics, ...).
* :func:`write_jetclass2`: a JetClass-II file (ROOT ``tree`` or Parquet) with its integer
  ``jet_label``, boolean PID flags and generator-level fields.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hepfm.data.jets import JetChunk, pt_eta_phi

SCHEMES = {"PFNano": ("PFCands", "PFCands", "pFCandsIdx"), "v15": ("PFCand", "PFCand", "pfCandIdx")}


def _particle_table(chunk: JetChunk) -> dict[str, np.ndarray]:
    """Per-particle columns of the real particles, jets one after another (pT-sorted as stored)."""
    m = chunk.mask
    p4 = chunk.p4[m].astype(np.float64)
    pt, eta, phi = pt_eta_phi(p4)
    mass = np.sqrt(np.maximum(p4[:, 3] ** 2 - (p4[:, :3] ** 2).sum(axis=1), 0.0))
    return {
        "pt": pt, "eta": eta, "phi": phi, "mass": mass,
        "charge": chunk.particles["charge"][m], "pdgId": chunk.particles["pid"][m],
        "d0": chunk.particles["d0val"][m] / 10, "d0Err": chunk.particles["d0err"][m] / 10,  # mm -> cm
        "dz": chunk.particles["dzval"][m] / 10, "dzErr": chunk.particles["dzerr"][m] / 10,
    }


def write_nanoaod(
    path: Path,
    chunk: JetChunk,
    *,
    scheme: str = "PFNano",
    container: str = "TTree",
    jets_per_event: int = 2,
    puppi_weight: float = 1.0,
    seed: int = 0,
    basket_events: int = 1000,
) -> dict[str, np.ndarray]:
    """Write ``chunk``'s jets as FatJets of events (``jets_per_event`` each, plus one FatJet without
    stored constituents per event), with an AK4 ``Jet`` per FatJet made of its leading half, and
    3 unassociated candidates per event; candidates are shuffled within each event. A TTree is
    written in baskets of ``basket_events`` events (CMSSW flushes every few thousand events).

    Returns what a reader must give back: ``fatjet_order`` (chunk index of each FatJet with
    constituents, in file order) and ``ak4_counts`` (constituents of each AK4 jet, in file order).
    """
    import awkward as ak
    import uproot

    rng = np.random.default_rng(seed)
    cands_name, map_suffix, cand_idx_name = SCHEMES[scheme]
    table = _particle_table(chunk)
    counts = chunk.n_particles
    first = np.concatenate([[0], np.cumsum(counts)])
    kin = chunk.jet_kinematics()
    n_events = int(np.ceil(len(chunk) / jets_per_event))
    ev_cands, ev_fat, ev_ak4, ev_fmap, ev_jmap = [], [], [], [], []
    ak4_counts = []
    for e in range(n_events):
        jets = list(range(e * jets_per_event, min((e + 1) * jets_per_event, len(chunk))))
        rows = np.concatenate([np.arange(first[j], first[j + 1]) for j in jets])
        owner = np.concatenate([np.full(counts[j], i) for i, j in enumerate(jets)])
        n_real = len(rows)
        extra = {k: rng.uniform(0.5, 2.0, 3) if k in ("pt",) else np.zeros(3) for k in table}
        extra["eta"], extra["phi"] = rng.uniform(-2, 2, 3), rng.uniform(-3, 3, 3)
        extra["pdgId"], extra["charge"] = np.full(3, 22), np.zeros(3)
        cols = {k: np.concatenate([table[k][rows], extra[k]]) for k in table}
        perm = rng.permutation(n_real + 3)  # candidate i of the event is cols[perm[i]]
        where = np.argsort(perm)  # where[r] = position of row r in the event's candidate list
        cand = {k: v[perm] for k, v in cols.items()}
        cand["puppiWeight"] = np.full(n_real + 3, puppi_weight)
        ev_cands.append(cand)
        ev_fmap.append({"jetIdx": owner.astype(np.int32), cand_idx_name: where[:n_real].astype(np.int32)})
        fat = {k: np.append(kin[k][jets], 250.0 if k == "pt" else 0.5) for k in ("pt", "eta", "phi", "mass")}
        fat["msoftdrop"] = 0.9 * fat["mass"]
        fat["particleNet_TvsQCD"] = rng.uniform(0, 1, len(jets) + 1)
        ev_fat.append(fat)
        j_owner, j_cand, k4 = [], [], []
        for i, j in enumerate(jets):
            half = max(1, counts[j] // 2)
            j_owner.append(np.full(half, i))
            j_cand.append(where[np.flatnonzero(owner == i)[:half]])
            k4.append(half)
        ak4_counts += k4
        ev_jmap.append({"jetIdx": np.concatenate(j_owner).astype(np.int32),
                        cand_idx_name: np.concatenate(j_cand).astype(np.int32)})
        ev_ak4.append({"pt": kin["pt"][jets] / 2, "eta": kin["eta"][jets], "phi": kin["phi"][jets],
                       "mass": kin["mass"][jets] / 3, "nConstituents": np.array(k4, np.int32)})

    def coll(events: list[dict]) -> ak.Array:
        keys = events[0].keys()
        return ak.zip({k: ak.Array([np.asarray(ev[k]).tolist() for ev in events]) for k in keys})

    def typed(arr: ak.Array, ints: tuple[str, ...]) -> ak.Array:
        return ak.zip({k: ak.values_astype(arr[k], np.int32 if k in ints else np.float32)
                       for k in arr.fields})

    data = {
        "run": np.full(n_events, 1, np.uint32),
        "luminosityBlock": np.full(n_events, 7, np.uint32),
        "event": np.arange(1, n_events + 1, dtype=np.uint64),
        "FatJet": typed(coll(ev_fat), ()),
        "Jet": typed(coll(ev_ak4), ("nConstituents",)),
        cands_name: typed(coll(ev_cands), ("charge", "pdgId")),
        f"FatJet{map_suffix}": typed(coll(ev_fmap), ("jetIdx", cand_idx_name)),
        f"Jet{map_suffix}": typed(coll(ev_jmap), ("jetIdx", cand_idx_name)),
    }
    with uproot.recreate(path) as f:
        if container == "TTree":
            f.mktree("Events", {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in data.items()})
            for a in range(0, n_events, basket_events):
                f["Events"].extend({k: v[a : a + basket_events] for k, v in data.items()})
        else:
            f.mkrntuple("Events", data)
    fatjet_order = np.arange(len(chunk))
    return {"fatjet_order": fatjet_order, "ak4_counts": np.array(ak4_counts)}


def write_aspen(path: Path, chunk: JetChunk, *, puppi_weight: np.ndarray | None = None,
                slots: int = 150) -> None:
    """Write ``chunk`` in the Aspen Open Jets layout (h5py, gzip, as H5_maker.py does)."""
    import h5py

    n = len(chunk)
    m = chunk.mask
    k = min(slots, chunk.max_particles)
    rows = np.zeros((n, slots, 11), np.float32)
    rows[:, :k, 0:4] = chunk.p4[:, :k]
    for c, name, scale in ((4, "d0val", 0.1), (5, "d0err", 0.1), (6, "dzval", 0.1), (7, "dzerr", 0.1),
                           (8, "charge", 1.0), (9, "pid", 1.0)):
        rows[:, :k, c] = chunk.particles[name][:, :k] * scale
    # tracks missing for neutrals: -1 as CMS stores it
    neutral = m[:, :k] & (chunk.particles["charge"][:, :k] == 0)
    rows[:, :k, 4:8][neutral] = -1.0
    rows[:, :k, 10] = m[:, :k] if puppi_weight is None else puppi_weight[:, :k] * m[:, :k]
    kin = chunk.jet_kinematics()
    with h5py.File(path, "w") as f:
        f.create_dataset("PFCands", data=rows, compression="gzip", chunks=(min(n, 100), slots, 11))
        f.create_dataset("jet_kinematics", data=np.stack([kin["pt"], kin["eta"], kin["phi"], kin["mass"]], 1)
                         .astype(np.float32), compression="gzip")
        tag = np.zeros((n, 13), np.float32)
        tag[:, 0] = chunk.n_particles
        tag[:, 9] = np.linspace(0, 1, n)  # PN_TvsQCD
        f.create_dataset("jet_tagging", data=tag, compression="gzip")
        f.create_dataset("event_info", data=np.stack([np.full(n, 278820), np.full(n, 5), np.arange(n)], 1)
                         .astype(np.int64), compression="gzip")


def write_jetclass2(path: Path, chunk: JetChunk, labels: np.ndarray, *, container: str = "root") -> None:
    """Write ``chunk`` in the JetClass-II layout (makeNtuples.C's branches; ``labels`` the 0..187
    ``jet_label``), to a ROOT ``tree`` or (``container="parquet"``) a Parquet file."""
    import awkward as ak

    m = chunk.mask
    counts = chunk.n_particles
    kin = chunk.jet_kinematics()

    def jag(a: np.ndarray, dtype) -> ak.Array:
        return ak.unflatten(np.asarray(a[m], dtype=dtype), counts)

    p = chunk.particles
    data = {
        "part_px": jag(chunk.p4[..., 0], np.float32), "part_py": jag(chunk.p4[..., 1], np.float32),
        "part_pz": jag(chunk.p4[..., 2], np.float32), "part_energy": jag(chunk.p4[..., 3], np.float32),
        "part_d0val": jag(p["d0val"], np.float32), "part_d0err": jag(p["d0err"], np.float32),
        "part_dzval": jag(p["dzval"], np.float32), "part_dzerr": jag(p["dzerr"], np.float32),
        "part_charge": jag(p["charge"], np.int32),
        **{f"part_{f}": jag(p[f], bool) for f in ("isElectron", "isMuon", "isPhoton", "isChargedHadron",
                                                   "isNeutralHadron")},
        "jet_pt": kin["pt"].astype(np.float32), "jet_eta": kin["eta"].astype(np.float32),
        "jet_phi": kin["phi"].astype(np.float32), "jet_energy": chunk.jet_p4()[:, 3].astype(np.float32),
        "jet_sdmass": (0.9 * kin["mass"]).astype(np.float32), "jet_nparticles": counts.astype(np.int32),
        "jet_label": labels.astype(np.int32),
        "genjet_pt": (1.02 * kin["pt"]).astype(np.float32), "genjet_nparticles": counts.astype(np.int32),
        "aux_genpart_mass": ak.Array([[125.0, 4.8]] * len(chunk)),
        "aux_genpart_isResX": ak.Array([[True, False]] * len(chunk)),
    }
    if container == "parquet":
        ak.to_parquet(ak.zip(data, depth_limit=1), path)
        return
    import uproot

    with uproot.recreate(path) as f:
        f.mktree("tree", {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in data.items()})
        f["tree"].extend(data)


def write_nanoaod_events(path: Path, n_events: int = 50, *, seed: int = 0, met: str = "PFMET",
                         btag: str = "btagUParTAK4B", taus: bool = False) -> dict[str, np.ndarray]:
    """Events of reconstructed objects with NanoAOD v15 names (``PFMET_*``, a UParT b-tag score,
    no ``Tau_*``/``Photon_*`` unless ``taus``), as CMSSW writes them (TTree, ``n<Coll>`` counters).

    Each event has one electron (pT 30-60, cutBased 4), one muon (pT 20) passing ``looseId`` in even
    events only, three
    jets (jetId 6; the first b-tagged with score 0.9, the others 0.01) and one more jet on top of the
    electron (to be cleaned away). Returns the electrons' and jets' kinematics for checks.
    """
    import awkward as ak
    import uproot

    rng = np.random.default_rng(seed)
    n = n_events
    e_pt, e_eta, e_phi = rng.uniform(30, 60, n), rng.uniform(-2, 2, n), rng.uniform(-3, 3, n)
    j_pt = np.stack([rng.uniform(40, 100, n), rng.uniform(30, 40, n), rng.uniform(26, 29, n), e_pt], 1)
    j_eta = np.stack([rng.uniform(-2, 2, n) for _ in range(3)] + [e_eta], 1)
    j_phi = np.stack([rng.uniform(-3, 3, n) for _ in range(3)] + [e_phi], 1)
    # keep the three real jets away from the electron (the fourth sits on it)
    near = np.abs(j_eta[:, :3] - e_eta[:, None]) < 0.5
    j_eta[:, :3] = np.where(near, -j_eta[:, :3] - 0.6 * np.sign(e_eta[:, None]), j_eta[:, :3])

    def one(v, dtype=np.float32):
        return ak.Array(np.asarray(v, dtype)[:, None].tolist())

    def coll(fields: dict) -> ak.Array:
        """A collection: float32 kinematics, the integer and bool branches as given."""
        typed = ("charge", "cutBased", "jetId", "looseId")
        return ak.zip({k: v if k in typed else ak.values_astype(v, np.float32) for k, v in fields.items()})

    data = {
        "run": np.full(n, 362000, np.uint32),
        "luminosityBlock": np.full(n, 3, np.uint32),
        "event": np.arange(n, dtype=np.uint64),
        "Electron": coll({"pt": one(e_pt), "eta": one(e_eta), "phi": one(e_phi), "mass": one(np.zeros(n)),
                          "charge": one(np.full(n, -1), np.int32), "cutBased": one(np.full(n, 4), np.uint8)}),
        "Muon": coll({"pt": one(np.full(n, 20.0)), "eta": one(np.zeros(n)), "phi": one(np.zeros(n)),
                      "mass": one(np.full(n, 0.105)), "charge": one(np.ones(n), np.int32),
                      "looseId": one(np.arange(n) % 2 == 0, bool)}),
        "Jet": coll({"pt": ak.Array(j_pt.tolist()), "eta": ak.Array(j_eta.tolist()),
                     "phi": ak.Array(j_phi.tolist()), "mass": ak.Array((j_pt * 0.1).tolist()),
                     "jetId": ak.values_astype(ak.Array(np.full((n, 4), 6).tolist()), np.uint8),
                     btag: ak.Array(np.tile([0.9, 0.01, 0.01, 0.01], (n, 1)).tolist())}),
        f"{met}_pt": rng.uniform(20, 80, n).astype(np.float32),
        f"{met}_phi": rng.uniform(-3, 3, n).astype(np.float32),
    }
    if taus:
        data["Tau"] = coll({"pt": one(np.full(n, 25.0)), "eta": one(np.full(n, 0.5)),
                            "phi": one(np.full(n, 2.5)), "mass": one(np.full(n, 1.2)),
                            "charge": one(np.ones(n), np.int32)})
    with uproot.recreate(path) as f:
        f.mktree("Events", {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in data.items()})
        f["Events"].extend(data)
    return {"e_pt": e_pt, "j_pt": j_pt, "met_pt": data[f"{met}_pt"]}
