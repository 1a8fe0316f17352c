"""``hepfm convert``: the same jets, labels and order in every format; bad input loses nothing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from _factories import random_chunk

from hepfm.cli import main
from hepfm.data.formats import detect_format, open_source, write_jets
from hepfm.data.jets import JETCLASS_CLASSES, TOPTAG_CLASSES


def _sorted(p4):
    return p4[np.lexsort(p4.T)]


def _all(path):
    src = open_source(path)
    return src, src.read(0, len(src))


@pytest.mark.parametrize("target", ["jetclass-root", "toptag-h5", "hepfm"])
def test_round_trip_keeps_jets_labels_and_order(tmp_path, target):
    a = random_chunk(70, 20, class_names=TOPTAG_CLASSES, seed=3, mean_particles=9, min_particles=2)
    b = random_chunk(50, 20, class_names=TOPTAG_CLASSES, seed=4, mean_particles=9, min_particles=2)
    write_jets(tmp_path / "a.h5", [a], "hepfm", {})
    write_jets(tmp_path / "b.h5", [b], "toptag-h5", {})
    out = tmp_path / f"out.{'root' if target == 'jetclass-root' else 'h5'}"
    assert (
        main(["convert", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "--to", target, "--out", str(out)])
        == 0
    )
    assert detect_format(out) == target
    src, got = _all(out)
    assert len(src) == 120
    assert src.class_names == TOPTAG_CLASSES
    np.testing.assert_array_equal(got.label, np.concatenate([a.label, b.label]))
    for i, (chunk, j) in enumerate(((a, 0), (a, 69), (b, 0), (b, 49))):
        k = j + (70 if chunk is b else 0)
        want = chunk.p4[j][chunk.mask[j]]
        have = got.p4[k][got.mask[k]]
        # the JetClass layout sorts particles by pT; compare as sets of four-vectors
        np.testing.assert_allclose(_sorted(have), _sorted(want), rtol=1e-6, atol=1e-4, err_msg=f"jet {i}")
    assert "converted_from" in src.metadata


def test_max_jets_and_multiclass(tmp_path):
    c = random_chunk(40, 10, class_names=JETCLASS_CLASSES, seed=5, mean_particles=5, min_particles=2)
    write_jets(tmp_path / "jc.root", [c], "jetclass-root", {})
    assert main(["convert", str(tmp_path / "jc.root"), "--to", "hepfm", "--out", str(tmp_path / "o.h5"),
                 "--max-jets", "25"]) == 0
    src, got = _all(tmp_path / "o.h5")
    assert len(src) == 25
    assert src.class_names == JETCLASS_CLASSES
    np.testing.assert_array_equal(got.label, c.label[:25])


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "hepfm.cli", *args], capture_output=True, text=True, check=False
    )


def test_bad_input_one_line_and_no_output(tmp_path):
    c = random_chunk(30, 10, class_names=TOPTAG_CLASSES, seed=6, mean_particles=5, min_particles=2)
    c.p4[17, 1, 0] = np.nan
    write_jets(tmp_path / "bad.h5", [c], "hepfm", {})
    out = tmp_path / "out.root"
    r = _cli("convert", str(tmp_path / "bad.h5"), "--to", "jetclass-root", "--out", str(out))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().split("\n")) == 1
    assert "jet 17" in r.stderr
    assert "bad.h5" in r.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.h5"]
    r = _cli("convert", str(tmp_path / "missing.h5"), "--to", "hepfm", "--out", str(tmp_path / "o.h5"))
    assert r.returncode == 2
    assert "missing.h5" in r.stderr
    assert len(r.stderr.strip().split("\n")) == 1


def test_inputs_with_different_classes_are_refused(tmp_path):
    write_jets(tmp_path / "t.h5", [random_chunk(10, 5, class_names=TOPTAG_CLASSES, seed=1)], "hepfm", {})
    write_jets(tmp_path / "j.h5", [random_chunk(10, 5, class_names=JETCLASS_CLASSES, seed=1)], "hepfm", {})
    r = _cli("convert", str(tmp_path / "t.h5"), str(tmp_path / "j.h5"), "--to", "hepfm",
             "--out", str(tmp_path / "o.h5"))
    assert r.returncode == 2
    assert "different classes" in r.stderr


def test_long_jets_are_not_capped(tmp_path):
    c = random_chunk(20, 150, class_names=TOPTAG_CLASSES, seed=8, mean_particles=140, min_particles=130)
    write_jets(tmp_path / "long.h5", [c], "hepfm", {})
    assert main(["convert", str(tmp_path / "long.h5"), "--to", "jetclass-root",
                 "--out", str(tmp_path / "l.root")]) == 0
    got = open_source(tmp_path / "l.root", max_particles=None).read(0, 20)
    np.testing.assert_array_equal(got.mask.sum(1), c.mask.sum(1))  # no particle lost to a reader's cap
