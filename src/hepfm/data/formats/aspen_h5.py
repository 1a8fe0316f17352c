"""Aspen Open Jets (Amram et al., arXiv:2412.10504): ~180M AK8 jets of CMS 2016 open data, HDF5.

The layout, from the dataset's record (doi:10.25592/uhhfdm.16505) and its producer script (H5_maker.py of
OzAmram/AOJProcessing), one row per jet:

``PFCands`` (n, 150, 11) float32
    px, py, pz, E, d0, d0Err, dz, dzErr, charge, pdgId, puppiWeight; zero rows pad (``E > 0`` is a
    candidate). Momenta are *not* PUPPI-weighted; the producer sorts by unweighted pT after keeping
    150, so the dropped tail of a very long jet need not be its softest.
``jet_kinematics`` (n, 4) float32
    pt, eta, phi, msoftdrop (pT with CMS's energy corrections).
``jet_tagging`` (n, 13) float32
    nConstituents, tau1..tau4, ParticleNet's H4qvsQCD, HbbvsQCD, HccvsQCD, QCD, TvsQCD, WvsQCD,
    ZvsQCD, mass (the non-decorrelated NanoAOD scores).
``event_info`` (n, 3) int64
    run, lumiBlock, event.

The reader turns a row into a jet as the NanoAOD reader does (:mod:`~hepfm.data.formats.nanoaod`):
with ``puppi_weight`` (default, AK8 jets being PUPPI jets) four-momenta are scaled by the weight and
weight-0 candidates dropped, then the jet is re-sorted by (weighted) pT; ``pid`` from pdgId and the
JetClass PID flags from it; ``d0val, d0err, dzval, dzerr`` converted from cm (CMS's unit; the record
does not state it) to the JetClass files' mm and 0 for neutral candidates (no track: the file has
-1 there). Jet fields go to ``JetChunk.jets`` as ``jet_pt, jet_eta, jet_phi, jet_sdmass,
jet_nconstituents, jet_tau1..4, jet_PN_<score>, run, luminosityBlock, event``. Real data: unlabeled.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import h5py
import numpy as np

from hepfm.data.formats.base import ValidatingSource
from hepfm.data.formats.flat import pad_particles
from hepfm.data.formats.nanoaod import IMPACT_FIELDS, candidate_fields
from hepfm.data.jets import FULL_JET_P4, PID_FLAGS, JetChunk
from hepfm.data.validate import read_errors, select_fields
from hepfm.errors import HepfmInputError

CANDIDATES = "PFCands"
#: The columns of ``PFCands``, in order.
CANDIDATE_COLUMNS = ("px", "py", "pz", "E", "d0", "d0Err", "dz", "dzErr", "charge", "pdgId", "puppiWeight")
#: ``JetChunk.particles`` name -> ``PFCands`` column.
PARTICLE_COLUMNS = {"charge": "charge", "pid": "pdgId", "d0val": "d0", "d0err": "d0Err", "dzval": "dz",
                    "dzerr": "dzErr"}
#: dataset -> the ``JetChunk.jets`` names of its columns, in order.
JET_DATASETS = {
    "jet_kinematics": ("jet_pt", "jet_eta", "jet_phi", "jet_sdmass"),
    "jet_tagging": ("jet_nconstituents", "jet_tau1", "jet_tau2", "jet_tau3", "jet_tau4", "jet_PN_H4qvsQCD",
                    "jet_PN_HbbvsQCD", "jet_PN_HccvsQCD", "jet_PN_QCD", "jet_PN_TvsQCD", "jet_PN_WvsQCD",
                    "jet_PN_ZvsQCD", "jet_PN_mass"),
    "event_info": ("run", "luminosityBlock", "event"),
}


def is_aspen_file(f: h5py.File) -> bool:
    return isinstance(f.get(CANDIDATES), h5py.Dataset) and isinstance(f.get("jet_kinematics"), h5py.Dataset)


class AspenH5Source(ValidatingSource):
    """Reader of Aspen Open Jets HDF5 files (see the module docstring).

    Args:
        path: the file.
        max_particles: slots per jet (default 128; None = the longest jet in each chunk read).
        puppi_weight: scale candidates by their PUPPI weight, dropping weight-0 ones (default True).
        validate, skip_bad: see :class:`~hepfm.data.formats.base.ValidatingSource`.
    """

    format = "aspen-h5"

    def __init__(
        self,
        path: str | Path,
        *,
        max_particles: int | None = 128,
        puppi_weight: bool = True,
        validate: bool = True,
        skip_bad: bool = False,
    ) -> None:
        super().__init__(path, validate=validate, skip_bad=skip_bad)
        self.puppi_weight = puppi_weight
        with read_errors(self.path, "reading the Aspen Open Jets layout"):
            self._init_layout(max_particles)

    def _open(self) -> h5py.File:
        return h5py.File(self.path, "r")

    def _init_layout(self, max_particles: int | None) -> None:
        f = self._file()
        if not is_aspen_file(f):
            raise HepfmInputError(f"no {CANDIDATES} and jet_kinematics datasets (Aspen Open Jets)", self.path)
        ds = f[CANDIDATES]
        if ds.ndim != 3 or ds.shape[2] != len(CANDIDATE_COLUMNS):
            raise HepfmInputError(
                f"{CANDIDATES} has shape {ds.shape}; Aspen Open Jets stores (jets, 150, "
                f"{len(CANDIDATE_COLUMNS)}: {', '.join(CANDIDATE_COLUMNS)})",
                self.path,
            )
        self._n = int(ds.shape[0])
        self.file_max_particles = int(ds.shape[1])
        self.max_particles = max_particles
        self._jet_datasets = {}
        for name, keys in JET_DATASETS.items():
            d = f.get(name)
            if d is None:
                continue
            if not isinstance(d, h5py.Dataset) or d.ndim != 2 or d.shape != (self._n, len(keys)):
                raise HepfmInputError(
                    f"{name} has shape {getattr(d, 'shape', None)}, expected ({self._n}, {len(keys)})",
                    self.path,
                )
            self._jet_datasets[name] = keys
        self.particle_fields = (*PARTICLE_COLUMNS, *PID_FLAGS)
        self.detected = "Aspen Open Jets HDF5 (PFCands (n, 150, 11))" + (
            "; PUPPI-weighted" if self.puppi_weight else ""
        )
        self.field_map = {
            "p4": "PFCands[..., 0:4] (px, py, pz, E)" + (" x puppiWeight" if self.puppi_weight else ""),
            **{k: f"PFCands[..., {CANDIDATE_COLUMNS.index(c)}] ({c}" + (", cm -> mm)" if k in IMPACT_FIELDS
                                                                          else ")")
               for k, c in PARTICLE_COLUMNS.items()},
            "PID flags": "pdgId",
            **{name: ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
               for name, keys in self._jet_datasets.items()},
        }

    def _read(
        self, start: int, stop: int, fields: Collection[str] | None, jet_fields: Collection[str] | None
    ) -> JetChunk:
        want = set(select_fields(list(self.particle_fields), fields))
        with read_errors(self.path, f"reading jets {start}-{stop}"):
            f = self._file()
            rows = np.asarray(f[CANDIDATES][start:stop], dtype=np.float32)  # (n, 150, 11)
            jets: dict[str, np.ndarray] = {}
            for name, keys in self._jet_datasets.items():
                chosen = select_fields(list(keys), jet_fields)
                if chosen:
                    block = f[name][start:stop]
                    for k in chosen:
                        jets[k] = block[:, keys.index(k)]
        col = {c: i for i, c in enumerate(CANDIDATE_COLUMNS)}
        real = rows[:, :, col["E"]] > 0
        if self.puppi_weight:
            real &= rows[:, :, col["puppiWeight"]] > 0
        counts = real.sum(axis=1)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        cands = rows[real]  # (M, 11), jets in order
        p4 = cands[:, :4].astype(np.float64)
        if self.puppi_weight:
            p4 *= cands[:, col["puppiWeight"], None]
        raw = {k: cands[:, col[c]] for k, c in PARTICLE_COLUMNS.items()}
        raw["pid"] = np.rint(raw["pid"]).astype(np.int32)
        padded = pad_particles(offsets, [p4[:, 0], p4[:, 1], p4[:, 2], p4[:, 3]], candidate_fields(raw, want),
                               self.max_particles)
        if padded.full is not None:
            jets[FULL_JET_P4] = padded.full
        for k in ("run", "luminosityBlock", "event", "jet_nconstituents"):
            if k in jets:
                jets[k] = jets[k].astype(np.int64)
        return JetChunk(p4=padded.p4, mask=padded.mask, particles=padded.particles, jets=jets)

