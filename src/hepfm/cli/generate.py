"""``hepfm generate``: labeled (or unlabeled) jets, or whole events of objects, from Pythia 8 + FastJet."""

from __future__ import annotations

import argparse
import json
import sys

from hepfm.errors import HepfmInputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from hepfm.data.formats import WRITERS
    from hepfm.generation.detector import DETECTORS
    from hepfm.generation.pileup import DEFAULT_LIBRARY
    from hepfm.generation.processes import DATASETS

    p = sub.add_parser(
        "generate",
        help="generate Top-Tagging-like or JetClass-like jets, or events of objects, with Pythia 8 + FastJet",
        description="Generate jets (toptag, jetclass) or whole events as sets of reconstructed objects "
        "(tth, tth-2l, hplus-tb, hplus-hw: signal vs tt+jets; collision: the unlabeled SM mixture) with "
        "Pythia 8 + FastJet, offline. The same --seed and options give the same file whatever --workers "
        "is. An interrupted run resumes from <out>.parts/.",
        epilog="examples: hepfm generate toptag --n-jets 10000 --out top.h5 --workers 2 --seed 1; "
        "hepfm generate collision --n-events 5000 --unlabeled --detector cms --out data.h5",
    )
    p.add_argument("dataset", choices=DATASETS.names(), help="which dataset (jets) or task (events) to make")
    p.add_argument("--n-jets", "--n-events", dest="n_jets", type=int, required=True,
                   help="total number of jets (all classes); of events for the event datasets")
    p.add_argument("--pilot-events", type=int, default=2000, metavar="N",
                   help="events per class generated first to measure cross-section x acceptance "
                        "(datasets mixed by cross-section: collision; default 2000)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--format", dest="fmt", default="hepfm", choices=sorted(WRITERS.names()),
                   help="hepfm's HDF5 (default), or the public layouts themselves")
    p.add_argument("--detector", default="none", choices=DETECTORS.names(),
                   help="particle level (none) or a detector-like preset (see docs/generator.md)")
    p.add_argument("--pileup", type=float, default=0.0, metavar="MU",
                   help="overlay k ~ Poisson(MU) minimum-bias events on every hard event, before the "
                   "detector and clustering (default 0: none)")
    p.add_argument("--pileup-library", type=int, default=DEFAULT_LIBRARY, metavar="N",
                   help=f"pre-generated min-bias events per worker that pileup is drawn from (default "
                   f"{DEFAULT_LIBRARY}); 0 = fresh events for every hard event (exact, ~9x slower)")
    p.add_argument("--unlabeled", action="store_true", help="withhold labels and truth (pretraining file)")
    p.add_argument("--mix", default="", metavar="CLASS=W,...",
                   help="class weights, e.g. 'QCD=3,Top=1' (default: balanced; unlisted classes get 0)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--shard-size", type=int, default=1000, help="jets per deterministic work unit")
    p.add_argument("--batch-events", type=int, default=200, help="Pythia events per nextBatch call")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="'Key = value'",
                   help="extra Pythia setting (repeatable)")
    p.add_argument("--restart", action="store_true", help="discard an unfinished run's shards")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, weight = item.partition("=")
        try:
            mix[name.strip()] = float(weight) if sep else 1.0
        except ValueError:
            raise HepfmInputError(f"--mix: bad weight in {item!r} (expected CLASS=NUMBER)") from None
    return mix


def run(args: argparse.Namespace) -> int:
    from hepfm.generation.job import GenerationJob, run_job
    from hepfm.generation.processes import DATASETS

    if args.workers < 1:
        raise HepfmInputError(f"--workers must be >= 1, got {args.workers}")
    job = GenerationJob(
        dataset=args.dataset, n_jets=args.n_jets, out=args.out, seed=args.seed, detector=args.detector,
        fmt=args.fmt, labeled=not args.unlabeled, mix=parse_mix(args.mix), shard_size=args.shard_size,
        batch_events=args.batch_events, extra_settings=tuple(args.extra), pileup=args.pileup,
        pileup_library=args.pileup_library, pilot_events=args.pilot_events,
    )
    summary = run_job(job, workers=args.workers, restart=args.restart, progress=not args.no_progress)
    if args.json:
        print(json.dumps({"out": str(job.out), "class_counts": summary["class_counts"],
                          "timing": summary["timing"]}, indent=2))
    else:
        pileup = f", pileup={job.pileup:g}" if job.pileup else ""
        item = "events" if DATASETS.get(job.dataset).events is not None else "jets"
        print(f"wrote {job.n_jets} {item} to {job.out} ({args.fmt}, detector={args.detector}{pileup}, "
              f"{'labeled' if job.labeled else 'unlabeled'})")
        for c, t in summary["timing"].items():
            print(
                f"  {c:6s} {summary['class_counts'][c]:8d} {item}  {t['jets_per_s_per_core']:7.1f} "
                f"{item}/s/core"
                f"  pass fraction {t['pass_fraction']:.3f}",
                file=sys.stdout,
            )
    return 0
