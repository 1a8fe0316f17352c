"""What every run records next to its outputs: versions, command, data files and their metadata."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from hepfm.io import atomic_path, write_json_atomic

from hepfm import __version__


def versions() -> dict[str, str]:
    out = {"hepfm": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "numpy", "h5py", "uproot", "awkward", "scikit-learn", "pythia8mc", "fastjet"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        root = Path(__file__).resolve().parents[3]
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            out["git_commit"] = sha.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def data_provenance(sources: list[Any]) -> list[dict[str, Any]]:
    """Path, format, size and (for generated files) the generator metadata of each source."""
    out = []
    for s in sources:
        p = Path(s.path)
        entry: dict[str, Any] = {"path": str(p.resolve()), "format": s.format, "n_jets": len(s)}
        if p.exists():
            st = p.stat()
            entry |= {"bytes": st.st_size, "mtime": int(st.st_mtime)}
        meta = getattr(s, "metadata", None)
        if isinstance(meta, dict) and meta:
            entry["metadata"] = {k: meta[k] for k in ("generator", "dataset", "seed", "class_counts", "detector",
                                                      "labeled", "versions") if k in meta}
        out.append(entry)
    return out


def command_line() -> list[str]:
    return list(sys.argv)


def write_run_header(out: Path, resolved: dict[str, Any], preset: str, train_sources: list[Any],
                     val_sources: list[Any], **extra: Any) -> None:
    """``config.yaml`` (the resolved config) and ``provenance.json`` (versions, command, preset, data)."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
    write_json_atomic(out / "provenance.json", {
        "versions": versions(), "command": command_line(), "preset": preset,
        "data": {"train": data_provenance(train_sources), "val": data_provenance(val_sources)}, **extra,
    })
