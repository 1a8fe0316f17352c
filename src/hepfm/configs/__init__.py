"""Packaged YAML presets: small deltas on the dataclass defaults, one per method x dataset."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hepfm.errors import HepfmInputError


def list_presets(kind: str) -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files(__name__).joinpath(kind).iterdir() if p.name.endswith(".yaml")
    )


def load_preset(kind: str, name_or_path: str) -> dict[str, Any]:
    """A preset by name (``configs/<kind>/<name>.yaml``) or a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise HepfmInputError("config file not found", path)
        text = path.read_text()
    else:
        res = resources.files(__name__).joinpath(kind, f"{name_or_path}.yaml")
        if not res.is_file():
            raise HepfmInputError(
                f"unknown {kind} preset {name_or_path!r} (presets: {', '.join(list_presets(kind))})"
            )
        text = res.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise HepfmInputError(f"invalid YAML ({str(err).splitlines()[0]})", path) from None
    if not isinstance(data, dict):
        raise HepfmInputError("config must be a mapping of sections", path)
    return data


def merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in delta.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def merge_run_config(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """Merge a preset with user overrides; a user-chosen backbone drops the preset's backbone options,
    which belong to the preset's own backbone (e.g. transformer widths make no sense for ParT)."""
    model = delta.get("model", {})
    if "backbone" in model and model["backbone"] != base.get("model", {}).get("backbone"):
        base = merge(base, {"model": {}})
        base["model"] = {k: v for k, v in base["model"].items() if k != "backbone_options"}
    return merge(base, delta)
