"""Checkpoints.

* Model weights: ``<stem>.safetensors`` plus ``<stem>.json`` (registry names, hyper-parameters,
  feature set with its standardisation, class names): everything needed to rebuild the model
  through the registries, with no pickled code.
* Training state for exact resume: ``last.pt`` (model, optimizer, scaler, step, data position,
  RNG states, best metric). Both are written atomically.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hepfm.errors import HepfmInputError
from hepfm.io import atomic_path, write_json_atomic

WEIGHTS_SUFFIX = ".safetensors"


def save_weights(stem: Path, model: nn.Module, spec: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path = stem.with_suffix(WEIGHTS_SUFFIX)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"hepfm_spec": json.dumps(spec)})
    write_json_atomic(stem.with_suffix(".json"), spec)
    return path


def read_weights(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """(spec, state_dict, weights file) from a ``.safetensors`` file, its stem, or a run directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        for cand in (path / "best.safetensors", path / "checkpoints" / "best.safetensors", path / "model.safetensors"):
            if cand.exists():
                path = cand
                break
        else:
            raise HepfmInputError("no model weights (best.safetensors) in this run directory", path)
    if path.suffix != WEIGHTS_SUFFIX:
        path = path.with_suffix(WEIGHTS_SUFFIX)
    if not path.exists():
        raise HepfmInputError("checkpoint not found", path)
    spec_path = path.with_suffix(".json")
    try:
        state = load_file(str(path))
        spec = json.loads(spec_path.read_text())
    except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as err:
        raise HepfmInputError(f"corrupt or unreadable checkpoint ({str(err).splitlines()[0]})", path) from None
    return spec, state, path


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, strict: bool = True) -> None:
    """Load a state dict and turn any mismatch into one clear line naming the checkpoint."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if shape:
        k = sorted(shape)[0]
        raise HepfmInputError(
            f"checkpoint does not fit the model: {k} has shape {tuple(state[k].shape)} in the checkpoint, "
            f"{tuple(own[k].shape)} in the model ({len(shape)} mismatched tensors)", path)
    if strict and (missing or unexpected):
        raise HepfmInputError(
            f"checkpoint does not fit the model: {len(missing)} missing tensors (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})", path)
    model.load_state_dict(state, strict=strict)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def load_training_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a corrupt file
        raise HepfmInputError(f"cannot resume: corrupt training state ({type(err).__name__})", path) from None
