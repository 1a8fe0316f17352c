"""Atomic output: write to a temporary sibling, then rename, so a killed run never leaves half a file."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hepfm.errors import HepfmInputError


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it onto ``path`` on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private (0600); the output gets a normal file's mode
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays and paths."""
    import numpy as np

    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


#: errno values that mean "the output cannot be written" (not a bug): disk full, quota, file too
#: large, read-only file system, permission, a directory where a file is meant and vice versa.
OUTPUT_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS,
    errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
})


def is_output_error(err: BaseException) -> bool:
    """True for the ``OSError`` s a user can cause when writing (disk full, read-only, permissions)."""
    return isinstance(err, OSError) and err.errno in OUTPUT_ERRNOS


def check_output_file(path: str | Path) -> Path:
    """Refuse, before any work, an output file that cannot be written: an existing directory, a parent
    that is a file, or a folder without write permission. Creates the missing parent folders."""
    path = Path(path)
    if path.is_dir():
        raise HepfmInputError("is a directory; --out must name a file", path)
    _check_writable_dir(path.parent, path)
    return path


def check_output_dir(path: str | Path) -> Path:
    """Refuse, before any work, a run directory that cannot be written (a file, or read-only)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise HepfmInputError("is a file; --out must name a run directory", path)
    _check_writable_dir(path, path)
    return path


def _check_writable_dir(folder: Path, named: Path) -> None:
    # probe the folder, or the nearest existing folder above it that would hold it: nothing is created
    # here, so a command refused later leaves no empty folders behind
    base = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not base.is_dir():
        raise HepfmInputError(f"{base} is a file, not a folder", named)
    try:
        fd, probe = tempfile.mkstemp(prefix=".hepfm-write-test.", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise HepfmInputError(f"cannot write here ({err.strerror})", base) from None


#: The lock file inside a locked run directory.
LOCK_NAME = ".hepfm.lock"


@contextlib.contextmanager
def output_lock(target: str | Path, *, directory: bool) -> Iterator[None]:
    """Hold an exclusive lock on an output (a run directory or a file) for the duration of a command.

    A second hepfm process writing to the same output is refused with one line instead of interleaving
    its steps with the first. The lock is an OS file lock (released by the kernel when a process dies,
    so a ``kill -9`` never leaves a stale lock); its file is ``<dir>/.hepfm.lock`` for a run directory
    and ``<file>.lock`` beside an output file.
    """
    from filelock import FileLock, Timeout

    target = Path(target)
    lock_path = target / LOCK_NAME if directory else target.with_name(target.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise HepfmInputError("another hepfm process is writing to this output; wait for it or use "
                              "another --out", target) from None
    try:
        yield
    finally:
        lock.release()
        if not directory:  # a file output: do not leave the lock file beside it
            with contextlib.suppress(OSError):
                lock_path.unlink()


#: Bytes hashed at each end of a file by :func:`file_identity`.
IDENTITY_BYTES = 1 << 20


def file_identity(path: str | Path) -> str:
    """SHA-256 of a file's size, first and last MiB: cheap on 100 GB files, and different for any two
    generated or converted jet files (their headers and chunk data differ), so a run or a study cell can
    tell that an input changed even where size and name did not. Not a full-content checksum."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(IDENTITY_BYTES))
        if size > 2 * IDENTITY_BYTES:
            fh.seek(size - IDENTITY_BYTES)
            h.update(fh.read(IDENTITY_BYTES))
        elif size > IDENTITY_BYTES:
            h.update(fh.read())
    return h.hexdigest()


def check_folder_name(name: str, option: str) -> None:
    """An output folder name must stay inside the run directory: one path component, not '.' or '..'."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise HepfmInputError(f"{option} must be a plain folder name (no '/', not '..'), got {name!r}")
