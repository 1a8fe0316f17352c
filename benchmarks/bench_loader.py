"""Loader throughput: jets/s from disk into padded ``kin`` batches, one core, for each on-disk format.

Writes synthetic jets (Poisson(50) constituents, pT-ordered, |eta| < 2) in every format with
``hepfm.data.formats.write_jets``, opens them with ``open_sources`` and measures, with
``torch.set_num_threads(1)`` and ``num_workers=0``:

* ``read all``: the reader alone (``src.read`` in blocks of ``--chunk`` jets, every field the file
  has), i.e. the I/O + decoding + validation cost;
* ``read kin``: the same reading only what ``kin`` needs, as the loaders do
  (``src.read(a, b, fields=(), jet_fields=())``: four-momenta, particle counts, labels);
* ``stream``: :class:`~hepfm.data.loader.StreamingJetDataset` (shuffled, buffer 65536) to batches
  of 512, ParT's ``max_particles=128``; ``us/jet`` is its CPU time per jet;
* ``stream/novalid``: the same with the readers' per-chunk validation off (``validate=False``);
* ``in-memory``: :class:`~hepfm.data.loader.JetDataset` build (read + features) and one shuffled
  epoch of batches, reported as jets / (build + epoch) seconds.

The hepfm format is written once per ``--hepfm-compression`` spec (default: the writer's default;
e.g. ``--hepfm-compression gzip-1 gzip-4+shuffle lzf`` compares the former default and LZF), each
as a row ``hepfm <spec>``.

A last row, ``memory``, streams the same jets from an in-memory ``ArraySource`` (no I/O): the cost
of the loader itself. Every write and every measurement runs in its own forked process, so each
peak RSS printed is that of one run: streaming (bounded by the shuffle buffer, ~buffer + chunk
jets) or in-memory (holds the whole file's features).

``--compare-compression FILE`` instead measures the codecs per dataset on an existing hepfm file
(e.g. one from ``hepfm generate``): each dataset is rewritten with every spec (1024-jet chunks,
Fletcher-32) and read back in 8192-jet blocks; it prints bytes per jet and CPU microseconds per jet
(best of 7, specs interleaved). This is the measurement behind the writer's default.

Goal: >= 100k jets/s per core for ``kin``. Usage::

    python benchmarks/bench_loader.py [--n-jets 200000] [--formats hepfm toptag-h5 jetclass-root]
        [--hepfm-compression gzip-1 gzip-4+shuffle lzf]
    python benchmarks/bench_loader.py --compare-compression generated.h5 [--slots 128]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hepfm.data.features import get_feature_set
from hepfm.data.formats import ArraySource, open_sources, write_jets
from hepfm.data.formats.hepfm_h5 import DEFAULT_COMPRESSION
from hepfm.data.jets import JETCLASS_CLASSES, PID_FLAGS, TOPTAG_CLASSES, JetChunk
from hepfm.data.loader import JetDataset, make_loader

CLASSES = {"hepfm": JETCLASS_CLASSES, "toptag-h5": TOPTAG_CLASSES, "jetclass-root": JETCLASS_CLASSES}
SLOTS = {"hepfm": 128, "toptag-h5": 200, "jetclass-root": 128}


def synthetic(n: int, n_slots: int, classes: tuple[str, ...], seed: int) -> JetChunk:
    """n jets with Poisson(50) pT-ordered massless constituents around a random axis."""
    rng = np.random.default_rng(seed)
    counts = np.clip(rng.poisson(50, n), 1, n_slots)
    mask = np.arange(n_slots)[None] < counts[:, None]
    pt = -np.sort(-(rng.exponential(10.0, (n, n_slots)) + 0.5), axis=1)
    eta = rng.uniform(-2, 2, (n, 1)) + rng.normal(0, 0.2, (n, n_slots))
    phi = rng.uniform(-np.pi, np.pi, (n, 1)) + rng.normal(0, 0.2, (n, n_slots))
    p4 = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)], -1)
    p4[~mask] = 0
    charge = np.where(mask, rng.integers(-1, 2, (n, n_slots)), 0).astype(np.float32)
    flag = rng.integers(0, len(PID_FLAGS), (n, n_slots))
    particles = {f: ((flag == i) & mask).astype(np.float32) for i, f in enumerate(PID_FLAGS)}
    particles["charge"] = charge
    return JetChunk(p4=p4.astype(np.float32), mask=mask, label=rng.integers(0, len(classes), n),
                    class_names=classes, particles=particles)


def write(fmt: str, path: Path, n: int, options: dict | None = None, block: int = 50_000) -> None:
    chunks = (synthetic(min(block, n - a), SLOTS[fmt], CLASSES[fmt], seed=a) for a in range(0, n, block))
    write_jets(path, chunks, fmt, {"generator": "bench_loader synthetic"}, **(options or {}))


def rate(fn, repeat: int) -> float:
    """Best jets per CPU-second of this process over ``repeat`` runs of ``fn() -> jets``.

    CPU time, not wall time: the work is single-threaded, so this is the per-core rate, and it
    does not drop when other processes share the machine.
    """
    best = 0.0
    for _ in range(repeat):
        t = time.process_time()
        n = fn()
        best = max(best, n / max(time.process_time() - t, 1e-9))
    return best


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_streaming(srcs: list, reopen, args: argparse.Namespace) -> dict[str, float]:
    """``srcs``: opened sources; ``reopen()``: the same sources without validation (or None)."""

    kin = get_feature_set("kin").requires

    def read(**fields) -> int:
        step = args.chunk
        return sum(
            len(s.read(a, min(a + step, len(s)), **fields)) for s in srcs for a in range(0, len(s), step)
        )

    def stream(sources) -> int:
        loader = make_loader(sources, "kin", 512, streaming=True, max_particles=128, chunk_size=args.chunk)
        return sum(len(b) for b in loader)

    out = {
        "read all": rate(read, args.repeat),
        "read kin": rate(lambda: read(fields=kin, jet_fields=()), args.repeat),
        "stream": rate(lambda: stream(srcs), args.repeat),
    }
    out["stream/novalid"] = rate(lambda: stream(reopen()), args.repeat) if reopen else float("nan")
    return out


def bench_in_memory(srcs: list) -> float:
    def in_memory() -> int:
        ds = JetDataset(srcs, "kin", max_particles=128)
        return sum(len(b) for b in make_loader(ds, batch_size=512))

    return rate(in_memory, 1)


def in_child(fn, *args):
    """Run ``fn(*args)`` in a forked child; returns (its result, its peak RSS in MB)."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def target() -> None:
        out = fn(*args)
        send.send((out, peak_rss_mb()))

    proc = ctx.Process(target=target)
    proc.start()
    result = recv.recv()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"benchmark child failed (exit code {proc.exitcode})")
    return result


def write_all(targets: dict[str, tuple[str, dict]], paths: dict[str, Path], n: int) -> dict[str, float]:
    """Write every file in a child process (the writers' memory must not count); returns seconds."""
    took = {}
    for name, (fmt, options) in targets.items():
        t = time.perf_counter()
        in_child(write, fmt, paths[name], n, options)
        took[name] = time.perf_counter() - t
    return took


def memory_row(args: argparse.Namespace) -> dict[str, float]:
    block = 20_000  # the reference jets, built in blocks to keep the generator's temporaries small
    mem = ArraySource(JetChunk.concat([synthetic(min(block, args.n_jets - a), 128, JETCLASS_CLASSES, a)
                                       for a in range(0, args.n_jets, block)]))
    out = bench_streaming([mem], None, args)
    out["read all"] = out["read kin"] = float("nan")
    out["in-memory"] = bench_in_memory([mem])
    return out


COMPARE_SPECS = ("gzip-4+shuffle", "gzip-1", "gzip-1+shuffle", "lzf", "lzf+shuffle")


def compare_compression(path: Path, slots: int | None, repeat: int = 7) -> None:
    """Per dataset of a hepfm file: size and read CPU time for each codec (see the module doc)."""
    import h5py

    from hepfm.data.formats.hepfm_h5 import compression_options

    with h5py.File(path, "r") as f:
        names = ["p4", *(f"particles/{k}" for k in sorted(f.get("particles", {})))]
        data = {k: f[k][:, :slots] if slots else f[k][:] for k in names}
    n = len(data["p4"])
    print(f"{path}: {n:,} jets, {data['p4'].shape[1]} slots; bytes/jet on disk, CPU us/jet to read "
          f"(8192-jet blocks, best of {repeat})")
    print(f"{'dataset':<28} " + " ".join(f"{spec:>22}" for spec in COMPARE_SPECS))
    with tempfile.TemporaryDirectory() as tmp:
        for name, arr in data.items():
            files = {}
            for spec in COMPARE_SPECS:
                out = Path(tmp) / f"{spec.replace('+', '_')}.h5"
                with h5py.File(out, "w") as g:
                    g.create_dataset("x", data=arr, chunks=(min(1024, n), *arr.shape[1:]), fletcher32=True,
                                     **compression_options(spec))
                    files[spec] = (out, g["x"].id.get_storage_size() / n)
            best = dict.fromkeys(COMPARE_SPECS, np.inf)
            for _ in range(repeat):
                for spec, (out, _) in files.items():
                    with h5py.File(out, "r") as g:
                        ds = g["x"]
                        t = time.process_time()
                        for a in range(0, n, 8192):
                            ds[a : a + 8192]
                        best[spec] = min(best[spec], time.process_time() - t)
            cells = [f"{files[sp][1]:7.0f} B {best[sp] / n * 1e6:6.2f} us" for sp in COMPARE_SPECS]
            print(f"{name:<28} " + " ".join(f"{c:>22}" for c in cells), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-jets", type=int, default=200_000)
    ap.add_argument("--formats", nargs="+", default=["hepfm", "toptag-h5", "jetclass-root"])
    ap.add_argument("--hepfm-compression", nargs="+", default=[DEFAULT_COMPRESSION],
                    help="compression specs of the hepfm files (one row each)")
    ap.add_argument("--chunk", type=int, default=8192, help="jets per read (the streaming unit)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the files (default: a temp dir)")
    ap.add_argument("--compare-compression", type=Path, default=None, metavar="FILE",
                    help="only compare codecs per dataset on this hepfm file")
    ap.add_argument("--slots", type=int, default=None,
                    help="with --compare-compression: keep this many particle slots")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.compare_compression is not None:
        compare_compression(args.compare_compression, args.slots)
        return 0
    base = peak_rss_mb()

    targets: dict[str, tuple[str, dict]] = {}
    for fmt in args.formats:
        if fmt == "hepfm":
            for spec in args.hepfm_compression:
                targets[f"hepfm {spec}"] = (fmt, {"compression": spec})
        else:
            targets[fmt] = (fmt, {})
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        paths = {
            name: root / (f"bench_{name.replace(' ', '_').replace('+', '_')}."
                          + ("root" if fmt == "jetclass-root" else "h5"))
            for name, (fmt, _) in targets.items()
        }
        wrote = write_all(targets, paths, args.n_jets)
        sizes = {name: p.stat().st_size / 2**20 for name, p in paths.items()}
        for name, path in paths.items():
            files = [str(path)]
            results[name], rss = in_child(
                lambda n=files: bench_streaming(
                    open_sources(n), lambda: open_sources(n, validate=False), args
                )
            )
            results[name]["rss stream"] = rss
            results[name]["in-memory"], results[name]["rss in-memory"] = in_child(
                lambda n=files: bench_in_memory(open_sources(n))
            )
            print(f"  {name}: done", file=sys.stderr, flush=True)
        results["memory"], rss = in_child(memory_row, args)
        results["memory"]["rss stream"] = results["memory"]["rss in-memory"] = rss

    print(f"\nkin batches of 512, max_particles=128, {args.n_jets:,} jets/file, 1 thread, num_workers=0; "
          "jets per CPU-second (us/jet: CPU time per jet of 'stream'); peak RSS of a fresh process per "
          "run (MB)")
    print(f"{'format':<22} {'MB':>7} {'B/jet':>6} {'write s':>8} {'read all':>10} {'read kin':>10} "
          f"{'stream':>9} {'us/jet':>7} {'stream/noval':>13} {'in-memory':>10} {'RSS stream':>11} "
          f"{'RSS in-mem':>11}")
    for name, r in results.items():
        if name in sizes:
            mb = f"{sizes[name]:7.1f} {sizes[name] * 2**20 / args.n_jets:6.0f} {wrote[name]:8.1f}"
        else:
            mb = f"{'-':>7} {'-':>6} {'-':>8}"
        print(f"{name:<22} {mb} {r['read all']:10,.0f} {r['read kin']:10,.0f} {r['stream']:9,.0f} "
              f"{1e6 / r['stream']:7.2f} {r['stream/novalid']:13,.0f} {r['in-memory']:10,.0f} "
              f"{r['rss stream']:11.0f} {r['rss in-memory']:11.0f}")
    print(f"(the bare process after imports: {base:.0f} MB; the memory row's RSS includes its "
          f"{args.n_jets:,}-jet source)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
