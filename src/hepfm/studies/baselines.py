"""The "standard HEP" baseline of the few-label study: boosted trees on high-level jet features.

A foundation model saves labels only if it beats what a physicist would do with N labels and no
network: a gradient-boosted decision tree on a handful of substructure observables. This module
trains one (sklearn's ``HistGradientBoostingClassifier``) on exactly the N class-balanced jets that
``hepfm finetune --n-labels N`` with ``train.seed=seed`` draws (:func:`~hepfm.workflows.data.balanced_subset`
over the same files), picks the number of boosting iterations on the validation jets, scores the
test jets once and reports the networks' metrics (:func:`~hepfm.evaluation.metrics.classification_metrics`).

Features are computed from the constituents' four-momenta, so they exist for every input format.
The jet four-momentum (mass, axis) is the whole jet's (:meth:`JetChunk.jet_p4`, as everywhere in
the package); soft-drop mass, N-subjettiness, multiplicity, width and pT_D use the particles read
(at most ``max_particles`` per jet, the same cap the networks see).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from hepfm.data.formats import open_sources
from hepfm.data.formats.base import read_selected
from hepfm.data.jets import FULL_JET_P4, JetChunk, kinematics, pt_eta_phi
from hepfm.errors import HepfmInputError
from hepfm.evaluation.metrics import classification_metrics
from hepfm.generation.substructure import substructure
from hepfm.workflows.data import READ_CHUNK, balanced_subset, class_names

HIGH_LEVEL_FEATURES: tuple[str, ...] = ("mass", "sdmass", "multiplicity", "tau21", "tau32", "width", "ptd")

#: Jet radius of soft drop (R0) and N-subjettiness normalisation: the JetClass/CMS AK8 choice.
RADIUS = 0.8
#: Boosting iterations tried on the validation jets (the fit runs to the largest; stages are free).
ITERATIONS = (1, 2, 5, 10, 20, 50, 100, 150, 200)
#: Fixed tree settings: shallow trees, standard learning rate, no internal validation split.
TREE_OPTIONS: dict[str, Any] = {"learning_rate": 0.1, "max_leaf_nodes": 15, "l2_regularization": 1e-3,
                                "early_stopping": False}
#: Floor of predicted probabilities before the log (a class the trees never saw has probability 0).
P_MIN = 1e-12


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def high_level_features(chunk: JetChunk) -> np.ndarray:
    """(n, 7) float64 features of :data:`HIGH_LEVEL_FEATURES` for every jet of ``chunk``.

    mass: jet invariant mass; sdmass: soft-drop mass (beta 0, z_cut 0.1, R0 0.8); multiplicity:
    particles read; tau21, tau32: N-subjettiness ratios (0 where the denominator is 0); width:
    sum pT_i dR_i / sum pT_i with dR to the jet axis; ptd: sqrt(sum pT_i^2) / sum pT_i.
    """
    n = len(chunk)
    mask = chunk.mask
    jet = kinematics(chunk.jet_p4())
    pt, eta, phi = pt_eta_phi(chunk.p4.astype(np.float64))
    pt = np.where(mask, pt, 0.0)
    dphi = (phi - jet["phi"][:, None] + np.pi) % (2 * np.pi) - np.pi
    dr = np.hypot(eta - jet["eta"][:, None], dphi)
    sum_pt = pt.sum(1)

    sdmass, tau = np.zeros(n), np.zeros((n, 3))
    filled = mask.any(1)  # FastJet fails on a jet without particles: its substructure stays 0
    if filled.any():
        sub = substructure(chunk.p4[filled], mask[filled], RADIUS)
        sdmass[filled] = np.clip(sub["jet_sdmass"], 0.0, None)  # FastJet may return -0.1 for m ~ 0
        tau[filled] = np.stack([sub[f"jet_tau{k}"] for k in (1, 2, 3)], axis=1)
    return np.stack([
        jet["mass"],
        sdmass,
        mask.sum(1).astype(np.float64),
        _ratio(tau[:, 1], tau[:, 0]),
        _ratio(tau[:, 2], tau[:, 1]),
        _ratio((pt * dr).sum(1), sum_pt),
        _ratio(np.sqrt((pt**2).sum(1)), sum_pt),
    ], axis=1)


def _blocks(sources: list[Any]) -> Iterator[JetChunk]:
    """Every jet of ``sources`` in blocks: four-momenta, mask, labels (and whole-jet sums) only."""
    for s in sources:
        for start in range(0, len(s), READ_CHUNK):
            stop = min(start + READ_CHUNK, len(s))
            yield read_selected(s, start, stop, fields=(), jet_fields=(FULL_JET_P4,))


def _features_of(sources: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of every jet of ``sources``."""
    x, y = [], []
    for chunk in _blocks(sources):
        assert chunk.label is not None  # sources were checked for labels
        x.append(high_level_features(chunk))
        y.append(chunk.label)
    if not x:
        return np.zeros((0, len(HIGH_LEVEL_FEATURES))), np.zeros(0, np.int64)
    return np.concatenate(x), np.concatenate(y)


def _check_labeled(sources: list[Any], names: tuple[str, ...], what: str) -> None:
    for s in sources:
        if not s.has_labels:
            raise HepfmInputError(f"the baseline needs labeled {what} jets, but the file has none", s.path)
        if tuple(s.class_names) != names:
            raise HepfmInputError(f"the file's classes {list(s.class_names)} differ from the training "
                                  f"classes {list(names)}", s.path)


def _two_classes(y: np.ndarray, what: str, path: Any) -> None:
    if len(np.unique(y)) < 2:
        raise HepfmInputError(f"the {what} jets hold a single class ({sorted(set(y.tolist()))}): "
                              "the baseline needs at least two", path)


def _logits(proba: np.ndarray, seen: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, K) log-probabilities over all K classes from ``predict_proba`` over the classes ``seen``."""
    full = np.zeros((len(proba), n_classes))
    full[:, seen] = proba
    return np.log(np.clip(full, P_MIN, 1.0))


def bdt_baseline(train: list[str], val: list[str], test: list[str], *, n_labels: int, seed: int,
                 max_particles: int = 128) -> dict[str, Any]:
    """Train boosted trees on ``n_labels`` balanced training jets (drawn with ``seed``), pick the number
    of iterations by validation AUC (the full :data:`ITERATIONS` range without ``val`` files) and
    return the test metrics.

    Returns ``classification_metrics``'s keys (accuracy, auc, rej30, rej50, n_jets; per-class metrics
    under ``per_class`` for more than two classes, ``{}`` for two) plus ``seconds`` (wall time),
    ``features`` (:data:`HIGH_LEVEL_FEATURES`), ``n_labels``, ``labels_per_class`` (training jets per
    class, as ``hepfm finetune`` reports them) and ``n_iter`` (the chosen number of iterations).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    t0 = time.perf_counter()
    if n_labels < 1:
        raise HepfmInputError(f"--n-labels must be >= 1, got {n_labels}")
    if not train or not test:
        raise HepfmInputError("the baseline needs training (--data) and test files")
    train_src = open_sources(train, max_particles=max_particles)
    names = class_names(train_src, "training")
    val_src = open_sources(val, max_particles=max_particles) if val else []
    test_src = open_sources(test, max_particles=max_particles)
    _check_labeled(val_src, names, "validation")
    _check_labeled(test_src, names, "test")

    subset, per_class = balanced_subset(train_src, n_labels, seed)
    assert subset.label is not None
    x_train, y_train = high_level_features(subset), subset.label
    _two_classes(y_train, "training", train_src[0].path)

    k = len(names)
    trees = HistGradientBoostingClassifier(
        max_iter=ITERATIONS[-1], random_state=seed,
        min_samples_leaf=max(1, min(20, n_labels // 20)),  # a few labels still make splits
        **TREE_OPTIONS,
    ).fit(x_train, y_train)
    seen = trees.classes_.astype(np.int64)

    n_iter = ITERATIONS[-1]
    if val_src:
        x_val, y_val = _features_of(val_src)
        _two_classes(y_val, "validation", val_src[0].path)
        auc = {}
        for i, proba in enumerate(trees.staged_predict_proba(x_val), start=1):
            if i in ITERATIONS:
                auc[i] = classification_metrics(_logits(proba, seen, k), y_val, names)["auc"]
        n_iter = max(auc, key=lambda i: (auc[i], -i))  # best AUC; the fewest iterations on ties

    x_test, y_test = _features_of(test_src)
    _two_classes(y_test, "test", test_src[0].path)
    proba = next(itertools.islice(trees.staged_predict_proba(x_test), n_iter - 1, None))
    metrics = classification_metrics(_logits(proba, seen, k), y_test, names)
    metrics.setdefault("per_class", {})
    return metrics | {
        "seconds": time.perf_counter() - t0,
        "features": list(HIGH_LEVEL_FEATURES),
        "n_labels": n_labels,
        "labels_per_class": per_class,
        "n_iter": int(n_iter),
    }
