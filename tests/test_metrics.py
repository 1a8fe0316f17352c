"""Metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from hepfm.errors import HepfmInputError
from hepfm.evaluation.metrics import classification_metrics, rejection_at


def logit_pair(p_signal: np.ndarray) -> np.ndarray:
    return np.stack([np.zeros_like(p_signal), np.log(p_signal / (1 - p_signal))], axis=1)


def test_perfect_and_inverted_separation():
    labels = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    m = classification_metrics(logit_pair(p), labels)
    assert m["accuracy"] == 1.0
    assert m["auc"] == 1.0
    assert m["rej50"] == float("inf")
    assert m["n_jets"] == 6
    m = classification_metrics(logit_pair(1 - p), labels)
    assert m["accuracy"] == 0.0
    assert m["auc"] == 0.0


def test_auc_hand_computed():
    # signal scores {0.4, 0.8}, background {0.2, 0.6}: pairs (s>b) = 3 of 4 -> AUC 0.75
    labels = np.array([1, 1, 0, 0])
    p = np.array([0.4, 0.8, 0.2, 0.6])
    m = classification_metrics(logit_pair(p), labels)
    assert m["auc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.5)  # 0.8 and 0.2 right, 0.4 and 0.6 wrong


def test_rejection_interpolates_the_roc():
    # 10 signal, 10 background; signal scores 10..19, background 0..8 and one at 15.5
    sig = np.arange(10, 20, dtype=float)
    bkg = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 15.5])
    scores = np.concatenate([sig, bkg])
    is_sig = np.concatenate([np.ones(10, bool), np.zeros(10, bool)])
    # at eps_S = 0.3 (top 3 signal: 17,18,19) no background passes -> infinite rejection
    assert rejection_at(scores, is_sig, 0.3) == float("inf")
    # at eps_S = 0.5 (signal >= 15): the background at 15.5 passes -> eps_B = 0.1 -> rejection 10
    assert rejection_at(scores, is_sig, 0.5) == pytest.approx(10.0)


def test_multiclass_one_vs_rest():
    labels = np.array([0, 1, 2, 0, 1, 2])
    logits = np.eye(3)[labels] * 5.0
    logits[5] = [0, 5, 0]  # one class-2 jet called class 1
    m = classification_metrics(logits, labels, ("a", "b", "c"))
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert set(m["per_class"]) == {"a", "b", "c"}
    assert m["per_class"]["a"]["auc"] == 1.0
    assert m["auc"] < 1.0


def test_single_class_is_a_user_error():
    with pytest.raises(HepfmInputError, match="one class"):
        classification_metrics(logit_pair(np.array([0.2, 0.7])), np.array([1, 1]))
