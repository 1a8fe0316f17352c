"""What every run records next to its outputs (versions, command, data files and their identities), and
the guards of a run directory: one process at a time, and a resume only with what the run started with."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from hepfm._version import __version__
from hepfm.errors import HepfmInputError
from hepfm.io import LOCK_NAME, atomic_path, check_output_dir, file_identity, output_lock, write_json_atomic

#: Config keys a resumed run may change: how it runs or reports, and how long (the schedule is
#: spread over the new length from the resumed step on), not what it computes up to that step.
RESUME_FREE = frozenset({"train.device", "train.num_workers", "train.tensorboard", "train.compile",
                         "train.max_steps", "train.max_epochs", "train.max_minutes", "train.log_every",
                         "train.eval_every", "train.ckpt_every"})
#: What a run writes into its directory (``--restart`` removes exactly these, nothing else).
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "metrics.csv", "tensorboard", "best.safetensors",
               "best.json", "backbone.safetensors", "backbone.json", "train_summary.json", "config.yaml",
               "provenance.json", "eval", "embed")


def versions() -> dict[str, str]:
    out = {"hepfm": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "numpy", "h5py", "uproot", "awkward", "scikit-learn", "pythia8mc", "fastjet"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    try:
        root = Path(__file__).resolve().parents[3]
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
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
        reading = getattr(s, "reading", None)  # events: how they were read, and how many the selection kept
        if isinstance(reading, dict):
            entry["events"] = reading
        if p.exists():
            st = p.stat()
            entry |= {"bytes": st.st_size, "mtime": int(st.st_mtime), "sha256_head_tail": file_identity(p)}
        meta = getattr(s, "metadata", None)
        if isinstance(meta, dict) and meta:
            entry["metadata"] = {
                k: meta[k]
                for k in ("generator", "dataset", "seed", "class_counts", "detector", "labeled", "versions")
                if k in meta
            }
        out.append(entry)
    return out


def command_line() -> list[str]:
    return list(sys.argv)


@contextlib.contextmanager
def run_directory(out: str | Path, *, restart: bool = False) -> Iterator[Path]:
    """Hold a run directory for one command: writable (checked before any work), locked against a second
    process, and emptied of a previous run's outputs first with ``restart``. A command that fails before
    writing anything leaves no directory behind."""
    out = check_output_dir(out)
    if int(os.environ.get("RANK", "0")) != 0:  # a torchrun worker: rank 0 holds the directory for all
        yield out
        return
    created = not out.exists()
    try:
        with output_lock(out, directory=True):
            if restart:
                for name in RUN_OUTPUTS:
                    path = out / name
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
            yield out
    finally:
        if created and out.is_dir() and {p.name for p in out.iterdir()} <= {LOCK_NAME}:
            with contextlib.suppress(OSError):
                (out / LOCK_NAME).unlink(missing_ok=True)
                out.rmdir()


def resuming(out: Path) -> bool:
    return (out / "checkpoints" / "last.pt").exists()


def check_resume(
    out: Path, resolved: dict[str, Any], train_sources: list[Any], val_sources: list[Any]
) -> None:
    """Refuse to continue a run with other settings or other data than it started with (one line naming
    the first difference), so a resumed run is the run its config.yaml and provenance.json describe."""
    if not resuming(out) or not (out / "config.yaml").exists():
        return
    old = _flatten(yaml.safe_load((out / "config.yaml").read_text()) or {})
    new = _flatten(json_roundtrip(resolved))
    for key in sorted(new):
        if key in RESUME_FREE or old.get(key, new[key]) == new[key]:
            continue  # keys an older hepfm did not write are not differences
        raise HepfmInputError(f"cannot resume: {key} was {old[key]!r} in this run, {new[key]!r} now; "
                              "use --restart to start over, or another --out", out)
    prov_path = out / "provenance.json"
    if not prov_path.exists():
        return
    import json

    old_data = json.loads(prov_path.read_text()).get("data", {})
    for role, sources in (("train", train_sources), ("val", val_sources)):
        was = [_identity(e) for e in old_data.get(role, [])]
        now = [_identity(e) for e in data_provenance(sources)]
        if any(w[1] is not None for w in was) and was != now:  # older runs recorded no identities
            changed = (
                next((n[0] for w, n in zip(was, now, strict=False) if w != n), None) or (now or was)[0][0]
            )
            raise HepfmInputError(f"cannot resume: the {role} data differ from the run's ({changed}); "
                                  "use --restart to start over, or another --out", out)


def _identity(entry: dict[str, Any]) -> tuple[str, Any, Any]:
    return entry["path"], entry.get("sha256_head_tail"), entry.get("bytes")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            flat |= _flatten(v, f"{prefix}{k}.")
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def json_roundtrip(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` as YAML would give it back (tuples as lists), so a stored config compares equal to a new one."""
    return yaml.safe_load(yaml.safe_dump(json_ready(d), sort_keys=False))


def json_ready(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: json_ready(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [json_ready(v) for v in d]
    return d


def write_run_header(out: Path, resolved: dict[str, Any], preset: str, train_sources: list[Any],
                     val_sources: list[Any], **extra: Any) -> None:
    """``config.yaml`` (the resolved config) and ``provenance.json`` (versions, command, preset, data).

    A resumed run keeps the header it started with (after :func:`check_resume` found nothing changed
    but what :data:`RESUME_FREE` allows), so the files describe the steps already taken."""
    check_resume(out, resolved, train_sources, val_sources)
    if resuming(out) and (out / "config.yaml").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(json_ready(resolved), sort_keys=False))
    write_json_atomic(out / "provenance.json", {
        "versions": versions(), "command": command_line(), "preset": preset,
        "data": {"train": data_provenance(train_sources), "val": data_provenance(val_sources)}, **extra,
    })
