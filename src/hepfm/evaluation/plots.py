"""ROC and score plots (matplotlib, imported lazily; figures are written, never shown)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hepfm.io import atomic_path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (plots are written, never shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_plot(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "") -> None:
    """Background rejection 1/eps_B vs signal efficiency, log scale (the HEP convention).

    Args:
        curves: label -> (scores, is_signal).
    """
    from sklearn.metrics import roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, (scores, is_sig) in curves.items():
        fpr, tpr, _ = roc_curve(is_sig, scores)
        ok = fpr > 0
        ax.plot(tpr[ok], 1.0 / fpr[ok], label=label)
    ax.set_yscale("log")
    ax.set_xlabel(r"signal efficiency $\varepsilon_S$")
    ax.set_ylabel(r"background rejection $1/\varepsilon_B$")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def score_histogram(path: Path, scores: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...],
                    score_name: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41)
    for c, name in enumerate(class_names):
        sel = labels == c
        if sel.any():
            ax.hist(scores[sel], bins=bins, histtype="step", density=True, label=f"{name} ({sel.sum()})")
    ax.set_xlabel(score_name)
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` as PNG atomically and close it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
