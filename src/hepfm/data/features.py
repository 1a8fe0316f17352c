"""Named per-particle feature sets (ParT's ``kin`` / ``kinpid`` / ``full`` and JetCLR's inputs).

A :class:`FeatureSet` turns a :class:`~hepfm.data.jets.JetChunk` into the ``x`` of a
:class:`~hepfm.contracts.ParticleBatch`: an (n, N, F) float32 array, zero at padded slots. The
definitions and the standardisation follow the official Particle Transformer data configs
(``jet-universe/particle_transformer``: ``data/JetClass/JetClass_{kin,kinpid,full}.yaml`` and
``data/TopLandscape/top_kin.yaml``; Qu, Li, Qian, arXiv:2202.03772):

* a standardised feature is ``clip((q - center) * scale, clip_min, clip_max)``, with weaver's default
  clip range ±5; a feature with ``center=None`` is passed through unchanged (weaver's ``null``);
* ``part_d0err`` / ``part_dzerr`` use ``center=0, scale=1`` and the clip range [0, 1];
* the jet axis, jet pT and jet energy are those of the four-vector sum of *all* the jet's
  constituents (:meth:`JetChunk.jet_p4`), also when a particle cap drops the softest ones (the
  readers record the whole-jet sum, :data:`~hepfm.data.jets.FULL_JET_P4`), as ParT's configs use
  the clustered jet's ``jet_pt``/``jet_eta``/``jet_phi``/``jet_energy``; the official JetClass
  files store that clustered jet, which contains the same constituents, so the difference is
  float rounding;
* Δφ is wrapped to [-π, π); Δη uses pseudorapidity (the pair features use rapidity, see
  :mod:`hepfm.physics.pairwise`).

Δη sign convention: ParT's inputs use Δη = (η - η_jet) · sign(η_jet), so that the jet's forward
side is always positive. This is verified for Top Tagging (ParT's conversion script
``utils/convert_top_datasets.py`` multiplies by the sign of η_jet) and is the CMS "etarel"
convention of the ParticleNet-era ntuples from which JetClass's stored ``part_deta`` comes (the
hepfm JetClass writer follows it too). ``kin``/``kinpid``/``full`` therefore have
``flip_eta=True``; ``FeatureSet.replace(flip_eta=False)`` gives the plain difference. ΔR and
every other feature are unaffected by the sign.

The ``objects`` set is for events read as sets of reconstructed objects (Kishimoto's event-level
model, whose inputs are each object's four-vector and charge; the object type is an input too, as
the model must know the other objects' types to predict a hidden one's): log pT and log E
standardised around 33 GeV and 55 GeV (``center`` 3.5 and 4.0, ``scale`` 1: objects of 10 GeV to
1 TeV map to about -1.2 ... 3.4), raw η and φ (absolute directions: an event has no axis to be
relative to, and the Lorentz augmentations rotate and flip them), the charge, and the one-hot
:data:`~hepfm.data.jets.OBJECT_TYPES`.

The ``jetclr`` set follows Zhao, Mokhtar, Kansal, Li, Duarte, "Large-Scale Pretraining and
Finetuning for Efficient Jet Classification in Particle Physics" (JetCLR at JetClass scale),
arXiv:2408.09343 (Sec. 2.2, Table 1) and its code (``JavierZhao/JetCLR``, ``make_dataset.py`` and
``run_jetclr_multigpu.py``): six features, raw η and raw φ instead of Δη and Δφ (because JetCLR's
translation augmentation shifts every particle in η-φ, and relative coordinates would be invariant
to it), then log pT, log E, log(pT/pT_jet), log(E/E_jet), in that order. Choices made here:

* the four log features get ParT's standardisation, the constants that the paper's data converter
  bakes into its shards; η and φ stay raw, as there (their augmentation code recomputes the logs
  unstandardised; the constants are serialised, so ``from_dict`` can switch them off);
* pT_jet is the pT of the constituents' four-vector sum, as in ``kin`` (their augmentation code
  divides by the scalar sum of constituent pT instead; the two differ by the jet's pT spread);
* ΔR is not included (their shards store it, their training inputs do not).

Everything is vectorised numpy: the per-particle work runs once over the flat array of real
particles (``p4[mask]``), in blocks of :data:`BLOCK_JETS` jets (cache-sized, no per-jet loop), and
is scattered back into the padded layout, so padding costs nothing but the zero fill. The loaders
use :meth:`FeatureSet.compute_ragged` and never build the padded chunk at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hepfm.data.jets import FULL_JET_P4, OBJECT_TYPES, PID_FLAGS, JetChunk, kinematics
from hepfm.errors import HepfmInputError
from hepfm.registry import Registry

#: Order of the jet-level vector that goes into ``ParticleBatch.jet``.
JET_FEATURES = ("pt", "eta", "phi", "energy", "mass")

#: Jets per block in the feature computation (temporaries of a block fit in a core's cache).
BLOCK_JETS = 2048

_TINY = np.float32(np.finfo(np.float32).tiny)  # log floor: log(0) -> -87, clipped like ParT's -inf


class _Particles:
    """Lazily computed per-particle quantities over the flat array of real particles.

    Shape: every cached array is (M,) float32 with M = number of real particles in the chunk, in
    the row-major order of ``chunk.mask`` (jet by jet, slot by slot).
    """

    def __init__(self, chunk: JetChunk, flip_eta: bool, out: np.ndarray | None = None) -> None:
        self.chunk = chunk
        self.flip_eta = flip_eta
        self.counts = chunk.mask.sum(axis=1)
        self.flat_index = np.flatnonzero(chunk.mask)
        p4 = np.ascontiguousarray(chunk.p4, dtype=np.float32).reshape(-1, 4)
        # (M, 4) real four-vectors (into ``out`` if given); np.take is ~8x faster than p4[mask]
        p = np.take(p4, self.flat_index, axis=0, out=out)
        self.p = p
        self.px, self.py, self.pz, self.e = np.ascontiguousarray(p.T)  # 4 contiguous (M,) columns
        self._cache: dict[str, np.ndarray] = {}
        self._jet: dict[str, np.ndarray] | None = None

    def jet_kinematics(self) -> dict[str, np.ndarray]:
        """Same as :meth:`JetChunk.jet_kinematics` (float64 sums of the real particles, or of all
        constituents if some were dropped), from the flat particles with one ``reduceat``."""
        if self._jet is None:
            full = self.chunk.jets.get(FULL_JET_P4)  # particles were dropped: the whole jet's axis
            self._jet = kinematics(np.asarray(full, np.float64)) if full is not None else \
                flat_jet_kinematics(self.p, self.counts)
        return self._jet

    def jet(self, key: str) -> np.ndarray:
        """A jet-level quantity broadcast to the particles, float32 (M,)."""
        name = "jet_" + key
        if name not in self._cache:
            jk = self.jet_kinematics()
            with np.errstate(divide="ignore"):
                per_jet = {
                    "log_pt": lambda: np.log(np.maximum(jk["pt"], float(_TINY))),
                    "log_e": lambda: np.log(np.maximum(jk["energy"], float(_TINY))),
                    "cos_phi": lambda: np.cos(jk["phi"]),
                    "sin_phi": lambda: np.sin(jk["phi"]),
                }.get(key, lambda: jk[key])()
            self._cache[name] = np.repeat(per_jet.astype(np.float32), self.counts)
        return self._cache[name]

    def get(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = _QUANTITIES[name][1](self)
        return self._cache[name]

    def field(self, name: str) -> np.ndarray:
        values = np.ascontiguousarray(self.chunk.particles[name], dtype=np.float32).reshape(-1)
        return np.take(values, self.flat_index)


def flat_jet_kinematics(p: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Jet pt, eta, phi, energy, mass (float64) from flat particles grouped by jet.

    Shape: ``p`` (M, 4) (px, py, pz, E) jet by jet; ``counts`` (n,) particles per jet (sum M).
    """
    n = len(counts)
    sums = np.zeros((n, 4), dtype=np.float64)
    nonempty = counts > 0
    if nonempty.any():
        starts = np.cumsum(counts) - counts
        sums[nonempty] = np.add.reduceat(p, starts[nonempty], axis=0, dtype=np.float64)
    return kinematics(sums)


_PI = np.float32(np.pi)


def _atan2(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """atan2 in [-π, π), float32.

    arctan(y/x) is right wherever x > 0 and twice as fast as np.arctan2, so np.arctan2 runs only on
    the (for Δφ, rare) particles with x <= 0.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.arctan(y / x)
    rest = np.flatnonzero(x <= 0)
    if rest.size:
        b = np.arctan2(y[rest], x[rest])
        a[rest] = np.where(b >= _PI, b - 2 * _PI, b)
    return a


def _pt(p: _Particles) -> np.ndarray:
    return np.sqrt(p.px * p.px + p.py * p.py)


def _eta(p: _Particles) -> np.ndarray:
    # sign(pz) * ln((|p| + |pz|) / pT) = arcsinh(pz / pT), 4x faster and as accurate in float32
    pt = p.get("pt")
    apz = np.abs(p.pz)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.copysign(np.log((np.sqrt(pt * pt + p.pz * p.pz) + apz) / pt), p.pz)
    return np.where(pt > 0, eta, np.float32(0))


def _deta(p: _Particles) -> np.ndarray:
    d = p.get("eta") - p.jet("eta")
    if p.flip_eta:
        d = d * np.where(p.jet("eta") < 0, np.float32(-1), np.float32(1))
    return d


def _dphi(p: _Particles) -> np.ndarray:
    # the angle from the jet's transverse direction to the particle's: one atan2, no wrapping needed
    c, s = p.jet("cos_phi"), p.jet("sin_phi")
    return _atan2(p.py * c - p.px * s, p.px * c + p.py * s)


def _log(x: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(x, _TINY))


#: name -> (required JetChunk.particles fields, function of the particle context)
_QUANTITIES: dict[str, tuple[tuple[str, ...], Callable[[_Particles], np.ndarray]]] = {
    "pt": ((), _pt),
    "energy": ((), lambda p: p.e),
    "eta": ((), _eta),
    "phi": ((), lambda p: _atan2(p.py, p.px)),
    "pt_log": ((), lambda p: _log(p.get("pt"))),
    "e_log": ((), lambda p: _log(p.e)),
    "logptrel": ((), lambda p: p.get("pt_log") - p.jet("log_pt")),
    "logerel": ((), lambda p: p.get("e_log") - p.jet("log_e")),
    "deta": ((), _deta),
    "dphi": ((), _dphi),
    "deltaR": ((), lambda p: np.sqrt(np.square(p.get("deta")) + np.square(p.get("dphi")))),
    "charge": (("charge",), lambda p: p.field("charge")),
    "d0": (("d0val",), lambda p: np.tanh(p.field("d0val"))),
    "d0err": (("d0err",), lambda p: p.field("d0err")),
    "dz": (("dzval",), lambda p: np.tanh(p.field("dzval"))),
    "dzerr": (("dzerr",), lambda p: p.field("dzerr")),
}


def _field_of(name: str) -> Callable[[_Particles], np.ndarray]:
    return lambda p: p.field(name)


for _flag in PID_FLAGS:
    _QUANTITIES[_flag] = ((_flag,), _field_of(_flag))


def _is_type(index: int) -> Callable[[_Particles], np.ndarray]:
    return lambda p: (p.field("object_type") == index).astype(np.float32)


for _i, _kind in enumerate(OBJECT_TYPES):  # one-hot object type of events read as sets of objects
    _QUANTITIES[f"is_{_kind}"] = (("object_type",), _is_type(_i))


class RaggedFeatures(NamedTuple):
    """A chunk's features without padding: jet i owns rows ``offsets[i]:offsets[i+1]``.

    Shape:
        x: (M, F) float32 standardised features.
        p4: (M, 4) float32 (px, py, pz, E).
        counts: (n,) int number of real particles per jet (sum M).
        jet: (n, 5) float32 jet vector in :data:`JET_FEATURES` order.
    """

    x: np.ndarray
    p4: np.ndarray
    counts: np.ndarray
    jet: np.ndarray


@dataclass(frozen=True)
class Feature:
    """One input feature: a named quantity plus weaver-style standardisation.

    ``center=None`` means no transformation at all (no clip either), as weaver's ``null``.
    """

    name: str
    quantity: str
    center: float | None = None
    scale: float = 1.0
    clip_min: float = -5.0
    clip_max: float = 5.0

    def __post_init__(self) -> None:
        if self.quantity not in _QUANTITIES:
            raise HepfmInputError(
                f"feature {self.name!r}: unknown quantity {self.quantity!r} "
                f"(known: {', '.join(sorted(_QUANTITIES))})"
            )

    @property
    def requires(self) -> tuple[str, ...]:
        return _QUANTITIES[self.quantity][0]


@dataclass(frozen=True)
class FeatureSet:
    """A named, ordered list of :class:`Feature` s with their standardisation.

    Attributes:
        name: registry name (``kin``, ``kinpid``, ``full``, ``jetclr``) or a user name.
        features: the features, in input order.
        flip_eta: multiply Δη by sign(η_jet) (ParT's convention; see the module docstring).
        description: one line for listings.
    """

    name: str
    features: tuple[Feature, ...]
    flip_eta: bool = False
    description: str = field(default="", compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def dim(self) -> int:
        """F, the number of features."""
        return len(self.features)

    @property
    def requires(self) -> tuple[str, ...]:
        """The ``JetChunk.particles`` fields this set needs (beyond p4 and mask), in first-use order."""
        out: list[str] = []
        for f in self.features:
            out += [r for r in f.requires if r not in out]
        return tuple(out)

    def check_fields(self, available: Iterable[str], path: str | Path | None = None) -> None:
        """Raise :class:`HepfmInputError` naming the feature set, the missing field(s) and the file."""
        have = set(available)
        missing = [r for r in self.requires if r not in have]
        if missing:
            needs = sorted({f.name for f in self.features if set(f.requires) & set(missing)})
            raise HepfmInputError(
                f"feature set {self.name!r} needs per-particle field(s) {', '.join(missing)} "
                f"(for {', '.join(needs)}), which this source does not provide "
                f"(it has: {', '.join(sorted(have)) or 'only four-momenta'}); "
                "use a feature set this data supports, e.g. 'kin'",
                path,
            )

    def compute_flat(self, chunk: JetChunk, path: str | Path | None = None) -> np.ndarray:
        """Features of the real particles only, in ``chunk.mask`` row-major order.

        Shape: returns (M, F) float32, M = ``chunk.mask.sum()``.
        """
        return self.compute_ragged(chunk, path).x

    def compute_ragged(self, chunk: JetChunk, path: str | Path | None = None) -> RaggedFeatures:
        """Features, four-vectors and jet vector of a chunk in the ragged (real particles only) layout.

        This is what the loaders store: no padding, one pass over the particles. Large chunks are
        processed in blocks of :data:`BLOCK_JETS` jets so the temporaries stay in cache (2x faster).
        """
        self.check_fields(chunk.particles, path)
        counts = chunk.mask.sum(axis=1)
        starts = np.concatenate([[0], np.cumsum(counts)])
        res = RaggedFeatures(
            x=np.empty((starts[-1], self.dim), dtype=np.float32),
            p4=np.empty((starts[-1], 4), dtype=np.float32),
            counts=counts,
            jet=np.empty((len(chunk), len(JET_FEATURES)), dtype=np.float32),
        )
        for i in range(0, len(chunk), BLOCK_JETS):  # each block writes its rows of the outputs
            j = min(i + BLOCK_JETS, len(chunk))
            a, b = starts[i], starts[j]
            self._ragged_block(chunk.take(slice(i, j)), res.x[a:b], res.p4[a:b], res.jet[i:j])
        return res

    def _ragged_block(self, chunk: JetChunk, x: np.ndarray, p4: np.ndarray, jet: np.ndarray) -> None:
        ctx = _Particles(chunk, self.flip_eta, p4)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for k, f in enumerate(self.features):
                q = ctx.get(f.quantity)
                if f.center is None:
                    x[:, k] = q
                else:
                    v = (q - np.float32(f.center)) * np.float32(f.scale)
                    np.clip(v, f.clip_min, f.clip_max, out=x[:, k])
        jk = ctx.jet_kinematics()
        for k, name in enumerate(JET_FEATURES):
            jet[:, k] = jk[name]

    def compute(self, chunk: JetChunk, path: str | Path | None = None) -> np.ndarray:
        """Standardised features in the padded layout, zero at padded slots.

        Shape: returns (n, N, F) float32 for a chunk of n jets with N particle slots.
        """
        self.check_fields(chunk.particles, path)
        n, size = len(chunk), chunk.max_particles
        out = np.zeros((n * size, self.dim), dtype=np.float32)  # (n*N, F), reshaped at the end
        flat = self.compute_ragged(chunk, path).x
        out[np.flatnonzero(chunk.mask)] = flat
        return out.reshape(n, size, self.dim)

    def jet_features(self, chunk: JetChunk) -> np.ndarray:
        """See :func:`jet_features`."""
        return jet_features(chunk)

    def replace(self, **changes: Any) -> FeatureSet:
        """A copy with some attributes changed, e.g. ``kin.replace(flip_eta=True)``."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable description (a checkpoint records this)."""
        return {
            "name": self.name,
            "flip_eta": self.flip_eta,
            "features": [asdict(f) for f in self.features],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSet:
        """Inverse of :meth:`to_dict`; validates the quantity names."""
        try:
            feats = tuple(Feature(**f) for f in d["features"])
            return cls(name=str(d["name"]), features=feats, flip_eta=bool(d["flip_eta"]))
        except (KeyError, TypeError) as e:
            raise HepfmInputError(f"malformed feature-set description: {e}") from None


def jet_features(chunk: JetChunk) -> np.ndarray:
    """Jet-level vector from the constituent sum (all constituents, also under a particle cap), in
    :data:`JET_FEATURES` order.

    Shape: returns (n, 5) float32 (pt, eta, phi, energy, mass).
    """
    jk = _Particles(chunk, flip_eta=False).jet_kinematics()
    return np.stack([jk[k] for k in JET_FEATURES], axis=1).astype(np.float32)


FEATURE_SETS: Registry[FeatureSet] = Registry("feature set")

_KIN_HEAD = (
    Feature("part_pt_log", "pt_log", 1.7, 0.7),
    Feature("part_e_log", "e_log", 2.0, 0.7),
    Feature("part_logptrel", "logptrel", -4.7, 0.7),
    Feature("part_logerel", "logerel", -4.7, 0.7),
    Feature("part_deltaR", "deltaR", 0.2, 4.0),
)
_REL = (Feature("part_deta", "deta"), Feature("part_dphi", "dphi"))
_PID = (Feature("part_charge", "charge"), *(Feature("part_" + f, f) for f in PID_FLAGS))
_IMPACT = (
    Feature("part_d0", "d0"),
    Feature("part_d0err", "d0err", 0.0, 1.0, 0.0, 1.0),
    Feature("part_dz", "dz"),
    Feature("part_dzerr", "dzerr", 0.0, 1.0, 0.0, 1.0),
)

FEATURE_SETS.add("kin", FeatureSet("kin", _KIN_HEAD + _REL, True, "ParT kinematics (7)"))
FEATURE_SETS.add("kinpid", FeatureSet("kinpid", _KIN_HEAD + _PID + _REL, True, "ParT kinematics + PID (13)"))
FEATURE_SETS.add(
    "full", FeatureSet("full", _KIN_HEAD + _PID + _IMPACT + _REL, True, "ParT full: + impact parameters (17)")
)
FEATURE_SETS.add(
    "jetclr",
    FeatureSet(
        "jetclr",
        (Feature("part_eta", "eta"), Feature("part_phi", "phi"), *_KIN_HEAD[:4]),
        description="JetCLR at JetClass scale: raw eta, phi + 4 log features (6)",
    ),
)


FEATURE_SETS.add(
    "objects",
    FeatureSet(
        "objects",
        (
            Feature("obj_pt_log", "pt_log", 3.5, 1.0),
            Feature("obj_eta", "eta"),
            Feature("obj_phi", "phi"),
            Feature("obj_e_log", "e_log", 4.0, 1.0),
            Feature("obj_charge", "charge"),
            *(Feature(f"obj_is_{k}", f"is_{k}") for k in OBJECT_TYPES),
        ),
        description="events as sets of objects: log pT, eta, phi, log E, charge, type one-hot (12)",
    ),
)


def get_feature_set(spec: str | FeatureSet | dict[str, Any]) -> FeatureSet:
    """A feature set from a registry name, a :class:`FeatureSet`, or a :meth:`FeatureSet.to_dict` dict."""
    if isinstance(spec, FeatureSet):
        return spec
    if isinstance(spec, dict):
        return FeatureSet.from_dict(spec)
    return FEATURE_SETS.get(spec)
