"""A generation job: plan deterministic shards, run them in worker processes, merge, write atomically.

Determinism: each shard's Pythia seed derives from (seed, class, shard index) only, so a file depends
on the seed and the job's options, not on how many workers ran it or in which order they finished.
Interruption: finished shards are kept (each written atomically) in ``<out>.parts/`` beside the
output; running the same command again resumes from them, ``restart=True`` discards them. The
output itself appears only once complete (temp file + rename). A lock file ``<out>.lock`` keeps a
second run off the same output, and worker processes die with the main process.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from hepfm._version import __version__
from hepfm.data.jets import JetChunk
from hepfm.errors import HepfmInputError
from hepfm.generation.detector import DETECTORS
from hepfm.generation.pileup import (
    DEFAULT_LIBRARY,
    MAX_PILEUP,
    VERTEX_SIGMA_Z,
    minbias_settings,
    reach_rapidity,
)
from hepfm.generation.processes import DATASETS, PROCESSES, DatasetSpec
from hepfm.generation.worker import (
    PILEUP_STREAM,
    ShardTask,
    check_pythia_settings,
    pythia_seed,
    pythia_settings,
    run_pilot,
    run_shard,
)
from hepfm.io import atomic_path, check_output_file, is_output_error, output_lock, write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class GenerationJob:
    """Everything that determines the output file (``workers`` does not)."""

    dataset: str
    n_jets: int
    out: Path
    seed: int = 1
    detector: str = "none"
    fmt: str = "hepfm"
    labeled: bool = True
    mix: dict[str, float] = field(default_factory=dict)  # class name -> weight; empty = balanced
    shard_size: int = 1000
    batch_events: int = 200
    extra_settings: tuple[str, ...] = ()
    pileup: float = 0.0  # mean number of min-bias interactions overlaid per hard event; 0 = none
    pileup_library: int = DEFAULT_LIBRARY  # pre-generated min-bias events per worker; 0 = fresh ones
    # Events per class generated first to measure cross-section x acceptance (datasets mixed by
    # cross-section only, e.g. "collision"); the measured pilots, set by run_job, decide the class counts.
    pilot_events: int = 2000
    pilots: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        spec = DATASETS.get(self.dataset)
        DETECTORS.get(self.detector)
        if self.n_jets <= 0:
            raise HepfmInputError(f"--n-jets must be positive, got {self.n_jets}")
        if self.shard_size <= 0:
            raise HepfmInputError(f"--shard-size must be positive, got {self.shard_size}")
        if self.batch_events <= 0:
            raise HepfmInputError(f"--batch-events must be positive, got {self.batch_events}")
        if self.seed < 0:  # shard seeds come from np.random.SeedSequence, which takes non-negative ints
            raise HepfmInputError(f"--seed must be >= 0, got {self.seed}")
        if not (math.isfinite(self.pileup) and 0 <= self.pileup <= MAX_PILEUP):
            raise HepfmInputError(f"--pileup must be a number from 0 to {MAX_PILEUP:g}, got {self.pileup:g}")
        if self.pileup_library < 0:
            raise HepfmInputError(f"--pileup-library must be >= 0, got {self.pileup_library}")
        self.pileup = float(self.pileup)
        if spec.events is not None and self.pileup:
            raise HepfmInputError(f"--pileup is for jet datasets; {self.dataset} generates whole events")
        if self.pilot_events <= 0:
            raise HepfmInputError(f"--pilot-events must be positive, got {self.pilot_events}")
        unknown = set(self.mix) - set(spec.class_names)
        if unknown:
            raise HepfmInputError(
                f"unknown class(es) {sorted(unknown)} for dataset {self.dataset} "
                f"(classes: {', '.join(spec.class_names)})"
            )
        if any(w < 0 for w in self.mix.values()) or (self.mix and sum(self.mix.values()) <= 0):
            raise HepfmInputError("class weights in --mix must be >= 0 with a positive sum")
        self.extra_settings = tuple(self.extra_settings)
        check_pythia_settings(self.extra_settings)

    @property
    def by_xsec(self) -> bool:
        """Whether the class mixture follows the measured cross-sections (no --mix given)."""
        return DATASETS.get(self.dataset).xsec_mix and not self.mix

    def class_weights(self) -> dict[str, float]:
        """Relative class shares: --mix, cross-section x acceptance from the pilots, or balanced."""
        names = DATASETS.get(self.dataset).class_names
        if self.by_xsec:
            if set(self.pilots) != set(names):
                raise RuntimeError("class counts by cross-section need the pilot runs first")
            return {c: self.pilots[c]["sigma_pb"] * self.pilots[c]["accepted"] / self.pilots[c]["events"]
                    for c in names}
        return {c: self.mix.get(c, 0.0) if self.mix else 1.0 for c in names}

    def class_counts(self) -> dict[str, int]:
        names = DATASETS.get(self.dataset).class_names
        weights = self.class_weights()
        w = np.array([weights[c] for c in names], dtype=float)
        if w.sum() <= 0:
            raise HepfmInputError(f"no event of any class passed the selection in {self.pilot_events} "
                                  "pilot events per class")
        exact = self.n_jets * w / w.sum()
        counts = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - counts), kind="stable")[: self.n_jets - counts.sum()]:
            counts[i] += 1
        return dict(zip(names, counts.tolist(), strict=True))

    def tasks(self) -> list[ShardTask]:
        tasks = []
        library_seed = self.pileup_library_seed()
        for ci, n in enumerate(self.class_counts().values()):
            for k, start in enumerate(range(0, n, self.shard_size)):
                tasks.append(
                    ShardTask(self.dataset, ci, k, min(self.shard_size, n - start),
                              pythia_seed([self.seed, ci, k]), self.detector, self.batch_events,
                              self.extra_settings, self.pileup, self.pileup_library, library_seed)
                )
        return tasks

    def pileup_library_seed(self) -> int:
        """One min-bias library per job (all classes and shards): any worker builds the same one."""
        return pythia_seed([self.seed, PILEUP_STREAM])

    def fingerprint(self) -> dict:
        d = asdict(self)
        d.pop("out")
        d.pop("fmt")
        d.pop("pilots")
        if not DATASETS.get(self.dataset).xsec_mix:
            d.pop("pilot_events")
        if not self.pileup:  # no overlay: the library size is moot, and older manifests still match
            d.pop("pileup")
            d.pop("pileup_library")
        d["hepfm_version"] = __version__
        return d


def _versions() -> dict[str, str]:
    out = {"hepfm": __version__}
    for pkg in ("pythia8mc", "fastjet", "numpy", "awkward", "h5py", "uproot"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def provenance(job: GenerationJob, stats: dict[str, dict]) -> dict:
    """The metadata stored in the file: deterministic (no timings or dates) so reruns are identical."""
    spec = DATASETS.get(job.dataset)
    return {
        "generator": "hepfm generate",
        "versions": _versions(),
        "dataset": job.dataset,
        "seed": job.seed,
        "labeled": job.labeled,
        "class_names": list(spec.class_names),
        "class_counts": job.class_counts(),
        "processes": {c: spec.classes[c] for c in spec.class_names},
        "pythia_settings": {  # each shard's own Random:seed line is described under "seeds"
            c: [line for line in pythia_settings(spec, PROCESSES.get(p), seed=0, extra=job.extra_settings,
                                                 pileup=job.pileup) if line != "Random:seed = 0"]
            for c, p in spec.classes.items()
        },
        "seeds": "Random:seed of each shard = SeedSequence([seed, class index, shard index]) mod 9e8 + 1",
        "selection": _selection(spec),
        **({"cross_sections": {"pilot_events": job.pilot_events, "pilots": job.pilots,
                               "weights": "sigma_pb x accepted / events"}} if job.by_xsec else {}),
        "detector": DETECTORS.get(job.detector).to_dict(),
        "pileup": job.pileup,
        **({"pileup_overlay": pileup_provenance(job)} if job.pileup > 0 else {}),
        "shard_size": job.shard_size,
        "batch_events": job.batch_events,
        "shard_stats": {
            k: {s: v for s, v in st.items() if s != "seconds"} for k, st in sorted(stats.items())
        },
    }


def _selection(spec: DatasetSpec) -> dict:
    if spec.events is not None:
        from hepfm.generation.events import RECO

        return {"events": spec.events.describe(), "object_slots": spec.max_particles,
                "reconstruction": RECO.to_dict()}
    return {
        "algorithm": "anti-kt", "radius": spec.radius, "pt_range": spec.pt_range, "eta_max": spec.eta_max,
        "pthat_range": spec.pthat_range, "candidate_jets": spec.candidates,
        "max_particles": spec.max_particles,
        "truth_match": "resonance and all visible decay partons within R of the jet axis",
    }


def pileup_provenance(job: GenerationJob) -> dict:
    """How the pileup was made (recorded only with --pileup > 0, so a run without it is unchanged)."""
    spec = DATASETS.get(job.dataset)
    lib = job.pileup_library
    return {
        "mu": job.pileup,
        "count": "k ~ Poisson(mu) min-bias events per hard event",
        "minbias_settings": minbias_settings(spec.common, seed=0)[:-1],
        "library": lib,
        "minbias_seed": (
            f"Random:seed = {job.pileup_library_seed()} (SeedSequence([seed, {PILEUP_STREAM}]) mod 9e8 + 1), "
            "one library for the whole job, drawn with replacement" if lib else
            f"fresh events per hard event; Random:seed = SeedSequence([shard seed, {PILEUP_STREAM}]) "
            "mod 9e8 + 1"
        ),
        "draws": "per min-bias event: uniform azimuthal rotation, z-reflection with probability 1/2, vertex "
                 f"dz ~ N(0, sqrt(2) * {VERTEX_SIGMA_Z} mm) from the hard vertex; k, the events and these "
                 f"from SeedSequence([shard seed, {PILEUP_STREAM}, 1]) mod 9e8 + 1",
        "rapidity_max": reach_rapidity(spec.eta_max, spec.radius),
    }


# -- shard files (temporary, inside <out>.parts/)
def _part_path(parts: Path, task: ShardTask) -> Path:
    return parts / f"c{task.class_index:02d}_s{task.shard:05d}.npz"


def _save_part(path: Path, chunk: JetChunk, stats: dict) -> None:
    arrays: dict[str, Any] = {"p4": chunk.p4, "mask": chunk.mask, "label": chunk.label}
    arrays |= {f"particles.{k}": v for k, v in chunk.particles.items()}
    arrays |= {f"jets.{k}": v for k, v in chunk.jets.items()}
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, stats=np.array(json.dumps(stats)), **arrays)


def _load_part(path: Path, class_names: tuple[str, ...]) -> tuple[JetChunk, dict]:
    with np.load(path) as z:
        chunk = JetChunk(
            p4=z["p4"], mask=z["mask"], label=z["label"], class_names=class_names,
            particles={k.split(".", 1)[1]: z[k] for k in z.files if k.startswith("particles.")},
            jets={k.split(".", 1)[1]: z[k] for k in z.files if k.startswith("jets.")},
        )
        return chunk, json.loads(str(z["stats"]))


def _part_stats(path: Path) -> dict:
    with np.load(path) as z:  # npz members load lazily
        return json.loads(str(z["stats"]))


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _worker_init(parent_pid: int) -> None:
    """Set up a worker process: silent stdout, and death with the main process.

    Workers have nothing to say on stdout (the parent's may be --json output); FastJet's banner is
    already muted by quiet_fastjet, this also catches anything Pythia prints despite Print:quiet.
    """
    _die_with_parent(parent_pid)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker exit when the main process dies, even by SIGKILL.

    An idle pool worker blocks forever on its task queue (it holds both ends of the pipe, so it never
    sees end-of-file): a killed ``hepfm generate`` would leave its workers behind. On Linux the kernel
    sends SIGKILL on the parent's death (PR_SET_PDEATHSIG); a thread polling the parent pid covers
    other systems and the window before prctl took effect.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no usable libc: the watcher thread alone does the job
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl: no signal will come
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="hepfm-parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int, interval: float = 1.0) -> None:
    """Exit the process once it is re-parented (its parent died); the portable PDEATHSIG."""
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(1)


def _worker_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for Pythia shards: spawned (no forked Pythia state), silent, dying with us."""
    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=get_context("spawn"),
                               initializer=_worker_init, initargs=(os.getpid(),))


#: Last SeedSequence word of the pilot runs' Pythia seeds (kept apart from every shard's seed).
PILOT_STREAM = 0x70696C6F


def _pilots(job: GenerationJob, parts: Path, workers: int) -> dict[str, dict]:
    """Cross-section x acceptance of every class, measured once (kept in ``pilots.json`` for resume)."""
    path = parts / "pilots.json"
    if path.exists():
        return json.loads(path.read_text())
    names = DATASETS.get(job.dataset).class_names
    tasks = [ShardTask(job.dataset, ci, 0, job.pilot_events, pythia_seed([job.seed, ci, PILOT_STREAM]),
                       job.detector, job.batch_events, job.extra_settings) for ci in range(len(names))]
    log.info("measuring cross-section x acceptance: %d pilot events per class", job.pilot_events)
    with _worker_pool(workers) as pool:
        results = list(pool.map(run_pilot, tasks))
    pilots = dict(zip(names, results, strict=True))
    write_json_atomic(path, pilots)
    return pilots


def _run_and_save(task: ShardTask, path: Path) -> dict:
    chunk, stats = run_shard(task)
    _save_part(path, chunk, stats)
    return stats


def _prepare_parts_dir(job: GenerationJob, restart: bool) -> Path:
    parts = job.out.with_name(job.out.name + ".parts")
    manifest = parts / "job.json"
    fingerprint = json.loads(json.dumps(job.fingerprint()))
    if parts.exists() and restart:
        shutil.rmtree(parts)
    if manifest.exists():
        try:
            previous = json.loads(manifest.read_text())
        except (ValueError, UnicodeDecodeError):
            previous = None
        if previous != fingerprint:
            raise HepfmInputError(
                f"unfinished generation with different options in {parts}; "
                "rerun with --restart to discard it",
                job.out,
            )
    else:
        parts.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest, fingerprint)  # atomic: a full disk must not leave half a manifest
    return parts


def run_job(job: GenerationJob, workers: int = 1, restart: bool = False, progress: bool = True) -> dict:
    """Generate the file described by ``job``; returns its provenance plus timing stats.

    The output is checked for writability and locked before any work, so a bad ``--out`` or a second
    run on the same output is refused at once instead of after generating everything.
    """
    from hepfm.data.formats import WRITERS

    WRITERS.get(job.fmt)
    check_output_file(job.out)
    with output_lock(job.out, directory=False):
        return _run_locked(job, workers, restart, progress)


def _run_locked(job: GenerationJob, workers: int, restart: bool, progress: bool) -> dict:
    from tqdm import tqdm

    parts = _prepare_parts_dir(job, restart)
    if job.by_xsec:
        job.pilots = _pilots(job, parts, workers)
    tasks = job.tasks()
    stats: dict[str, dict] = {}
    todo = []
    for t in tasks:
        p = _part_path(parts, t)
        if p.exists():
            stats[p.stem] = _part_stats(p)  # only the stats entry: the arrays are read once, at merge
        else:
            todo.append(t)
    done_jets = sum(t.n_jets for t in tasks) - sum(t.n_jets for t in todo)
    if done_jets:
        log.info("resuming: %d of %d shards already done in %s", len(tasks) - len(todo), len(tasks), parts)
    bar = tqdm(total=job.n_jets, initial=done_jets, unit="jet", desc=f"generate {job.dataset}",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with _worker_pool(workers) as pool:
        futures = {pool.submit(_run_and_save, t, _part_path(parts, t)): t for t in todo}
        try:
            for fut in as_completed(futures):
                t = futures[fut]
                stats[_part_path(parts, t).stem] = fut.result()
                bar.update(t.n_jets)
        except BaseException as err:
            # Without this, leaving the block would still run every queued shard before reporting.
            pool.shutdown(wait=True, cancel_futures=True)
            if isinstance(err, OSError) and err.errno is not None and is_output_error(err):
                raise HepfmInputError(
                    f"cannot write generated shards ({os.strerror(err.errno)}); the finished ones are kept "
                    "and a rerun resumes from them", parts,
                ) from None
            raise
        finally:
            bar.close()

    from hepfm.data.formats import write_jets

    meta = provenance(job, stats)
    try:
        n = write_jets(job.out, _merged_chunks(job, tasks, parts), job.fmt, meta)
    except (OSError, RuntimeError) as err:
        code = _write_errno(err)
        if code is None:
            raise
        raise HepfmInputError(
            f"cannot write output ({os.strerror(code)}); nothing partial was kept, and the finished "
            f"shards in {parts.name}/ make a rerun skip the generation", job.out,
        ) from None
    if n != job.n_jets:
        raise RuntimeError(f"wrote {n} jets, expected {job.n_jets}")
    shutil.rmtree(parts)
    return meta | {"timing": _timing(stats, job)}


#: HDF5's driver report inside an h5py error: "... file write failed: ..., errno = 28, error message = ..."
_HDF5_ERRNO = re.compile(r"\berrno = (\d+)")


def _write_errno(err: BaseException) -> int | None:
    """The errno of a failed write if it is the user's (disk full, quota, ...), else None (a bug).

    h5py does not always carry the errno: after a failed write HDF5 reports it only in its message
    (as a ``RuntimeError`` or an ``OSError`` with another errno), so that message is read too.
    """
    if isinstance(err, OSError) and err.errno is not None and is_output_error(err):
        return err.errno
    match = _HDF5_ERRNO.search(str(err))
    if match and is_output_error(OSError(int(match.group(1)), "")):
        return int(match.group(1))
    return None


def _merged_chunks(job: GenerationJob, tasks: list[ShardTask], parts: Path) -> Iterator[JetChunk]:
    """Interleave classes: round k holds shard k of every class, shuffled together (bounded memory)."""
    names = DATASETS.get(job.dataset).class_names
    rounds: dict[int, list[ShardTask]] = {}
    for t in tasks:
        rounds.setdefault(t.shard, []).append(t)
    for k in sorted(rounds):
        chunk = JetChunk.concat([_load_part(_part_path(parts, t), names)[0] for t in rounds[k]])
        chunk = chunk.take(np.random.default_rng([job.seed, k]).permutation(len(chunk)))
        if not job.labeled:
            chunk.label = None
            chunk.jets = {k2: v for k2, v in chunk.jets.items() if not k2.startswith("truth")}
        yield chunk


def _timing(stats: dict[str, dict], job: GenerationJob) -> dict[str, dict]:
    names = DATASETS.get(job.dataset).class_names
    out: dict[str, dict] = {}
    for key, st in stats.items():
        c = names[int(key[1:3])]
        agg = out.setdefault(c, {"jets": 0, "events": 0, "seconds": 0.0})
        agg["jets"] += st["accepted"]
        agg["events"] += st["events"]
        agg["seconds"] += st.get("seconds", 0.0)
    for agg in out.values():
        agg["jets_per_s_per_core"] = agg["jets"] / max(agg["seconds"], 1e-9)
        agg["pass_fraction"] = agg["jets"] / max(agg["events"], 1)
    return out
