"""Checkpoints.

* Model weights: ``<stem>.safetensors`` plus ``<stem>.json`` (registry names, hyper-parameters,
  feature set with its standardisation, class names): everything needed to rebuild the model
  through the registries, with no pickled code.
* Training state for exact resume: ``last.pt`` (model, optimizer, scaler, step, data position,
  RNG states, best metric). Both are written atomically.

Both are checked on load, because a flipped or zeroed block inside a tensor still loads and silently
changes every score: the JSON records the SHA-256 of its weights file (``weights_sha256``), and
``last.pt`` ends with the SHA-256 of the bytes before it (a 40-byte trailer).
"""

from __future__ import annotations

import hashlib
import io
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
#: The JSON key holding the SHA-256 of the weights file beside it.
CHECKSUM_KEY = "weights_sha256"
#: ``last.pt`` trailer: this tag, then the 32-byte SHA-256 of everything before the trailer.
STATE_TRAILER = b"hepfmsha"


def save_weights(stem: Path, model: nn.Module, spec: dict[str, Any]) -> Path:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path = stem.with_suffix(WEIGHTS_SUFFIX)
    data = save(state, metadata={"hepfm_spec": json.dumps(spec)})  # bytes: hashed as written, not read back
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    write_json_atomic(stem.with_suffix(".json"), spec | {CHECKSUM_KEY: hashlib.sha256(data).hexdigest()})
    return path


def read_weights(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """(spec, state_dict, weights file) from a ``.safetensors`` file, its stem, or a run directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    original = path = Path(path)
    if path.is_dir():
        for cand in (path / "best.safetensors", path / "checkpoints" / "best.safetensors",
                     path / "model.safetensors"):
            if cand.exists():
                path = cand
                break
        else:
            raise HepfmInputError("no model weights (best.safetensors) in this run directory", path)
    if path.suffix != WEIGHTS_SUFFIX:
        path = path.with_suffix(WEIGHTS_SUFFIX)
    if not path.exists():
        if not original.exists():
            raise HepfmInputError("no such run directory or weights file", original)
        raise HepfmInputError("checkpoint not found", path)
    spec_path = path.with_suffix(".json")
    try:
        spec = json.loads(spec_path.read_text())
        recorded = spec.pop(CHECKSUM_KEY, None)
        data = path.read_bytes()  # read once: hashed, then parsed
        if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
            raise HepfmInputError(f"weights do not match the checksum recorded in {spec_path.name} "
                                  "(the file is corrupted or was modified)", path)
        state = load(data)
    except (SafetensorError, OSError, json.JSONDecodeError, ValueError, AttributeError) as err:
        raise HepfmInputError(
            f"corrupt or unreadable checkpoint ({str(err).splitlines()[0]})", path
        ) from None
    return spec, state, path


def load_state_into(
    model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, strict: bool = True
) -> None:
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
    # the global (legacy) numpy RNG is saved on purpose: exact resume must restore what third-party code draws
    numpy_state = np.random.get_state()  # noqa: NPY002
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002 (the global RNG, restored on purpose)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, state: dict[str, Any]) -> None:

    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getbuffer()
    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as fh:
        fh.write(payload)
        fh.write(STATE_TRAILER + hashlib.sha256(payload).digest())


def load_training_state(path: Path) -> dict[str, Any]:
    """The training state of ``last.pt``, its trailer checked (files without one, from older hepfm, load)."""

    try:
        data: bytes | memoryview = path.read_bytes()
        n = len(STATE_TRAILER) + 32
        if data[-n:-32] == STATE_TRAILER:
            payload = memoryview(data)[:-n]
            if hashlib.sha256(payload).digest() != data[-32:]:
                raise HepfmInputError("cannot resume: the training state does not match its checksum "
                                      "(corrupted; --restart starts over)", path)
            data = payload
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except HepfmInputError:
        raise
    except Exception as err:
        raise HepfmInputError(f"cannot resume: corrupt training state ({type(err).__name__})", path) from None
