"""``hepfm embed``: jet embeddings of a pretrained (or finetuned) backbone and their diagnostics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hepfm.data.features import FeatureSet
from hepfm.errors import HepfmInputError
from hepfm.evaluation.representation import MIN_MAP_JETS, diagnostics, embedding_map
from hepfm.io import check_folder_name, write_json_atomic
from hepfm.models import create_backbone
from hepfm.objectives.base import jet_embedding
from hepfm.training import checkpoint as ckpt
from hepfm.workflows.data import ModelInput, evaluation_loader, reading_of


def load_backbone(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any], Path]:
    """A backbone from a pretrain run (``backbone.safetensors``) or a classifier run (its backbone part)."""
    path = Path(path)
    if path.is_dir() and (path / "backbone.safetensors").exists():
        spec, state, file = ckpt.read_weights(path / "backbone")
    else:
        spec, state, file = ckpt.read_weights(path)
        prefix = "backbone."
        if not any(k.startswith(prefix) for k in state):
            raise HepfmInputError("no backbone weights in this checkpoint", file)
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    bb = spec["backbone"]
    model = create_backbone(bb["name"], bb["in_features"], **bb.get("options", {}))
    ckpt.load_state_into(model, state, file)
    return model.eval(), spec, file


@torch.no_grad()
def embed(run: str | Path, patterns: list[str], *, n_jets: int = 2000, name: str | None = None,
          method: str = "tsne", plot: bool = True) -> dict[str, Any]:
    if n_jets < 1:
        raise HepfmInputError(f"--n-jets must be >= 1, got {n_jets}")
    if plot and n_jets < MIN_MAP_JETS:
        raise HepfmInputError(f"--n-jets {n_jets} is too few for an embedding map (at least {MIN_MAP_JETS}); "
                              "use more jets or --no-plot")
    if name is not None:
        check_folder_name(name, "--name")
    model, spec, file = load_backbone(run)
    loader, sources = evaluation_loader(
        patterns, FeatureSet.from_dict(spec["features"]), spec["max_particles"], n_jets=n_jets,
        events=reading_of(spec), expect=ModelInput.of_spec(spec, file),
    )
    embs, labels = [], []
    for batch in loader:
        embs.append(jet_embedding(model(batch)).float().numpy())
        if batch.label is not None:
            labels.append(batch.label.numpy())
    if not embs:
        raise HepfmInputError("the data hold no jets", sources[0].path)
    emb = np.concatenate(embs)
    if plot and len(emb) < MIN_MAP_JETS:
        raise HepfmInputError(
            f"only {len(emb)} jets, too few for an embedding map (at least {MIN_MAP_JETS}); use --no-plot",
            sources[0].path,
        )
    y = np.concatenate(labels) if labels else None
    result = diagnostics(emb, y)
    out = Path(run) if Path(run).is_dir() else Path(run).parent
    out = out / "embed" / (name or Path(sources[0].path).stem)
    if plot:
        result["map_method"] = embedding_map(
            out / "embedding.png", emb, y, tuple(sources[0].class_names), method
        )
    result["checkpoint"] = str(file)
    write_json_atomic(out / "diagnostics.json", result)
    return result | {"out": str(out)}
