"""Representation diagnostics for pretrained backbones.

* mean pairwise cosine similarity of jet embeddings: near 1 means collapse (J-JEPA's check);
* per-dimension standard deviation and the fraction of dead dimensions;
* effective rank exp(H(sigma / sum sigma)) of the embedding matrix (Roy & Vetterli 2007): how many
  directions the embeddings really use;
* k-NN and linear-probe accuracy and AUC on a held-out half (labels needed), the standard SSL probes;
* a 2-D t-SNE (or UMAP, if installed) map coloured by class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def effective_rank(emb: np.ndarray) -> float:
    """exp(entropy of the normalised singular values) of the centred embeddings (Roy & Vetterli 2007)."""
    s = np.linalg.svd(emb - emb.mean(0), compute_uv=False)
    p = s / max(s.sum(), 1e-12)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def collapse_metrics(emb: np.ndarray) -> dict[str, float]:
    z = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    n = len(z)
    sim = z @ z.T
    mean_cos = float((sim.sum() - np.trace(sim)) / max(n * (n - 1), 1))
    std = emb.std(axis=0)
    eff_rank = effective_rank(emb)
    return {"mean_pairwise_cosine": mean_cos, "std_mean": float(std.mean()), "std_min": float(std.min()),
            "dead_dim_fraction": float((std < 1e-4 * max(std.max(), 1e-12)).mean()),
            "effective_rank": eff_rank,
            "dim": int(emb.shape[1]), "n_jets": int(n)}


def probe_metrics(emb: np.ndarray, labels: np.ndarray, seed: int = 0, k: int = 10) -> dict[str, float]:
    """k-NN and logistic-regression accuracy and AUC, fitted on one half (drawn with ``seed``) of the
    standardised embeddings, scored on the other. Keys: ``knn_*`` and ``linear_probe_*``, each
    ``_accuracy`` and ``_auc`` (see :func:`probe_auc`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(labels))
    tr, te = idx[: len(idx) // 2], idx[len(idx) // 2 :]
    scaler = StandardScaler().fit(emb[tr])
    a, b = scaler.transform(emb[tr]), scaler.transform(emb[te])
    out: dict[str, float] = {}
    for name, model in (("knn", KNeighborsClassifier(n_neighbors=min(k, len(tr)))),
                        ("linear_probe", LogisticRegression(max_iter=2000))):
        model.fit(a, labels[tr])
        out[f"{name}_accuracy"] = float(model.score(b, labels[te]))
        out[f"{name}_auc"] = probe_auc(model.predict_proba(b), labels[te], model.classes_)
    return out


def probe_auc(proba: np.ndarray, y: np.ndarray, classes: np.ndarray) -> float:
    """Binary AUC of the second class, or the one-vs-rest macro AUC; NaN if a class is missing."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2 or len(classes) < 2:
        return float("nan")
    if len(classes) == 2:
        return float(roc_auc_score(y == classes[1], proba[:, 1]))
    if not np.isin(classes, y).all():
        return float("nan")
    return float(roc_auc_score(y, proba, multi_class="ovr", labels=classes))


#: Fewest jets a 2-D map is drawn for (t-SNE's perplexity must stay below the number of points).
MIN_MAP_JETS = 20


def embedding_map(path: Path, emb: np.ndarray, labels: np.ndarray | None, class_names: tuple[str, ...],
                  method: str = "tsne", seed: int = 0) -> str:
    """Write a 2-D map of the embeddings; returns the method used."""
    from hepfm.evaluation.plots import pyplot, save_figure

    if method == "umap":
        try:
            import umap  # optional

            xy = umap.UMAP(random_state=seed).fit_transform(emb)
        except ImportError:
            method = "tsne"
    if method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, random_state=seed, perplexity=min(30.0, max(5.0, len(emb) / 10)),
                  init="pca").fit_transform(emb)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=3, alpha=0.6)
    else:
        for c, name in enumerate(class_names):
            sel = labels == c
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=3, alpha=0.6, label=name)
        ax.legend(markerscale=4, fontsize=7)
    ax.set_title(f"jet embeddings ({method})")
    ax.set_xticks([])
    ax.set_yticks([])
    save_figure(fig, path)
    return method


def diagnostics(emb: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    out: dict[str, Any] = collapse_metrics(emb)
    if labels is not None and len(np.unique(labels)) > 1 and len(labels) >= 20:
        out |= probe_metrics(emb, labels)
    return out
