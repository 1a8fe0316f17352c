"""Tagging metrics: accuracy, ROC AUC and background rejection 1/eps_B at fixed signal efficiency.

Binary problems use the signal-class probability. Multi-class problems report one-vs-rest per class
(signal = that class, background = all others) and their macro averages under the same keys.
Rejection is read off the ROC curve by linear interpolation of eps_B at the requested eps_S, the
convention of the Top Tagging comparison (arXiv:1902.09914).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from hepfm.errors import HepfmInputError


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def rejection_at(scores: np.ndarray, is_signal: np.ndarray, eff: float) -> float:
    """1/eps_B at signal efficiency ``eff`` (inf if no background passes)."""
    fpr, tpr, _ = roc_curve(is_signal, scores)
    eps_b = float(np.interp(eff, tpr, fpr))
    return float("inf") if eps_b <= 0 else 1.0 / eps_b


def binary_metrics(scores: np.ndarray, is_signal: np.ndarray) -> dict[str, float]:
    if is_signal.min() == is_signal.max():
        raise HepfmInputError("metrics need both signal and background jets; the labels have one class only")
    return {
        "auc": float(roc_auc_score(is_signal, scores)),
        "rej30": rejection_at(scores, is_signal, 0.3),
        "rej50": rejection_at(scores, is_signal, 0.5),
    }


def classification_metrics(logits: np.ndarray, labels: np.ndarray,
                           class_names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Metrics for (n, K) logits and (n,) integer labels, with the keys accuracy, auc, rej30, rej50,
    n_jets."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} do not match")
    k = logits.shape[1]
    probs = softmax(logits)
    out: dict[str, float | dict] = {
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "n_jets": len(labels),
    }
    if k == 2:
        out |= binary_metrics(probs[:, 1], labels == 1)
        return out
    names = class_names or tuple(str(i) for i in range(k))
    per_class = {}
    for c in range(k):
        if 0 < (labels == c).sum() < len(labels):
            per_class[names[c]] = binary_metrics(probs[:, c], labels == c)
    if not per_class:
        raise HepfmInputError("metrics need at least two classes present in the labels")
    for key in ("auc", "rej30", "rej50"):
        out[key] = float(np.mean([m[key] for m in per_class.values()]))
    out["per_class"] = per_class
    return out
