"""``hepfm generate`` under misuse and failure: bad options and outputs, concurrent runs, killed runs,
full disks. Each case ends in one line and exit status 2, or leaves no process or file behind."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("pythia8mc")
pytest.importorskip("fastjet")

from hepfm.cli import main as cli_main
from hepfm.generation.job import (
    GenerationJob,
    _part_path,
    _prepare_parts_dir,
    _run_and_save,
    _write_errno,
)
from hepfm.io import output_lock

GENERATE = [sys.executable, "-m", "hepfm.cli", "generate", "toptag"]
SMALL = ["--n-jets", "40", "--shard-size", "20", "--batch-events", "100", "--no-progress"]


def error_lines(stderr: str) -> list[str]:
    """The error lines of a run's stderr (INFO log lines such as 'resuming: ...' are not errors)."""
    return [line for line in stderr.splitlines() if not line.startswith("INFO ")]


def leftovers(folder: Path) -> list[Path]:
    """Hidden temporary files (atomic_path's ``.<name>.*.tmp``) anywhere below ``folder``."""
    return sorted(folder.rglob(".*.tmp"))


def limit_file_size(n_bytes: int):  # type: ignore[no-untyped-def]
    """A ``preexec_fn`` making every write past ``n_bytes`` fail with EFBIG, as a full disk would."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply


# -- 1. a bad --out is refused before any generation
@pytest.mark.parametrize("kind", ["directory", "parent-is-file", "read-only"])
def test_unwritable_out_is_refused_before_generating(tmp_path, capsys, monkeypatch, kind):
    out = tmp_path / "out.h5"
    if kind == "directory":
        out.mkdir()
    elif kind == "parent-is-file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out.h5"
    else:
        out = tmp_path / "ro" / "out.h5"
        out.parent.mkdir(mode=0o555)
        if os.access(out.parent, os.W_OK):  # root ignores the mode: deny as the kernel would for others
            mkstemp = tempfile.mkstemp

            def denied(*args, **kwargs):  # type: ignore[no-untyped-def]
                if Path(kwargs.get("dir", "")) == out.parent:
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
                return mkstemp(*args, **kwargs)

            monkeypatch.setattr(tempfile, "mkstemp", denied)
    assert cli_main(["generate", "toptag", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(out.parent) in err[0], err
    assert not list(tmp_path.rglob("*.parts"))
    assert not leftovers(tmp_path)


# -- 2. bad option values: one line naming the option, nothing created
@pytest.mark.parametrize(
    ("option", "named"),
    [
        (["--shard-size", "0"], "--shard-size"),
        (["--shard-size", "-5"], "--shard-size"),
        (["--batch-events", "0"], "--batch-events"),
        (["--seed", "-1"], "--seed"),
        (["--workers", "0"], "--workers"),
        pytest.param(["--set", "garbage"], "garbage", marks=pytest.mark.gen),
        pytest.param(["--set", "! PartonLevel:MPI = off"], "PartonLevel:MPI", marks=pytest.mark.gen),
        pytest.param(["--set", " "], "--set", marks=pytest.mark.gen),
        pytest.param(["--set", "Bogus:key = 1"], "Bogus:key", marks=pytest.mark.gen),
        pytest.param(["--set", "Tune:pp = abc"], "Tune:pp", marks=pytest.mark.gen),
    ],
)
def test_bad_option_values_give_one_line(tmp_path, capsys, option, named):
    out = tmp_path / "o.h5"
    argv = ["generate", "toptag", "--n-jets", "20", "--out", str(out), "--no-progress", *option]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert named in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gen
def test_valid_settings_and_seed_zero_are_accepted():
    # Pythia also takes 'Key value' without the equals sign
    settings = ("PartonLevel:MPI = off", "23:onMode = off", "HadronLevel:all off")
    job = GenerationJob("toptag", 10, Path("x.h5"), seed=0, extra_settings=settings)
    assert all(t.seed >= 1 for t in job.tasks())


# -- 3. killing the main process takes its workers with it
def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # the process (or thread) is gone
            kids |= {int(c) for c in (task / "children").read_text().split()}
    return kids


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a reaper that may never come in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.gen
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the workers")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_main_process_takes_its_workers_along(tmp_path, sig):
    out = tmp_path / "big.h5"
    proc = subprocess.Popen(
        [*GENERATE, "--n-jets", "4000", "--shard-size", "10", "--workers", "2", "--no-progress",
         "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    workers: set[int] = set()
    try:
        deadline = time.time() + 90
        # wait until both workers are up and at least one shard is done (so they are past start-up)
        while time.time() < deadline and (len(workers) < 2 or not list(tmp_path.glob("big.h5.parts/*.npz"))):
            workers = {c for c in _children(proc.pid) if "spawn_main" in _cmdline(c)}
            time.sleep(0.2)
        assert len(workers) == 2, "workers did not start"
        tracker = _children(proc.pid) - workers  # multiprocessing's resource tracker
        os.kill(proc.pid, sig)  # the main process only, not its process group
        proc.wait(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in workers | tracker):
            time.sleep(0.1)
        assert not [p for p in workers | tracker if _alive(p)], "processes outlived the killed main process"
    finally:
        for pid in workers:  # do not leave them behind if the assertion failed
            if _alive(pid) and "spawn_main" in _cmdline(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_parent_watch_thread_exits_an_orphan(tmp_path):
    """The portable fallback (no prctl): an orphaned process exits within the polling interval."""
    code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import os; from hepfm.generation.job import "
        "_watch_parent; _watch_parent(os.getppid(), 0.05)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        time.sleep(1.5)  # the child is running its watch loop
        assert _alive(child)
        parent.kill()
        parent.wait()
        deadline = time.time() + 10
        while time.time() < deadline and _alive(child):
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if _alive(child) and "_watch_parent" in _cmdline(child):
            os.kill(child, signal.SIGKILL)
        parent.stdout.close()


# -- 4. a second run on the same output is refused and touches nothing
@pytest.mark.gen
def test_concurrent_run_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "o.h5"
    with output_lock(out, directory=False):  # as if another generate were writing it
        res = subprocess.run([*GENERATE, "--out", str(out), *SMALL], check=False, capture_output=True,
                             text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    err = error_lines(res.stderr)
    assert len(err) == 1, err
    assert "another hepfm process" in err[0], err
    assert not (tmp_path / "o.h5.parts").exists()
    assert not out.exists()


# -- 5. a full disk: one line, exit 2, no temporary file, and the finished shards resume
@pytest.mark.gen
def test_disk_full_while_writing_shards(tmp_path):
    out = tmp_path / "o.h5"
    res = subprocess.run(
        [*GENERATE, "--out", str(out), "--workers", "2", *SMALL],
        check=False, capture_output=True, text=True, timeout=120, preexec_fn=limit_file_size(20_000),
    )
    assert res.returncode == 2, res.stderr
    err = error_lines(res.stderr)
    assert len(err) == 1, err
    assert "o.h5.parts" in err[0], err
    assert os.strerror(27) in err[0], err
    assert not leftovers(tmp_path)
    assert not out.exists()
    assert not list((tmp_path / "o.h5.parts").glob("*.npz"))  # no shard fitted under the limit


@pytest.fixture(scope="module")
def finished_parts(tmp_path_factory) -> Path:
    """The finished shards of the SMALL job (for output ``o.h5``), as an interrupted run leaves them."""
    root = tmp_path_factory.mktemp("parts")
    job = GenerationJob("toptag", 40, root / "o.h5", shard_size=20, batch_events=100)
    parts = _prepare_parts_dir(job, restart=False)
    for task in job.tasks():
        _run_and_save(task, _part_path(parts, task))
    return parts


@pytest.mark.gen
@pytest.mark.parametrize("fmt", ["hepfm", "jetclass-root", "toptag-h5"])
def test_disk_full_while_writing_the_output(tmp_path, finished_parts, fmt):
    out = tmp_path / "o.h5"
    shutil.copytree(finished_parts, tmp_path / "o.h5.parts")
    cmd = [*GENERATE, "--out", str(out), "--format", fmt, *SMALL]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120,
                         preexec_fn=limit_file_size(20_000))
    assert res.returncode == 2, res.stderr[-2000:]
    err = error_lines(res.stderr)
    assert len(err) == 1, err
    assert str(out) in err[0], err
    assert os.strerror(27) in err[0], err
    assert "rerun" in err[0], err
    assert not leftovers(tmp_path)
    assert not out.exists()
    # the shards survive, so once there is room the same command only merges them
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "resuming: 2 of 2 shards" in res.stderr
    assert out.exists()
    assert not (tmp_path / "o.h5.parts").exists()
    assert not leftovers(tmp_path)


@pytest.mark.gen
def test_writer_error_reporting_errno_only_in_its_message_gives_one_line(tmp_path, finished_parts, capsys,
                                                                         monkeypatch):
    """h5py sometimes raises a RuntimeError whose only trace of ENOSPC is HDF5's driver report."""
    import hepfm.data.formats

    out = tmp_path / "o.h5"
    shutil.copytree(finished_parts, tmp_path / "o.h5.parts")

    def full_disk(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("Set slist enabled failed (file write failed: time = Mon Dec  7 07:15:20 2026\n"
                           f", filename = '{out}', file descriptor = 3, errno = 28, error message = "
                           "'No space left on device', buf = 0x55, total write size = 4096)")

    monkeypatch.setattr(hepfm.data.formats, "write_jets", full_disk)
    assert cli_main(["generate", "toptag", "--out", str(out), *SMALL]) == 2
    err = error_lines(capsys.readouterr().err.strip())
    assert len(err) == 1, err
    assert str(out) in err[0], err
    assert os.strerror(28) in err[0], err
    assert (tmp_path / "o.h5.parts").exists()


def test_write_errno_reads_hdf5_reports_and_leaves_bugs_alone():
    assert _write_errno(OSError(28, "No space left on device")) == 28
    assert _write_errno(RuntimeError("Can't close (file write failed: errno = 27, ...)")) == 27
    assert _write_errno(OSError(5, "Can't write (errno = 122, error message = 'Disk quota exceeded')")) == 122
    assert _write_errno(RuntimeError("index out of range")) is None
    assert _write_errno(OSError(2, "No such file or directory")) is None
    assert _write_errno(RuntimeError("bad (errno = 2, error message = 'No such file')")) is None


def test_corrupt_manifest_of_an_interrupted_run_gives_one_line(tmp_path, capsys):
    out = tmp_path / "o.h5"
    (tmp_path / "o.h5.parts").mkdir()
    (tmp_path / "o.h5.parts" / "job.json").write_text('{"dataset": "top')  # cut off by a full disk
    assert cli_main(["generate", "toptag", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "--restart" in err[0], err


def test_recorded_pythia_settings_keep_every_set_line(tmp_path):
    """The file records the user's --set lines, the last one included, and no per-shard seed line."""
    from hepfm.generation.job import GenerationJob, provenance

    job = GenerationJob("toptag", 10, tmp_path / "x.h5", extra_settings=("HadronLevel:all = off",
                                                                         "PartonLevel:ISR = off"))
    settings = provenance(job, {})["pythia_settings"]
    for lines in settings.values():
        assert lines[-2:] == ["HadronLevel:all = off", "PartonLevel:ISR = off"]
        assert not any(line.startswith("Random:seed =") for line in lines)
