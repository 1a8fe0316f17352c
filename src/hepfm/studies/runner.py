"""Running a declared study: plan its cells, run them through an executor, resume, report.

Why cells: every piece of a study (one pretraining, one downstream run, one baseline) is a *cell*, a
directory keyed by a hash of everything that determines it (the resolved config, mode, N, seed, the
pretrained weights' checksum, the identities of its input files; ``cell.json``). A finished cell
holds ``row.json`` and is reused; a cell whose inputs changed starts over; a killed cell resumes from
its own checkpoint. So a killed study, run again, redoes nothing that finished.

Why an executor library and not a scheduler: cells are independent within a phase (phase 1:
pretraining runs and the tree baselines; phase 2: every finetune / frozen / scratch run), so they go
to a ``concurrent.futures`` process pool sized to the machine (``local``), to SLURM through submitit
(``slurm``; its local executor runs the same path on one machine), or run one after the other in this
process (``serial``). A cell that fails is recorded with its reason; the others go on.

Leakage-free by construction: model selection sees the validation files only (the engine's
``best``), the tree baseline picks its size on validation too, and each run scores the test files
once, after training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hepfm.configs import load_preset, merge
from hepfm.data.formats import expand_patterns, open_sources
from hepfm.errors import HepfmInputError
from hepfm.io import (
    atomic_path,
    check_output_dir,
    file_identity,
    json_default,
    output_lock,
    write_json_atomic,
)
from hepfm.studies.analysis import ARCHITECTURE_MODES
from hepfm.studies.spec import StudySpec, check_presets
from hepfm.training.config import apply_overrides

log = logging.getLogger(__name__)


# -- cell keys and resume
def identities(patterns: list[str]) -> list[tuple[str, str]]:
    """(resolved path, content identity) of every file the patterns match."""
    return [(str(p.resolve()), file_identity(p)) for p in expand_patterns(patterns)]


def cell_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=json_default).encode()).hexdigest()


def claim_cell(run: Path, inputs: dict[str, Any]) -> bool:
    """Record the cell's key in ``run/cell.json``; True if the directory holds a run of other inputs,
    which must then start over. A run without ``cell.json`` (placed there by hand) is adopted: its own
    resume checks still refuse other settings or data."""
    key = cell_key(inputs)
    path = run / "cell.json"
    try:
        stale = path.exists() and json.loads(path.read_text()).get("key") != key
    except (ValueError, AttributeError):  # unreadable: the run behind it cannot be trusted either
        stale = True
    if stale:
        log.info("%s was run with other inputs: running it again", run)
        (run / "row.json").unlink(missing_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"key": key, "inputs": inputs})
    return stale


def finished(run: Path, weights: str = "best.safetensors") -> bool:
    """Whether a run trained to its end (a run stopped by its time limit resumes when run again). A
    pretraining placed by hand without a summary counts as finished if it holds its backbone."""
    if not (run / weights).exists():
        return False
    summary = run / "train_summary.json"
    if not summary.exists():
        return weights == "backbone.safetensors"
    return json.loads(summary.read_text()).get("stop_reason") != "time_limit"


def architecture_signature(spec: dict[str, Any]) -> dict[str, Any]:
    """What a from-scratch baseline re-initialises: backbone (with options and inputs), features, cap."""
    return {k: spec.get(k) for k in ("backbone", "features", "max_particles")}


def architecture_key(signature: dict[str, Any]) -> str:
    """``<backbone>-<features>-<hash>``: objectives with the same architecture share one scratch baseline;
    objectives with other inputs (e.g. JetCLR's raw eta/phi) get their own, so comparisons are like for
    like."""
    digest = hashlib.sha1(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:6]
    return f"{signature['backbone']['name']}-{signature['features']['name']}-{digest}"


# -- the plan
@dataclass
class Cell:
    """One unit of work: its kind, directory (relative to the study), key and arguments."""

    kind: str  # "pretrain" | "downstream" | "bdt"
    dir: str
    key: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    row: dict[str, Any] = field(default_factory=dict)  # what the report shows about it
    restart: bool = False
    threads: int | None = 1  # torch threads; None: torch's own default (a SLURM job's allocation)


@dataclass
class ConcreteTask:
    """A task as the cells see it: a CWoLa task becomes one labeled task per signal fraction."""

    name: str
    kind: str
    train: list[str]
    val: list[str]
    test: list[str]
    n_labels: list[int]
    signal_fraction: float | None = None


def pretraining_key(objective: str, size: int | str) -> str:
    return f"{objective}-{'all' if size == 'all' else f'n{size}'}"


def pretrain_delta(spec: StudySpec, objective: str, size: int | str, variant: str = "") -> dict[str, Any]:
    p = spec.pretraining
    items = [f"data.train={json.dumps(p.data)}", f"objective.name={objective}", f"train.seed={p.seed}"]
    if p.val:
        items.append(f"data.val={json.dumps(p.val)}")
    if size != "all":
        items.append(f"data.n_train={size}")
    if p.diagnostics.data and p.diagnostics.monitor:
        items += [f"probe.data={json.dumps(p.diagnostics.data)}", f"probe.n_jets={p.diagnostics.n_jets}"]
    return apply_overrides({}, [*items, *p.overrides, *(p.variants[variant] if variant else [])])


def finetune_delta(spec: StudySpec, task: ConcreteTask, head: str, seed: int, recipe: str = ""
                   ) -> dict[str, Any]:
    extra = spec.finetune.recipes.get(recipe, []) if recipe else []
    return apply_overrides({}, [f"data.train={json.dumps(task.train)}", f"data.val={json.dumps(task.val)}",
                                f"head.name={head}", f"train.seed={seed}", *spec.finetune.overrides, *extra])


def pretraining_signature(spec: StudySpec, objective: str, variant: str = "") -> dict[str, Any]:
    """The architecture a pretraining will export, known from its config before it runs."""
    from hepfm.data.features import FEATURE_SETS
    from hepfm.workflows.pretrain import backbone_spec
    from hepfm.workflows.pretrain import resolve as resolve_pretrain

    data, model, _, _, _ = resolve_pretrain(spec.pretraining.preset or f"{objective}-cpu",
                                         pretrain_delta(spec, objective, "all", variant))
    return architecture_signature(backbone_spec(model, FEATURE_SETS.get(data.features), data.max_particles))


def check_tasks(spec: StudySpec) -> None:
    """Classes agree across a task's files; N and pretraining sizes fit the data (before any run)."""
    from hepfm.workflows.data import class_names

    if spec.finetune.modes:
        available = sum(len(s) for s in open_sources(spec.pretraining.data))
        for size in spec.pretraining.sizes:
            if size != "all" and int(size) > available:
                raise HepfmInputError(f"pretraining.sizes: {size} jets asked, the pretraining files hold "
                                      f"{available}", spec.pretraining.data[0])
    for t in spec.tasks:
        train = open_sources(t.train)
        names = class_names(train, f"tasks.{t.name}.train")
        for key in ("val", "test"):
            other = class_names(open_sources(getattr(t, key)), f"tasks.{t.name}.{key}")
            if other != names:
                raise HepfmInputError(f"tasks.{t.name}.{key}: classes {other} differ from the training "
                                      f"classes {names}", getattr(t, key)[0])
        if t.kind == "cwola":
            if len(names) != 2:
                raise HepfmInputError(f"tasks.{t.name}: a cwola task needs two classes (background, signal), "
                                      f"the files hold {names}", t.train[0])
            if t.signal_class is not None and t.signal_class not in names:
                raise HepfmInputError(f"tasks.{t.name}.signal_class: {t.signal_class!r} is not one of "
                                      f"{names}", t.train[0])
            continue
        available = sum(len(s) for s in train)
        for n in t.n_labels:
            if n > available:
                raise HepfmInputError(f"tasks.{t.name}.n_labels: {n} labels asked, the training files hold "
                                      f"{available} jets", t.train[0])
            if n < len(names):
                raise HepfmInputError(f"tasks.{t.name}.n_labels: {n} is fewer than the {len(names)} classes",
                                      t.train[0])


def concrete_tasks(spec: StudySpec, out: Path) -> list[ConcreteTask]:
    """Labeled tasks as declared; each CWoLa task's mixed samples written under ``out/tasks``."""
    from hepfm.studies.cwola import mixed_samples

    tasks = []
    for t in spec.tasks:
        if t.kind == "labeled":
            tasks.append(ConcreteTask(t.name, t.kind, t.train, t.val, t.test, t.n_labels))
            continue
        for x in t.signal_fractions:
            name = f"{t.name}-x{x:g}"
            train, val = mixed_samples(t, x, out / "tasks" / name, seed=spec.pretraining.seed)
            for n in t.n_labels:
                if n > train[1]:
                    raise HepfmInputError(f"tasks.{t.name}.n_labels: {n} asked, the mixed samples at signal "
                                          f"fraction {x:g} hold {train[1]} jets", t.train[0])
            tasks.append(ConcreteTask(name, t.kind, [train[0]], [val[0]], t.test, t.n_labels, x))
    return tasks


def plan(spec: StudySpec, out: Path) -> tuple[list[Cell], list[Cell]]:
    """(phase 1: pretraining + baselines, phase 2: downstream runs), every cell keyed."""
    from hepfm.workflows.finetune import resolve as resolve_finetune

    tasks = concrete_tasks(spec, out)
    p, f = spec.pretraining, spec.finetune
    # file identities hash each file's head and tail: once per file, not once per cell
    ids = {t.name: {k: identities(getattr(t, k)) for k in ("train", "val", "test")} for t in tasks}
    phase1: list[Cell] = []
    phase2: list[Cell] = []
    per_arch_done: set[tuple] = set()
    if f.modes:
        pretrain_files = identities(p.data) + identities(p.val)
        finetune_base = load_preset("finetune", f.preset)
        for head in f.heads:  # every value a downstream cell sets resolves (the files are checked apart)
            for recipe in f.recipes or [""]:
                resolve_finetune(f.preset, finetune_delta(spec, tasks[0], head, spec.seeds[0], recipe))
        for objective, pvariant in [(o, v) for o in p.objectives for v in ["", *p.variants]]:
            preset = p.preset or f"{objective}-cpu"
            pretrain_base = load_preset("pretrain", preset)
            signature = pretraining_signature(spec, objective, pvariant)
            arch = architecture_key(signature)
            label = f"{objective}+{pvariant}" if pvariant else objective
            for size in p.sizes:
                pkey = pretraining_key(label, size)
                delta = pretrain_delta(spec, objective, size, pvariant)
                pdir = f"pretrain/{pkey}"
                config = merge(pretrain_base, delta)
                phase1.append(Cell("pretrain", pdir, cell_key({"config": config, "data": pretrain_files}),
                                   {"preset": preset, "delta": delta, "diagnostics": asdict(p.diagnostics)},
                                   {"key": pkey, "objective": label, "pretrain_size": size,
                                    "arch": arch}))
                for task, head, n, seed, mode, recipe in _grid(tasks, f.heads, spec.seeds, f.modes,
                                                               list(f.recipes)):
                    per_arch = mode in ARCHITECTURE_MODES
                    if per_arch:  # one baseline per architecture, shared by its pretrainings
                        if (task.name, arch, head, n, seed, mode) in per_arch_done:
                            continue
                        per_arch_done.add((task.name, arch, head, n, seed, mode))
                    delta = finetune_delta(spec, task, head, seed, recipe)
                    where = f"{mode}-{arch}" if per_arch else pkey
                    variant = f"{mode}-{recipe}" if recipe else mode
                    run = f"runs/{task.name}/{where}/{variant}-{head}/n{n}/seed{seed}"
                    inputs = {"config": merge(finetune_base, delta), "mode": mode, "n_labels": n,
                              "data": {"train": ids[task.name]["train"], "val": ids[task.name]["val"]},
                              # the baselines depend on the architecture only; the others on the pretraining
                              "backbone": signature if per_arch else phase1[-1].key}
                    phase2.append(Cell(
                        "downstream", run, cell_key(inputs),
                        {"pretrained": pdir, "preset": f.preset, "delta": delta, "mode": mode, "n_labels": n,
                         "test": task.test, "test_ids": ids[task.name]["test"]},
                        {"task": task.name, "objective": "none" if per_arch else label,
                         "pretrain": "" if per_arch else pkey, "pretrain_size": None if per_arch else size,
                         "arch": arch, "mode": mode, "recipe": recipe, "head": head, "n_labels": n,
                         "seed": seed, "signal_fraction": task.signal_fraction}))
    if "bdt" in spec.baselines:
        for task, _, n, seed, _, _ in _grid(tasks, ["trees"], spec.seeds, ["bdt"], []):
            run = f"runs/{task.name}/bdt/n{n}/seed{seed}"
            inputs = {"kind": "bdt", "n_labels": n, "seed": seed, **ids[task.name]}
            phase1.append(Cell("bdt", run, cell_key(inputs),
                               {"train": task.train, "val": task.val, "test": task.test, "n_labels": n,
                                "seed": seed},
                               {"task": task.name, "objective": "none", "pretrain": "", "pretrain_size": None,
                                "arch": "bdt", "mode": "bdt", "recipe": "", "head": "trees", "n_labels": n,
                                "seed": seed,
                                "signal_fraction": task.signal_fraction}))
    return phase1, phase2


def _grid(tasks: list[ConcreteTask], heads: list[str], seeds: list[int], modes: list[str],
          recipes: list[str]) -> Iterator[tuple[ConcreteTask, str, int, int, str, str]]:
    """Every downstream cell; the ``finetune`` mode once per recipe ("" when the study names none)."""
    for task in tasks:
        for head in heads:
            for n in task.n_labels:
                for seed in seeds:
                    for mode in modes:
                        for recipe in (recipes or [""]) if mode == "finetune" else [""]:
                            yield task, head, n, seed, mode, recipe


# -- running one cell (in a worker process)
def execute(cell: Cell, study: str) -> dict[str, Any]:
    """Run one cell under ``study``; returns its row (``status`` ok or failed, with the reason).

    Module-level and given plain data so that process pools and SLURM can ship it."""
    import torch

    if cell.threads is not None:
        torch.set_num_threads(cell.threads)
    run = Path(study) / cell.dir
    t0 = time.perf_counter()
    try:
        row = _RUNNERS[cell.kind](cell, Path(study), run)
        row = cell.row | row | {"status": "ok", "reason": None}
    except Exception as err:  # a cell's failure is recorded, not fatal to the study
        reason = (err.problem + (f" ({err.path})" if err.path else "")) if isinstance(err, HepfmInputError) \
            else f"{type(err).__name__}: {err}"
        run.mkdir(parents=True, exist_ok=True)
        (run / "error.log").write_text(traceback.format_exc())
        line = reason.splitlines()[0] if reason else type(err).__name__
        row = cell.row | {"status": "failed", "reason": line}
    row |= {"run_dir": cell.dir, "cell_seconds": time.perf_counter() - t0}
    write_json_atomic(run / "row.json", {"key": cell.key, "test": cell.args.get("test_ids"), "row": row})
    return row


def _curves(run: Path, *keys: str) -> dict[str, list[list[float]]]:
    """(step, value) pairs of each of ``keys`` in a run's metrics.jsonl (read once)."""
    out: dict[str, list[list[float]]] = {key: [] for key in keys}
    path = run / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            for key in keys:
                if key in row:
                    out[key].append([row["step"], row[key]])
    return out


#: Monitor metrics of a pretraining (``probe_*`` in its metrics.jsonl) kept in the study's results.
PROBE_CURVES = ("probe_linear_auc", "probe_knn_auc", "probe_effective_rank", "probe_mean_cosine")


def _run_pretrain(cell: Cell, study: Path, run: Path) -> dict[str, Any]:
    from hepfm.workflows.embed import embed
    from hepfm.workflows.pretrain import pretrain

    if cell.restart or not finished(run, "backbone.safetensors"):
        pretrain(cell.args["preset"], cell.args["delta"], run, restart=cell.restart, progress=False)
    summary = json.loads((run / "train_summary.json").read_text())
    curves = _curves(run, "train_loss", "val_loss", *PROBE_CURVES)
    batch = _batch_size(run)
    diag = cell.args["diagnostics"]
    diagnostics = None
    if diag["data"]:
        d = embed(run, diag["data"], n_jets=diag["n_jets"], name="study")
        png = Path(d["out"]) / "embedding.png"
        diagnostics = {k: d.get(k) for k in ("linear_probe_accuracy", "knn_accuracy", "effective_rank",
                                             "mean_pairwise_cosine")}
        diagnostics["map_png"] = str(png.relative_to(study)) if png.exists() else None
    return {"steps": summary["steps"], "jets_seen": summary["steps"] * batch, "seconds": summary["seconds"],
            "jets_per_second": summary["jets_per_second"], "device": summary["device"],
            "n_backbone_parameters": summary["n_backbone_parameters"],
            "loss_curve": curves["train_loss"], "val_loss_curve": curves["val_loss"],
            "diagnostics": diagnostics, "backbone_sha256": _weights_sha(run / "backbone.json"),
            "probe_curves": {k: curves[k] for k in PROBE_CURVES if curves[k]}}


def _batch_size(run: Path) -> int:
    import yaml

    return int(yaml.safe_load((run / "config.yaml").read_text())["data"]["batch_size"])


def _weights_sha(path: Path) -> str | None:
    return json.loads(path.read_text()).get("weights_sha256") if path.exists() else None


def _run_downstream(cell: Cell, study: Path, run: Path) -> dict[str, Any]:
    from hepfm.workflows.classify import evaluate
    from hepfm.workflows.finetune import finetune

    a = cell.args
    if cell.restart or not finished(run):
        finetune(study / a["pretrained"], a["preset"], a["delta"], run, mode=a["mode"],
                 n_labels=a["n_labels"], restart=cell.restart, progress=False)
    metrics = evaluate(run, a["test"], name="test", plots=False)
    summary = json.loads((run / "train_summary.json").read_text())
    per_epoch = summary["steps"] / summary["epochs"] if summary.get("epochs") else None
    curves = _curves(run, "val_accuracy", "val_auc")
    acc = {step: value for step, value in curves["val_accuracy"]}
    auc = {step: value for step, value in curves["val_auc"]}
    curve = [[s, s / per_epoch if per_epoch else None, acc[s], auc.get(s)] for s in sorted(acc)]
    return {k: metrics[k] for k in ("accuracy", "auc", "rej50", "rej30")} | {
        "steps": summary["steps"], "epochs": summary.get("epochs"), "seconds": summary["seconds"],
        "device": summary["device"], "curve": curve}


def _run_bdt(cell: Cell, study: Path, run: Path) -> dict[str, Any]:
    from hepfm.studies.baselines import bdt_baseline

    a = cell.args
    metrics = bdt_baseline(a["train"], a["val"], a["test"], n_labels=a["n_labels"], seed=a["seed"])
    write_json_atomic(run / "metrics.json", metrics)
    return {k: metrics[k] for k in ("accuracy", "auc", "rej50", "rej30", "seconds")} | {
        "steps": None, "epochs": None, "device": "cpu", "curve": []}


_RUNNERS: dict[str, Callable[[Cell, Path, Path], dict[str, Any]]] = {
    "pretrain": _run_pretrain, "downstream": _run_downstream, "bdt": _run_bdt}


# -- executors
def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Serial:
    """Runs each cell at submission, in this process (debugging, tests, a one-core machine)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as err:
            future.set_exception(err)
        return future

    def shutdown(self, cancel_futures: bool = False) -> None:
        pass


def make_executor(spec: StudySpec, out: Path) -> tuple[Any, int]:
    """(executor with ``submit(fn, *args)`` whose results have ``.result()``, parallel cells)."""
    e = spec.executor
    if e.backend == "serial":
        return _Serial(), 1
    if e.backend == "slurm":
        try:
            import submitit
        except ImportError:
            raise HepfmInputError("executor.backend slurm needs submitit: "
                                  "pip install 'hepfm[slurm]'") from None
        options = dict(e.slurm)
        cluster = options.pop("cluster", None)  # "local" runs the jobs on this machine (tests)
        ex = submitit.AutoExecutor(folder=out / "slurm", cluster=cluster)
        ex.update_parameters(**options)
        return ex, e.workers or 8
    import multiprocessing

    workers = e.workers or _cores()
    # spawn, not fork: a forked child of a process with torch threads started can deadlock
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")), workers


# -- the study
def run_study(spec: StudySpec, out: str | Path, *, progress: bool = False, command: str = "",
              study_file: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) a study into ``out``: results.json / results.csv / report.md / report.html.

    ``study_file``: the YAML content the study was built from, written to ``out/study.yaml`` once the
    study has passed its checks (a study made from flags records the file it stands for)."""
    out = check_output_dir(out)
    check_presets(spec)
    check_tasks(spec)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with output_lock(out, directory=True):
        if study_file is not None:
            with atomic_path(out / "study.yaml") as tmp:
                tmp.write_text(yaml.safe_dump(study_file, sort_keys=False))
        write_json_atomic(out / "study.json", spec.to_dict())
        phase1, phase2 = plan(spec, out)
        executor, workers = make_executor(spec, out)
        threads = max(1, _cores() // workers) if spec.executor.backend != "slurm" else None
        try:
            rows1 = _run_phase(phase1, out, executor, threads, progress, "pretraining and baselines")
            # the finished pretrainings and their weights' checksums (each pretraining row carries its own)
            ready = {c.dir: r.get("backbone_sha256") for c, r in zip(phase1, rows1, strict=True)
                     if c.kind == "pretrain" and r["status"] == "ok"}
            runnable, skipped = [], []
            for c in phase2:
                if c.args["mode"] in ARCHITECTURE_MODES:  # any finished pretraining of the arch will do
                    same = [p.dir for p in phase1 if p.dir in ready and p.row.get("arch") == c.row["arch"]]
                    c.args["pretrained"] = same[0] if same else c.args["pretrained"]
                elif c.args["pretrained"] in ready:  # the others key on their pretraining's weights too
                    c.key = cell_key({"cell": c.key, "weights": ready[c.args["pretrained"]]})
                if c.args["pretrained"] in ready:
                    runnable.append(c)
                else:
                    skipped.append(c.row | {"status": "failed", "run_dir": c.dir,
                                            "reason": f"its pretraining {c.args['pretrained']} failed"})
            rows2 = _run_phase(runnable, out, executor, threads, progress, "finetuning")
        finally:
            if hasattr(executor, "shutdown"):  # a pool; submitit's jobs outlive this process by design
                executor.shutdown(cancel_futures=True)
        result = collect(spec, out, phase1, rows1, rows2 + skipped, time.perf_counter() - t0, command)
    return result


def _run_phase(cells: list[Cell], out: Path, executor: Any, threads: int | None, progress: bool,
               what: str) -> list[dict[str, Any]]:
    """Rows of ``cells`` in order: finished ones read back, the others run through ``executor``."""
    from tqdm import tqdm

    rows: list[dict[str, Any] | None] = [None] * len(cells)
    jobs = []
    for i, c in enumerate(cells):
        c.threads = threads
        c.restart = claim_cell(out / c.dir, {"key": c.key})
        done = _finished_row(out / c.dir, c.key, c.args.get("test_ids"))
        if done is not None and not c.restart:
            rows[i] = done
        else:
            jobs.append((i, executor.submit(execute, c, str(out))))
    if jobs:
        log.info("%s: %d cells to run, %d finished before", what, len(jobs), len(cells) - len(jobs))
    for i, job in tqdm(jobs, desc=what, disable=not progress, unit="cell"):
        try:
            rows[i] = job.result()
        except Exception as err:  # the worker itself died (killed, out of memory): record, go on
            rows[i] = cells[i].row | {"status": "failed", "reason": f"{type(err).__name__}: {err}",
                                      "run_dir": cells[i].dir}
    return [r for r in rows if r is not None]


def _finished_row(run: Path, key: str, test: Any) -> dict[str, Any] | None:
    """A cell's row from an earlier run of the study, if it finished with the same key and was scored
    on the same test files (another test file re-evaluates the trained model, it does not retrain)."""
    path = run / "row.json"
    try:
        saved = json.loads(path.read_text()) if path.exists() else None
    except ValueError:
        return None
    if not saved or saved.get("key") != key or saved["row"].get("status") != "ok":
        return None
    if json.loads(json.dumps(test)) != saved.get("test"):
        return None
    return saved["row"]


def collect(spec: StudySpec, out: Path, phase1: list[Cell], rows1: list[dict[str, Any]],
            rows2: list[dict[str, Any]], seconds: float, command: str) -> dict[str, Any]:
    """Assemble the result (runs, pretraining cost, cells, label efficiency) and write the report."""
    from hepfm.studies.analysis import aggregate, label_efficiency, summary_sentence
    from hepfm.studies.report import write_report
    from hepfm.workflows.provenance import versions

    pretraining = [r for c, r in zip(phase1, rows1, strict=True) if c.kind == "pretrain"]
    runs = [r for c, r in zip(phase1, rows1, strict=True) if c.kind == "bdt"] + rows2
    cells = aggregate(runs)
    result = {"name": spec.name, "wall_seconds": seconds, "hardware": _hardware(), "command": command,
              "versions": versions(), "study": spec.to_dict(), "runs": runs, "pretraining": pretraining,
              "cells": cells, "label_efficiency": label_efficiency(cells), "summary": summary_sentence(cells)}
    write_json_atomic(out / "results.json", result)
    write_report(result, out)
    return result


def _hardware() -> str:
    import platform

    import torch

    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.processor() or platform.machine()}, {_cores()} cores{gpu}"
