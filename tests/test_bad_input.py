"""Broken input: every case gives one line naming the file and the problem (library and CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import pandas as pd
import pytest
import uproot
from _factories import jetclass_chunk, random_chunk

from hepfm.data.formats import open_source, write_jets
from hepfm.data.inspect import inspect_files
from hepfm.data.jets import JETCLASS_CLASSES, TOPTAG_CLASSES, JetChunk
from hepfm.data.validate import check_chunk
from hepfm.errors import HepfmInputError

CLI = "import sys, hepfm.cli as c; c.SUBCOMMANDS = ('inspect',); sys.exit(c.main(sys.argv[1:]))"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CLI, "inspect", *args], capture_output=True, text=True, timeout=120
    )


# -- builders: each writes one broken file and returns its path ---------------------------------
def top_df(chunk: JetChunk, labels=None) -> pd.DataFrame:
    cols = {}
    for i in range(chunk.max_particles):
        for comp, c in (("E", 3), ("PX", 0), ("PY", 1), ("PZ", 2)):
            cols[f"{comp}_{i}"] = chunk.p4[:, i, c]
    cols["ttv"] = np.zeros(len(chunk), np.int64)
    cols["is_signal_new"] = chunk.label if labels is None else np.asarray(labels)
    return pd.DataFrame(cols)


def root_tree(path: Path, data: dict) -> None:
    with uproot.recreate(path) as f:
        t = f.mktree("tree", {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()})
        t.extend(data)


def jetclass_data(chunk: JetChunk) -> dict:
    m = chunk.mask
    n = m.sum(1)
    data = {
        b: ak.unflatten(chunk.p4[..., c][m], n)
        for c, b in enumerate(("part_px", "part_py", "part_pz", "part_energy"))
    }
    for i, k in enumerate(JETCLASS_CLASSES):
        data[f"label_{k}"] = (chunk.label == i).astype(np.int32)
    return data


def with_bad_jet(chunk: JetChunk, i: int, how: str) -> JetChunk:
    c = JetChunk(p4=chunk.p4.copy(), mask=chunk.mask.copy(), label=chunk.label, class_names=chunk.class_names)
    if how == "nan":
        c.p4[i, 1, 0] = np.nan
    elif how == "inf":
        c.p4[i, 0, 3] = np.inf
    elif how == "empty":
        c.p4[i] = 0
        c.mask[i] = False
    elif how == "spacelike":
        c.p4[i, 0, 3] = 0.5 * c.p4[i, 0, 3]
    elif how == "negative":
        c.p4[i, 1, 3] = -c.p4[i, 1, 3]
    return c


def good(n=30, seed=0, classes=TOPTAG_CLASSES) -> JetChunk:
    return random_chunk(n, 12, class_names=classes, seed=seed, mean_particles=8, min_particles=3)


def make_missing(tmp: Path) -> Path:
    return tmp / "does_not_exist.h5"


def make_text(tmp: Path) -> Path:
    p = tmp / "notes.h5"
    p.write_text("E_0,PX_0\n1,2\n")
    return p


def make_random_bytes(tmp: Path) -> Path:
    p = tmp / "noise.root"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return p


def make_empty(tmp: Path) -> Path:
    p = tmp / "empty.h5"
    p.write_bytes(b"")
    return p


def _good_file(tmp: Path, fmt: str) -> Path:
    p = tmp / f"good_{fmt}"
    if fmt == "jetclass-root":
        write_jets(p, [jetclass_chunk(3000, 30, seed=2)], fmt, {})
    else:
        write_jets(p, [random_chunk(3000, 30, seed=2)], fmt, {})
    return p


def make_truncated(fmt: str) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        data = _good_file(tmp, fmt).read_bytes()
        p = tmp / f"truncated_{fmt}"
        p.write_bytes(data[: len(data) // 2])
        return p

    return build


def make_corrupted(fmt: str) -> Callable[[Path], Path]:
    """Random bytes over part of the data the reader needs (10% of the file in the middle; for ROOT,
    inside the part_px basket)."""

    def build(tmp: Path) -> Path:
        src = _good_file(tmp, fmt)
        b = bytearray(src.read_bytes())
        if fmt == "jetclass-root":
            branch = uproot.open(src)["tree"]["part_px"]
            start = int(branch.member("fBasketSeek")[0]) + 200
            width = 2000
        else:
            width = len(b) // 10
            start = len(b) // 2 - width // 2
        b[start : start + width] = np.random.default_rng(1).integers(0, 256, width, dtype=np.uint8).tobytes()
        p = tmp / f"corrupted_{fmt}"
        p.write_bytes(bytes(b))
        return p

    return build


def make_unknown_hdf5(tmp: Path) -> Path:
    p = tmp / "other.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("images", data=np.zeros((4, 8, 8)))
    return p


def make_root_without_tree(tmp: Path) -> Path:
    p = tmp / "hist.root"
    with uproot.recreate(p) as f:
        f["h"] = np.histogram(np.arange(10.0), bins=3)
    return p


def make_missing_column(tmp: Path) -> Path:
    p = tmp / "nopx3.h5"
    top_df(good()).drop(columns=["PX_3"]).to_hdf(p, key="table", mode="w")
    return p


def make_missing_branch(tmp: Path) -> Path:
    p = tmp / "nopx.root"
    data = jetclass_data(good(classes=JETCLASS_CLASSES))
    del data["part_px"]
    root_tree(p, data)
    return p


def make_missing_label_branch(tmp: Path) -> Path:
    p = tmp / "nolabel_tbl.root"
    data = jetclass_data(good(classes=JETCLASS_CLASSES))
    del data["label_Tbl"]
    root_tree(p, data)
    return p


def make_bad_jet(fmt: str, how: str) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        classes = JETCLASS_CLASSES if fmt == "jetclass-root" else TOPTAG_CLASSES
        c = with_bad_jet(good(classes=classes), 17, how)
        p = tmp / f"{how}_{fmt}"
        with np.errstate(all="ignore"):
            write_jets(p, [c], fmt, {})
        return p

    return build


def make_top_hole(tmp: Path) -> Path:
    c = good()
    c.p4[9, 1] = 0  # a zero slot between real particles
    p = tmp / "hole.h5"
    top_df(c).to_hdf(p, key="table", mode="w")
    return p


def make_top_label_2(tmp: Path) -> Path:
    c = good()
    labels = c.label.copy()
    labels[11] = 2
    p = tmp / "label2.h5"
    top_df(c, labels).to_hdf(p, key="table", mode="w", format="table")
    return p


def make_jetclass_labels(which: str) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        data = jetclass_data(good(classes=JETCLASS_CLASSES))
        lab = data["label_Hbb"].copy()
        if which == "two":
            lab[5] = 1
            data["label_QCD"] = data["label_QCD"].copy()
            data["label_QCD"][5] = 1
            data["label_Hbb"] = lab
        else:
            for k in JETCLASS_CLASSES:
                arr = data[f"label_{k}"].copy()
                arr[5] = 0
                data[f"label_{k}"] = arr
        p = tmp / f"labels_{which}.root"
        root_tree(p, data)
        return p

    return build


def make_newer_schema(tmp: Path) -> Path:
    p = tmp / "future.h5"
    write_jets(p, [good()], "hepfm", {})
    with h5py.File(p, "a") as f:
        f.attrs["hepfm_schema"] = 99
    return p


CASES = {
    "missing file": (make_missing, ["file not found"]),
    "text file": (make_text, ["not an HDF5, ROOT or Parquet file"]),
    "random bytes": (make_random_bytes, ["not an HDF5, ROOT or Parquet file"]),
    "empty file": (make_empty, ["file is empty"]),
    "truncated hepfm": (make_truncated("hepfm"), ["truncated or corrupted"]),
    "truncated top": (make_truncated("toptag-h5"), ["truncated or corrupted"]),
    "truncated jetclass": (make_truncated("jetclass-root"), ["truncated or corrupted"]),
    "corrupted hepfm": (make_corrupted("hepfm"), ["truncated or corrupted"]),
    # no checksums in the pandas layout: the random bytes surface as invalid jets (NaN/inf,
    # holes in the padding, E < |p|, ...), the first of which is reported
    "corrupted top": (make_corrupted("toptag-h5"), ["jet ", "more bad jets"]),
    "corrupted jetclass": (make_corrupted("jetclass-root"), ["truncated or corrupted"]),
    "unknown hdf5 layout": (make_unknown_hdf5, ["no known jet layout"]),
    "root without tree": (make_root_without_tree, ["no TTree or RNTuple 'tree'", "holds: h (TH1D)"]),
    "missing column PX_3": (make_missing_column, ["missing column PX_3"]),
    "missing branch part_px": (make_missing_branch, ["missing branch part_px"]),
    "missing branch label_Tbl": (make_missing_label_branch, ["missing branch label_Tbl"]),
    "nan hepfm": (make_bad_jet("hepfm", "nan"), ["jet 17", "NaN or inf"]),
    "nan top": (make_bad_jet("toptag-h5", "nan"), ["jet 17", "NaN or inf"]),
    "nan jetclass": (make_bad_jet("jetclass-root", "nan"), ["jet 17", "NaN or inf"]),
    "inf top": (make_bad_jet("toptag-h5", "inf"), ["jet 17", "NaN or inf"]),
    "empty jet hepfm": (make_bad_jet("hepfm", "empty"), ["jet 17", "no constituents"]),
    "empty jet top": (make_bad_jet("toptag-h5", "empty"), ["jet 17", "no constituents"]),
    "empty jet jetclass": (make_bad_jet("jetclass-root", "empty"), ["jet 17", "no constituents"]),
    "E < |p|": (make_bad_jet("hepfm", "spacelike"), ["jet 17", "energy below"]),
    "negative energy": (make_bad_jet("toptag-h5", "negative"), ["jet 17", "negative energy"]),
    "top mask hole": (make_top_hole, ["jet 9", "padding slot between real particles"]),
    "top is_signal_new = 2": (make_top_label_2, ["jet 11", "is_signal_new is neither 0 nor 1"]),
    "jetclass two labels": (make_jetclass_labels("two"), ["jet 5", "not exactly one-hot"]),
    "jetclass no label": (make_jetclass_labels("none"), ["jet 5", "not exactly one-hot"]),
    "newer schema": (make_newer_schema, ["schema 99", "upgrade hepfm"]),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bad")
    return {name: build(tmp) for name, (build, _) in CASES.items()}


def _read_all(path: Path) -> None:
    src = open_source(path)
    for start in range(0, len(src), 1000):
        src.read(start, start + 1000)


@pytest.mark.parametrize("case", list(CASES))
def test_library_raises_one_line(bad_files, case):
    path = bad_files[case]
    expected = CASES[case][1]
    for fn in (_read_all, lambda p: inspect_files([str(p)])):
        with pytest.raises(HepfmInputError) as info:
            fn(path)
        msg = str(info.value)
        assert "\n" not in msg
        assert str(path) in msg
        assert info.value.path == str(path)
        for text in expected:
            assert text in msg, msg


@pytest.mark.parametrize("case", list(CASES))
def test_cli_one_line_exit_2(bad_files, case):
    path = bad_files[case]
    r = run_cli(str(path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip("\n").split("\n")
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("hepfm inspect: error: ")
    assert str(path) in lines[0]
    for text in CASES[case][1]:
        assert text in lines[0], lines[0]
    assert r.stdout == ""


def test_forced_format_of_the_wrong_container(tmp_path):
    path = tmp_path / "a.root"
    write_jets(path, [good(classes=JETCLASS_CLASSES)], "jetclass-root", {})
    with pytest.raises(
        HepfmInputError, match="format 'toptag-h5' needs an HDF5 file, but this is a ROOT file"
    ):
        open_source(path, format="toptag-h5")
    with pytest.raises(HepfmInputError, match="unknown data format 'csv'"):
        open_source(path, format="csv")
    r = run_cli(str(path), "--format", "hepfm")
    assert r.returncode == 2
    assert "needs an HDF5 file" in r.stderr
    assert len(r.stderr.strip().split("\n")) == 1


def test_glob_matching_nothing(tmp_path):
    r = run_cli(str(tmp_path / "nothing_*.h5"))
    assert r.returncode == 2
    assert "no file matches" in r.stderr
    assert len(r.stderr.strip().split("\n")) == 1


# -- skipping ----------------------------------------------------------------------------------
def mixed_chunk() -> tuple[JetChunk, dict[str, int]]:
    c = good(n=40, seed=3)
    c = with_bad_jet(c, 2, "nan")
    for i in (5, 6, 30):
        c = with_bad_jet(c, i, "empty")
    c = with_bad_jet(c, 8, "spacelike")
    c.label = c.label.copy()
    return c, {"nonfinite": 1, "empty": 3, "energy_below_momentum": 1}


@pytest.mark.parametrize("fmt", ["hepfm", "toptag-h5", "jetclass-root"])
def test_skip_bad_counts(tmp_path, fmt):
    c, expected = mixed_chunk()
    if fmt == "jetclass-root":
        c.class_names = JETCLASS_CLASSES
    path = tmp_path / f"mixed_{fmt}"
    with np.errstate(all="ignore"):
        write_jets(path, [c], fmt, {})
    s = inspect_files([str(path)], skip_bad=True, chunk_size=7)
    f = s["files"][0]
    assert f["bad"] == expected
    assert f["n_bad"] == 5
    assert f["n_good"] == 35
    assert f["n_read"] == 40
    assert s["total"]["bad"] == expected
    keep = np.setdiff1d(np.arange(40), [2, 5, 6, 30, 8])
    assert sum(f["class_counts"].values()) == 35
    assert f["class_counts"][c.class_names[1]] == int((c.label[keep] == 1).sum())
    # the reader option does the same and keeps the good jets exactly
    src = open_source(path, skip_bad=True, max_particles=12)
    got = src.read(0, 40)
    assert src.bad_counts == expected
    np.testing.assert_array_equal(got.p4, c.p4[keep])
    np.testing.assert_array_equal(got.label, c.label[keep])
    # and the CLI reports the counts
    r = run_cli(str(path), "--skip-bad", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files"][0]["bad"] == expected
    r = run_cli(str(path), "--skip-bad")
    assert r.returncode == 0
    assert "empty 3" in r.stdout
    assert "nonfinite 1" in r.stdout
    # without --skip-bad: the first bad jet, with its index in the file
    r = run_cli(str(path), "--chunk-size", "7")
    assert r.returncode == 2
    assert "jet 2: NaN or inf" in r.stderr


def test_check_chunk_global_index_and_precedence():
    c = with_bad_jet(good(n=10), 4, "empty")
    c = with_bad_jet(c, 7, "nan")
    with pytest.raises(HepfmInputError, match=r"f\.h5: jet 104: jet has no constituents \(1 more bad jets"):
        check_chunk(c, "f.h5", skip_bad=False, offset=100)
    out, counts = check_chunk(c, "f.h5", skip_bad=True)
    assert counts == {"nonfinite": 1, "empty": 1}
    assert len(out) == 8
    clean, counts = check_chunk(good(n=10), "f.h5", skip_bad=False)
    assert counts == {}
    assert len(clean) == 10
    # padding that is not zero, and labels outside the classes
    d = good(n=5)
    d.p4[1, -1] = [1.0, 0.0, 0.0, 2.0]
    d.mask[1, -1] = False
    d.label = d.label.copy()
    d.label[3] = 7
    _, counts = check_chunk(d, None, skip_bad=True)
    assert counts == {"padding_not_zero": 1, "label_out_of_range": 1}


# -- the fast scan agrees with the exact checks ---------------------------------------------------
def _exact(chunk: JetChunk, skip_bad: bool):
    from hepfm.data.validate import sort_by_pt

    return check_chunk(sort_by_pt(chunk), "f.h5", skip_bad=skip_bad, offset=10)


def _defect(c: JetChunk, i: int, kind: str, rng) -> None:
    k = int(c.mask[i].sum())
    j = int(rng.integers(0, k))
    p = c.p4[i, j]
    pnorm = float(np.sqrt((p[:3].astype(np.float64) ** 2).sum()))
    pad = min(k, c.max_particles - 1)  # the first padding slot (jets of the factory are never full)
    if kind == "nan_pad":
        c.p4[i, pad, 2] = np.nan
    elif kind == "pad_nonzero":
        c.p4[i, pad, 0] = 1e-30
    elif kind == "inf_e":
        c.p4[i, j, 3] = np.inf
    elif kind == "ninf_px":
        c.p4[i, j, 0] = -np.inf
    elif kind == "huge":  # E and |p| overflow float32 when squared
        c.p4[i, j] = [3e19, 0.0, 3e21, 3e19]
    elif kind == "e_just_below":  # |p| - E just beyond the tolerance: bad
        c.p4[i, j, 3] = np.float32(pnorm - (1e-3 * pnorm + 1e-4) * 1.01)
    elif kind == "e_just_within":  # just inside the tolerance: good
        c.p4[i, j, 3] = np.float32(pnorm - (1e-3 * pnorm + 1e-4) * 0.99)
    elif kind == "neg_zero_e":
        c.p4[i, j] = [0.0, 0.0, 0.0, -0.0]
    elif kind == "neg_e":
        c.p4[i, j, 3] = -1e-6
    elif kind == "swap":  # two particles out of pT order
        if k > 1:
            c.p4[i, [0, 1]] = c.p4[i, [1, 0]]
    elif kind == "tie":  # equal pT: already sorted
        if k > 1:
            c.p4[i, 1] = c.p4[i, 0]
    elif kind == "hole":
        if k > 2:
            c.p4[i, 1] = 0
            c.mask[i, 1] = False
    elif kind == "empty":
        c.p4[i] = 0
        c.mask[i] = False
    elif kind == "label":
        c.label[i] = 2
    elif kind == "nan_field":
        c.particles["charge"][i, j] = np.nan
    elif kind == "inf_jet_field":
        c.jets["w"][i] = np.inf


KINDS = ["nan_pad", "pad_nonzero", "inf_e", "ninf_px", "huge", "e_just_below", "e_just_within",
         "neg_zero_e", "neg_e", "swap", "tie", "hole", "empty", "label", "nan_field", "inf_jet_field"]


@pytest.mark.parametrize("kind", KINDS)
def test_fast_scan_agrees_with_exact_checks(kind):
    from hepfm.data.validate import all_good_and_sorted, validate_and_sort

    rng = np.random.default_rng(KINDS.index(kind))
    base = random_chunk(3000, 40, seed=4, particle_fields=True, mean_particles=12)  # > 1 scan block
    base.jets = {"w": np.ones(3000, np.float32)}
    assert all_good_and_sorted(base)
    for rows in ([0], [2999], sorted(rng.choice(3000, 5, replace=False).tolist())):
        c = base.take(slice(None))
        c.particles = {k: v.copy() for k, v in c.particles.items()}
        c.jets = {k: v.copy() for k, v in c.jets.items()}
        c.p4, c.mask, c.label = c.p4.copy(), c.mask.copy(), c.label.copy()
        with np.errstate(all="ignore"):
            for i in rows:
                _defect(c, i, kind, rng)
            want, want_counts = _exact(c, skip_bad=True)
            got, got_counts = validate_and_sort(c, "f.h5", skip_bad=True, offset=10)
            assert got_counts == want_counts
            np.testing.assert_array_equal(got.p4, want.p4)
            np.testing.assert_array_equal(got.mask, want.mask)
            np.testing.assert_array_equal(got.label, want.label)
            try:
                _exact(c, skip_bad=False)
                want_err = None
            except HepfmInputError as err:
                want_err = str(err)
            if want_err is None:
                validate_and_sort(c, "f.h5", skip_bad=False, offset=10)
            else:
                with pytest.raises(HepfmInputError) as info:
                    validate_and_sort(c, "f.h5", skip_bad=False, offset=10)
                assert str(info.value) == want_err
