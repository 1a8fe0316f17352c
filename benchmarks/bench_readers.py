"""Reading rate of the layouts hepfm reads but does not write: CMS NanoAOD / PFNano (PFNano TTree,
NanoAOD v15 names in an RNTuple), Aspen Open Jets HDF5, and JetClass-II (ROOT and Parquet).

    python benchmarks/bench_readers.py --n-jets 20000

Each file is written the way its producer writes it (tests/_producers.py) from the same synthetic
jets (Poisson(50) constituents; two jets per NanoAOD event, plus one jet without constituents and
3 unassociated candidates). Rates are jets per CPU-second of one core (best of ``--repeat``), each
run opening the files afresh (opening included, no reader cache carried over): ``read all`` =
``src.read`` of every field in 8192-jet blocks; ``read kin`` = only what the ``kin`` features
need; ``stream`` = the streaming loader into shuffled, padded ``kin`` batches of 512 (128 slots).
The real PFNano file of ../shared/data/real (24 AK8 + 64 AK4 jets, 1,802 branches) is timed too
when present: at that size its rate is the cost of opening a NanoAOD file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _producers import write_aspen, write_jetclass2, write_nanoaod
from bench_loader import rate, synthetic

from hepfm.data.features import get_feature_set
from hepfm.data.formats import open_sources
from hepfm.data.jets import JETCLASS_CLASSES, JetChunk
from hepfm.data.loader import make_loader


def cms_jets(n: int, seed: int) -> JetChunk:
    """Synthetic jets with the per-particle fields CMS files carry (pdgId, impact parameters)."""
    c = synthetic(n, 128, JETCLASS_CLASSES, seed)
    rng = np.random.default_rng(seed + 1)
    m = c.mask
    charged = c.particles["charge"] != 0
    c.particles["pid"] = np.where(m, np.where(charged, 211 * c.particles["charge"], 22), 0).astype(np.int32)
    c.particles["isPhoton"] = (m & ~charged).astype(np.float32)
    for k, scale in (("d0val", 0.05), ("dzval", 0.05), ("d0err", 0.02), ("dzerr", 0.02)):
        c.particles[k] = (np.abs(rng.normal(0, scale, m.shape)) * charged * m).astype(np.float32)
    return c


def bench(paths: list[str], repeat: int, chunk: int = 8192) -> dict[str, float]:
    """Rates with the files opened afresh in every run (opening included; no reader cache carried over)."""
    kin = get_feature_set("kin").requires

    def read(**fields) -> int:
        return sum(len(s.read(a, min(a + chunk, len(s)), **fields))
                   for s in open_sources(paths) for a in range(0, len(s), chunk))

    def stream() -> int:
        loader = make_loader(open_sources(paths), "kin", 512, streaming=True, max_particles=128,
                             chunk_size=chunk)
        return sum(len(b) for b in loader)

    return {"jets": sum(len(s) for s in open_sources(paths)), "read all": rate(read, repeat),
            "read kin": rate(lambda: read(fields=kin, jet_fields=()), repeat), "stream": rate(stream, repeat)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-jets", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    jets = cms_jets(args.n_jets, seed=1)
    labels = np.arange(args.n_jets) % 188
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        files = {
            "nanoaod (PFNano, TTree)": (d / "pfnano.root", lambda p: write_nanoaod(p, jets)),
            "nanoaod (v15, RNTuple)": (d / "v15.root", lambda p: write_nanoaod(p, jets, scheme="v15",
                                                                               container="RNTuple")),
            "aspen-h5": (d / "aoj.h5", lambda p: write_aspen(p, jets)),
            "jetclass-root (JetClass-II)": (d / "jc2.root", lambda p: write_jetclass2(p, jets, labels)),
            "jetclass-parquet (JetClass-II)": (
                d / "jc2.parquet", lambda p: write_jetclass2(p, jets, labels, container="parquet")),
        }
        for name, (path, make) in files.items():
            make(path)
            rows[name] = bench([str(path)], args.repeat) | {"B/jet": path.stat().st_size / args.n_jets}
    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "coffea_pfnano.root"
    if real.exists():
        rows["real coffea_pfnano.root (AK8 + AK4)"] = bench([str(real), f"{real}:Jet"], args.repeat) | {
            "B/jet": float("nan")}
    print("| layout | jets | B/jet | read all | read kin | stream (jets/s/core) |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['jets']:,} | {r['B/jet']:.0f} | {r['read all']:,.0f} | {r['read kin']:,.0f} | "
              f"{r['stream']:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
