"""Data files that used to be misread, crash or be destroyed: non-integer and one-hot labels, absurd
momenta, a full disk while writing, unsafe ``hepfm convert`` outputs and a closed output pipe."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from _factories import random_chunk

from hepfm.cli import main
from hepfm.data.formats import open_source, write_jets
from hepfm.data.validate import MAX_MOMENTUM, all_good_and_sorted, validate_and_sort
from hepfm.errors import HepfmInputError
from hepfm.io import output_lock

CLI = "import sys, hepfm.cli as c; c.SUBCOMMANDS = ('inspect', 'convert'); sys.exit(c.main(sys.argv[1:]))"


def run_cli(*args: str, preexec_fn: Callable[[], None] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, *args], check=False, capture_output=True, text=True,
                          timeout=120, preexec_fn=preexec_fn, **kw)


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def jets_file(path: Path, n: int = 40, **kw) -> Path:
    write_jets(path, [random_chunk(n, 20, **kw)], "hepfm")
    return path


def replace_label(path: Path, values: np.ndarray) -> None:
    with h5py.File(path, "a") as f:
        del f["label"]
        f["label"] = values


# -- labels ------------------------------------------------------------------------------------
def test_float_label_is_refused_not_cut_to_zero(tmp_path):
    path = jets_file(tmp_path / "a.h5")
    with h5py.File(path) as f:
        labels = f["label"][:].astype(np.float32)
    labels[3] = 0.9
    replace_label(path, labels)
    with pytest.raises(HepfmInputError, match=r"jet 3: label is not a whole number"):
        open_source(path).read(0, 40)
    src = open_source(path, skip_bad=True)
    chunk = src.read(0, 40)
    assert len(chunk) == 39
    assert src.bad_counts == {"label_not_integer": 1}
    np.testing.assert_array_equal(chunk.label, np.delete(labels, 3))  # whole floats are class indices
    one_line_error(run_cli("inspect", str(path)), "jet 3", "whole number")


def test_one_hot_labels_are_read_as_class_indices(tmp_path):
    path = jets_file(tmp_path / "a.h5")
    with h5py.File(path) as f:
        labels = f["label"][:]
    one_hot = np.eye(2, dtype=np.int8)[labels]
    one_hot[5] = [1, 1]
    replace_label(path, one_hot)
    with open_source(path, skip_bad=True) as src:
        chunk = src.read(0, 40)
    np.testing.assert_array_equal(chunk.label, np.delete(labels, 5))
    assert src.bad_counts == {"label_not_one_hot": 1}
    r = run_cli("inspect", "--skip-bad", "--json", str(path))
    assert r.returncode == 0, r.stderr
    assert '"label_not_one_hot": 1' in r.stdout, r.stderr
    one_line_error(run_cli("convert", str(path), "--to", "hepfm", "--out", str(tmp_path / "o.h5")), "jet 5")
    replace_label(path, np.eye(3, dtype=np.int8)[labels])  # three columns, two class names
    one_line_error(run_cli("inspect", "--skip-bad", str(path)), "3 columns", "2 classes")


# -- momenta -----------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e30, 1e4])  # 1e4: finite squares, so the fast scan must catch it
def test_absurd_momentum_is_refused(tmp_path, scale):
    chunk = random_chunk(40, 20)
    chunk.p4[7, 0] *= scale
    assert not all_good_and_sorted(chunk)
    _, counts = validate_and_sort(chunk, None, skip_bad=True)
    assert counts == {"momentum_out_of_range": 1}
    path = tmp_path / "a.h5"
    write_jets(path, [chunk], "hepfm")
    with pytest.raises(HepfmInputError, match=f"jet 7: .*above {MAX_MOMENTUM:g} GeV"):
        open_source(path).read(0, 40)


def test_momenta_just_below_the_limit_pass():
    chunk = random_chunk(40, 20)
    chunk.p4[:, :1] *= np.float32(0.9 * MAX_MOMENTUM / np.abs(chunk.p4[:, :1]).max())
    assert validate_and_sort(chunk, None)[1] == {}


# -- disk full ---------------------------------------------------------------------------------
def file_size_limit(n_bytes: int) -> Callable[[], None]:
    """``preexec_fn``: writes past ``n_bytes`` fail with EFBIG, as on a full disk (no SIGXFSZ kill)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))

    return limit


def assert_full_disk_is_one_line(src: Path, fmt: str, limit: int, out_dir: Path) -> None:
    out_dir.mkdir()
    out = out_dir / "o"
    r = run_cli("convert", str(src), "--to", fmt, "--out", str(out), preexec_fn=file_size_limit(limit))
    one_line_error(r, str(out), "cannot write output", "File too large")
    assert list(out_dir.iterdir()) == []  # no temporary file, no lock file


@pytest.mark.parametrize(
    ("fmt", "limit"),
    [("hepfm", 4_000), ("hepfm", 300_000), ("toptag-h5", 100_000), ("jetclass-root", 100_000)],
)
def test_full_disk_while_converting_is_one_line_and_leaves_nothing(tmp_path, fmt, limit):
    src = jets_file(tmp_path / "in.h5", n=2000)  # ~0.4 MB as hepfm, more in the other layouts
    assert_full_disk_is_one_line(src, fmt, limit, tmp_path / "out")


def test_full_disk_when_hdf5_closes_the_file(tmp_path):
    """The jets fit but HDF5's last writes, when it closes the file, do not: the error is raised after
    the close (:func:`~hepfm.data.formats.hepfm_h5.h5_output`), not in the writer's own flushes."""
    src = jets_file(tmp_path / "in.h5", n=10)
    full = tmp_path / "full.h5"
    assert main(["convert", str(src), "--to", "hepfm", "--out", str(full)]) == 0
    assert_full_disk_is_one_line(src, "hepfm", full.stat().st_size - 2000, tmp_path / "out")


def test_deferred_error_file_keeps_writes_after_a_failure(tmp_path):
    """What HDF5 writes after the failure stays readable (it may read it back while closing)."""
    code = (
        "from hepfm.data.formats.hepfm_h5 import DeferredErrorFile\n"
        f"raw = DeferredErrorFile({str(tmp_path / 'x')!r})\n"
        "raw.write(b'a' * 800); raw.write(b'b' * 800); raw.seek(100); raw.write(b'c' * 10)\n"
        "raw.seek(0); data = raw.read()\n"
        "assert data == b'a' * 100 + b'c' * 10 + b'a' * 690 + b'b' * 800, data\n"
        "raw.close(); raw.raise_error()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                       preexec_fn=file_size_limit(1000))
    assert r.returncode == 1, r.stderr
    assert "OSError: [Errno 27] File too large" in r.stderr, r.stderr


# -- hepfm convert -----------------------------------------------------------------------------
def test_convert_refuses_labeled_and_unlabeled_inputs_together(tmp_path, capsys):
    a = jets_file(tmp_path / "a.h5")
    b = jets_file(tmp_path / "b.h5", class_names=None)
    out = tmp_path / "o.h5"
    assert main(["convert", str(a), str(b), "--to", "hepfm", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{b}: has no labels but {a} has" in err
    assert not out.exists()


def test_convert_refuses_its_input_as_output(tmp_path, capsys):
    path = jets_file(tmp_path / "x.h5")
    before = path.read_bytes()
    (tmp_path / "sub").mkdir()
    same = tmp_path / "sub" / ".." / "x.h5"
    assert main(["convert", str(path), "--to", "hepfm", "--out", str(same), "--max-jets", "10"]) == 2
    assert "is also an input" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_convert_refuses_an_unusable_output_before_reading(tmp_path, capsys):
    missing = str(tmp_path / "missing.h5")  # never opened: the output is refused first
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    cases = ((tmp_path / "dir", "is a directory"), (tmp_path / "file" / "o.h5", "is a file, not a folder"))
    for out, msg in cases:
        assert main(["convert", missing, "--to", "hepfm", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert msg in err
        assert "not found" not in err


def test_convert_refuses_an_output_another_convert_is_writing(tmp_path, capsys):
    src = jets_file(tmp_path / "a.h5")
    out = tmp_path / "o.h5"
    with output_lock(out, directory=False):  # as a first convert holds it
        assert main(["convert", str(src), "--to", "hepfm", "--out", str(out)]) == 2
    assert "another hepfm process is writing to this output" in capsys.readouterr().err
    assert not out.exists()
    assert main(["convert", str(src), "--to", "hepfm", "--out", str(out)]) == 0


# -- closed output pipe --------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["inspect", "--json"], ["inspect"]])
def test_closed_pipe_is_a_quiet_exit(tmp_path, args):
    """``hepfm inspect --json FILE | head -c 100``: the reader leaves before hepfm writes."""
    path = jets_file(tmp_path / "a.h5")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered
    with subprocess.Popen([sys.executable, "-c", CLI, *args, str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env) as p:
        p.stdout.close()
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) == 0
    assert err == ""
