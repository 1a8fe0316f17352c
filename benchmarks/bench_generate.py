"""Generation speed: hepfm's shard generator vs a bare Pythia 8 + FastJet loop, per class, one core.

The bare loop is the least any generator must do: ``nextBatch`` events, take visible final-state
particles, cluster them with vectorised FastJet anti-kT. hepfm adds impact parameters, the detector
preset, jet selection, truth matching and constituent gathering; the overhead column is
(hepfm s/event) / (bare s/event) - 1, measured on the same events (same seed) in the same run.

    python benchmarks/bench_generate.py --dataset toptag --events 2000
    python benchmarks/bench_generate.py --dataset jetclass --events 1000 --classes Hbb,Tbqq
    python benchmarks/bench_generate.py --dataset tth --events 1000 --detector cms   (events of objects)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hepfm.generation.processes import DATASETS, PROCESSES
from hepfm.generation.worker import ShardGenerator, ShardTask, pythia_settings


def bare_loop(dataset: str, ci: int, n_events: int, batch: int, seed: int) -> float:
    """Seconds per event of nextBatch + final-state selection + FastJet clustering."""
    import awkward as ak
    import fastjet
    import pythia8mc

    from hepfm.generation.events import RECO
    from hepfm.generation.worker import decay_hook

    spec = DATASETS.get(dataset)
    proc = PROCESSES.get(spec.classes[spec.class_names[ci]])
    py = pythia8mc.Pythia("", False)
    for line in pythia_settings(spec, proc, seed):
        py.readString(line)
    hook = decay_hook(proc.decay_filter) if proc.decay_filter else None
    if hook is not None:
        py.setUserHooksPtr(hook)
    py.init()
    jet_def = fastjet.JetDefinition(fastjet.antikt_algorithm, spec.radius)
    min_pt = RECO.jet_min_pt if spec.events is not None else 0.8 * spec.pt_range[0]
    t0 = time.perf_counter()
    for _ in range(n_events // batch):
        prt = py.nextBatch(batch).prt
        sel = prt[(prt.status > 0) & (abs(prt.id) != 12) & (abs(prt.id) != 14) & (abs(prt.id) != 16)]
        arr = ak.zip({"px": sel.p.px, "py": sel.p.py, "pz": sel.p.pz, "E": sel.p.e})
        fastjet.ClusterSequence(arr, jet_def).inclusive_jets(min_pt=min_pt)
    return (time.perf_counter() - t0) / (n_events // batch * batch)


def hepfm_loop(
    dataset: str, ci: int, n_events: int, batch: int, seed: int, detector: str
) -> tuple[float, float]:
    """(seconds per event, accepted jets (or events) per second) of hepfm's generator on the same events."""
    from hepfm.generation.events import EventShardGenerator, pad_events

    task = ShardTask(dataset, ci, 0, 1, seed, detector, batch)
    t0 = time.perf_counter()
    n_jets = 0
    if DATASETS.get(dataset).events is not None:  # objects: leptons, jets, taus, b-tags, MET, selection
        events = EventShardGenerator(task)
        t0 = time.perf_counter()
        for _ in range(n_events // batch):
            selected = events._batch()
            pad_events(selected, events.spec.max_particles)
            n_jets += len(selected)
        dt = time.perf_counter() - t0
        return dt / (n_events // batch * batch), n_jets / dt
    gen = ShardGenerator(task)
    t0 = time.perf_counter()
    for _ in range(n_events // batch):
        jets = gen._batch()
        gen._to_chunk(jets)  # padding, PID flags, soft-drop mass and N-subjettiness
        n_jets += len(jets)
    dt = time.perf_counter() - t0
    return dt / (n_events // batch * batch), n_jets / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="toptag", choices=DATASETS.names())
    ap.add_argument("--classes", default="", help="comma-separated class names (default: all)")
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--detector", default="none")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    spec = DATASETS.get(args.dataset)
    names = args.classes.split(",") if args.classes else list(spec.class_names)
    print(f"dataset={args.dataset} detector={args.detector} events/class={args.events} (one core)")
    print(f"{'class':8s} {'bare ms/ev':>10s} {'hepfm ms/ev':>11s} {'overhead':>9s} {'jets/s/core':>12s}")
    for name in names:
        ci = spec.class_names.index(name)
        bare = bare_loop(args.dataset, ci, args.events, args.batch, args.seed)
        ours, rate = hepfm_loop(args.dataset, ci, args.events, args.batch, args.seed, args.detector)
        print(f"{name:8s} {bare * 1e3:10.2f} {ours * 1e3:11.2f} {100 * (ours / bare - 1):8.1f}% {rate:12.1f}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
