"""The one training loop, shared by supervised training and every pretraining objective.

It knows only the :class:`~hepfm.objectives.base.Objective` contract (``forward(batch)`` returns a
loss). Phases per step: schedule -> ``on_step_start`` -> (micro-batches: autocast forward, scaled
backward) -> unscale, clip, step -> ``on_step_end`` -> periodic log / validate / checkpoint. Losses stay
on the device and are read only at log time, so the step never waits on the GPU.

A fit ends at its step budget (``train.max_steps``, or ``train.max_epochs`` passes over the training
loader if that comes first; the schedule spans it), on early stopping, or at the wall-clock guard
``train.max_minutes``; ``FitResult.stop_reason`` says which.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn

from hepfm.contracts import ParticleBatch
from hepfm.errors import HepfmInputError
from hepfm.objectives.base import Objective
from hepfm.training import checkpoint as ckpt
from hepfm.training.config import TrainConfig
from hepfm.training.distributed import DistInfo, resolve_device, setup_distributed
from hepfm.training.loggers import MetricLogger
from hepfm.training.optim import build_optimizer
from hepfm.training.schedules import SCHEDULES

log = logging.getLogger(__name__)

#: validation hook: (logits (B,K) numpy, labels (B,) numpy) -> metrics
MetricsFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]


class Monitor(Protocol):
    """Evaluates the exported backbone every ``every`` steps and at step 0 (e.g. embedding probes);
    its metrics are logged with the step. It must leave the global RNG alone."""

    every: int

    def __call__(self, backbone: nn.Module) -> dict[str, float]: ...


#: Why a fit ended (``FitResult.stop_reason``): a step or epoch budget, no improvement on validation,
#: or the wall-clock guard (the only one that leaves the run unfinished: running it again resumes it).
STOP_REASONS = ("max_steps", "max_epochs", "early_stopping", "time_limit")


class TrainingDivergedError(HepfmInputError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclass
class FitResult:
    steps: int
    best_metric: float | None
    best_step: int | None
    stopped_early: bool
    seconds: float  # of this invocation (a resumed run counts only its own part)
    jets_per_second: float  # all ranks together
    device: str = ""  # what the time was measured on, e.g. "cpu (2 threads)" or "cuda: NVIDIA H100 ..."
    stop_reason: str = ""  # one of STOP_REASONS
    budget_steps: int = 0  # the step budget the schedule was spread over (max_steps or max_epochs)
    epochs: float | None = None  # passes over the training loader so far (None: the loader has no length)
    jets: int = 0  # jets trained on in this invocation, all ranks together


def step_budget(cfg: TrainConfig, train_loader: Iterable[ParticleBatch]) -> tuple[int, str, int | None]:
    """(steps, the budget that sets them, batches per epoch): the smaller of ``max_steps`` and
    ``max_epochs`` x optimizer steps per epoch, from ``len(loader)`` (per rank under DDP), once per fit.

    The data and config of a resumed run are those it started with, so the budget, and with it the
    schedule, is the same: resume stays exact. A tie counts as ``max_steps``."""
    try:
        per_epoch: int | None = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    if cfg.max_epochs is None:
        return cfg.max_steps, "max_steps", per_epoch  # type: ignore[return-value]  # config: one is set
    if per_epoch is None:
        raise HepfmInputError("train.max_epochs needs a training loader with a length (batches per epoch); "
                              "use train.max_steps instead")
    if per_epoch == 0:
        raise HepfmInputError("the training data yields no batches (empty dataset or batch larger than it)")
    by_epochs = max(1, cfg.max_epochs * per_epoch // cfg.grad_accum)
    if cfg.max_steps is not None and cfg.max_steps <= by_epochs:
        return cfg.max_steps, "max_steps", per_epoch
    return by_epochs, "max_epochs", per_epoch


def describe_device(device: torch.device) -> str:
    """A short description of the hardware a run used, recorded next to its timings."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type} ({torch.get_num_threads()} threads, {os.cpu_count()} cores visible)"


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds the global RNG that third-party code draws from)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """Ask torch for deterministic kernels for the duration of a fit (``train.deterministic``).

    CPU runs are bitwise reproducible without it (same seed, same thread count); on a GPU, atomics in
    scatter/index kernels and cuBLAS's split reductions differ from run to run. This switches those to
    deterministic versions where torch has them (slower) and warns, once per op, where it has none.
    cuBLAS reads CUBLAS_WORKSPACE_CONFIG when its first handle is made, so it is set here, before any
    matrix product of the run (a user's own value is kept).
    """
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
        torch.backends.cudnn.benchmark = benchmark


@contextlib.contextmanager
def denormals_flushed(enabled: bool) -> Iterator[None]:
    """Flush denormal floats to zero during a CPU fit, and restore the caller's setting after.

    Adam's second moments and small attention weights underflow into denormals, which run ~10x slower
    on x86 CPUs; flushing them changes nothing measurable in training. The setting is process-wide
    CPU state, so it must not outlive the fit (a notebook or a test session would inherit it).
    """
    tiny = float("5e-324")  # the smallest denormal, made at run time so the product below is too
    was = tiny * 1.0 == 0.0
    if not enabled or was or not torch.set_flush_denormal(True):  # False: the CPU cannot
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _rng_isolated(loader: Iterable[ParticleBatch]) -> Iterator[ParticleBatch]:
    """Iterate a loader without touching the global RNG (DataLoader.__iter__ draws a seed from it):
    the model's random stream then depends on the step alone, which makes resume exact."""
    with torch.random.fork_rng(devices=[]):
        it = iter(loader)
    while True:
        with torch.random.fork_rng(devices=[]):
            batch = next(it, None)
        if batch is None:
            return
        yield batch


class Trainer:
    """Trains any objective. ``model_spec`` is saved beside the weights so ``hepfm.load`` can rebuild."""

    def __init__(self, objective: Objective, cfg: TrainConfig, run_dir: str | Path,
                 model_spec: dict[str, Any], metrics_fn: MetricsFn | None = None,
                 dist_info: DistInfo | None = None, monitor: Monitor | None = None) -> None:
        self.cfg = cfg
        self.monitor = monitor
        self.run_dir = Path(run_dir)
        self.spec = model_spec
        self.metrics_fn = metrics_fn
        self.dist = dist_info or setup_distributed()
        self.device = resolve_device(cfg.device, self.dist)
        self.objective = objective.to(self.device)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.optimizer = build_optimizer(objective, cfg.optim, objective.no_weight_decay(),
                                         objective.param_groups_lr_scale())
        self.model: nn.Module = objective
        if self.dist.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.model = cast(nn.Module, torch.compile(self.model))  # an OptimizedModule
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.logger = MetricLogger(self.run_dir, cfg.tensorboard, enabled=self.dist.is_main)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.early_stopped = False  # a finished run: running it again trains no further
        self.collapsed_logs = 0

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.cfg.amp
        if amp == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else None
        if amp not in ("bf16", "fp16", "none"):
            raise HepfmInputError(f"train.amp must be auto, bf16, fp16 or none, got {amp!r}")
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- data position (exact resume)
    def _batches(self, loader: Iterable[ParticleBatch]) -> Iterator[ParticleBatch]:
        while True:
            sampler = getattr(loader, "sampler", None)
            skip = self.batch_in_epoch
            for obj in (loader, sampler, getattr(loader, "dataset", None)):
                # idempotent: each reshuffles from (seed, epoch)
                if obj is not None and hasattr(obj, "set_epoch"):
                    obj.set_epoch(self.epoch)
            if skip and hasattr(loader, "load_state_dict") and hasattr(loader, "state_dict"):
                # hepfm's JetLoader resumes mid-epoch itself (without collating the skipped batches)
                loader.load_state_dict(loader.state_dict() | {"epoch": self.epoch, "batches": skip})
                skip = 0
            n = 0
            for batch in _rng_isolated(loader):
                if skip:
                    skip -= 1
                    continue
                n += 1
                self.batch_in_epoch += 1
                yield batch
            if n == 0 and self.batch_in_epoch == 0:
                raise HepfmInputError(
                    "the training data yields no batches (empty dataset or batch larger than it)"
                )
            self.epoch += 1
            self.batch_in_epoch = 0

    # -- checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "model": self.objective.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "step": self.step, "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch, "best": self.best, "best_step": self.best_step,
            "bad_evals": self.bad_evals, "early_stopped": self.early_stopped, "rng": ckpt.rng_state(),
            "config": self.cfg.to_dict(), "spec": self.spec,
        }

    def save_last(self) -> None:
        if self.dist.is_main:
            ckpt.save_training_state(self.ckpt_dir / "last.pt", self._state())

    def try_resume(self) -> bool:
        path = self.ckpt_dir / "last.pt"
        if not path.exists():
            return False
        state = ckpt.load_training_state(path)
        if state.get("spec", {}).get("backbone") != self.spec.get("backbone"):
            raise HepfmInputError(
                "cannot resume: the run directory holds a different model; use a new --out", path
            )
        ckpt.load_state_into(self.objective, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        for k in ("step", "epoch", "batch_in_epoch", "best", "best_step", "bad_evals"):
            setattr(self, k, state[k])
        self.early_stopped = bool(state.get("early_stopped", False))
        ckpt.set_rng_state(state["rng"])
        self.logger.truncate_after(self.step)
        log.info("resumed from %s at step %d", path, self.step)
        return True

    # -- the loop
    def fit(self, train_loader: Iterable[ParticleBatch], val_loader: Iterable[ParticleBatch] | None = None,
            resume: bool = True, progress: bool = True) -> FitResult:
        with deterministic_kernels(self.cfg.deterministic), denormals_flushed(self.device.type == "cpu"):
            return self._fit(train_loader, val_loader, resume, progress)

    def _fit(self, train_loader: Iterable[ParticleBatch], val_loader: Iterable[ParticleBatch] | None,
             resume: bool, progress: bool) -> FitResult:
        from tqdm import tqdm

        cfg = self.cfg
        seed_everything(cfg.seed + self.dist.rank)
        total, budget, per_epoch = step_budget(cfg, train_loader)
        schedule = SCHEDULES.get(cfg.schedule.name)(cfg.schedule, total)
        if not (resume and self.try_resume()):
            self.save_last()  # step 0 is a good checkpoint: divergence at step 1 still leaves one
            self._monitor()  # the random initialisation: the control the monitored metrics are read against
        batches = self._batches(train_loader)
        bar = tqdm(total=total, initial=min(self.step, total), unit="step",
                   disable=not (progress and self.dist.is_main), file=sys.stderr, dynamic_ncols=True)
        sums: dict[str, torch.Tensor] = {}
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        n_jets, t0, t_log, jets_log, steps_log = 0, time.perf_counter(), time.perf_counter(), 0, 0
        deadline = t0 + 60 * cfg.max_minutes if cfg.max_minutes else None
        reason = "early_stopping" if self.early_stopped else budget
        self.objective.train()
        while self.step < total and not self.early_stopped:
            for g in self.optimizer.param_groups:
                g["lr"] = cfg.optim.lr * g.get("lr_scale", 1.0) * schedule(self.step)
            # The RNG stream (dropout, augmentations, masks) is a function of (seed, step, rank) alone, so
            # a resumed run draws exactly what the uninterrupted one would, whatever the loader consumed.
            torch.manual_seed((cfg.seed * 1_000_003 + self.step) * self.dist.world_size + self.dist.rank)
            self.objective.on_step_start(self.step, total)
            for micro in range(cfg.grad_accum):
                batch = next(batches).to(self.device, non_blocking=True)
                sync = micro == cfg.grad_accum - 1 or not self.dist.enabled
                # no_sync() is reached only under DDP (sync is always true otherwise)
                ddp = cast(nn.parallel.DistributedDataParallel, self.model)
                with (contextlib.nullcontext() if sync else ddp.no_sync()), self._autocast():
                    out = self.model(batch)
                loss = out.loss.float() / cfg.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                bad |= ~torch.isfinite(out.loss.detach())
                for k, v in {"loss": out.loss, **out.logs}.items():
                    sums[k] = sums.get(k, 0) + v.detach().float()
                n_jets += len(batch)
            grad_norm = self._optimizer_step()
            sums["grad_norm"] = sums.get("grad_norm", 0) + grad_norm * cfg.grad_accum
            self.objective.on_step_end(self.step, total)
            self.step += 1
            steps_log += 1
            bar.update(1)
            log_now = self.step % cfg.log_every == 0 or self.step == total
            # under DDP the ranks agree on stopping only at log steps, where they compare clocks
            late = (deadline is not None and time.perf_counter() >= deadline
                    and (log_now or not self.dist.enabled))
            if log_now or late:  # a run stopped by the clock logs its last, partial interval too
                now = time.perf_counter()
                # under DDP, the one collective of a log step: all ranks' jets, and whether any rank is late
                jets, late = self._across_ranks(n_jets - jets_log, late)
                row = self._log_row(sums, bad, now - t_log, jets, steps_log)
                bar.set_postfix(loss=f"{row['train_loss']:.4f}", jets_s=f"{row['jets_per_s']:.0f}")
                sums, t_log, jets_log, steps_log = {}, now, n_jets, 0
            if val_loader is not None and (self.step % cfg.eval_every == 0 or self.step == total):
                self.early_stopped = self._evaluate(val_loader)
            if self.monitor is not None and (self.step % self.monitor.every == 0 or self.step == total):
                self._monitor()
            if self.step % cfg.ckpt_every == 0 or self.step == total or self.early_stopped or late:
                self._check_finite(bad)
                self.save_last()
            if self.early_stopped:
                log.info(
                    "early stopping at step %d (best %s at step %s)", self.step, self.best, self.best_step
                )
                reason = "early_stopping"
                break
            if late and self.step < total:
                log.info("stopping at step %d after train.max_minutes=%s; run again to resume", self.step,
                         cfg.max_minutes)
                reason = "time_limit"
                break
        bar.close()
        self._check_finite(bad)
        if val_loader is None and self.dist.is_main:  # no validation: the final model is "best"
            ckpt.save_weights(self.run_dir / "best", self.objective, self.spec)
        self.logger.close()
        secs = time.perf_counter() - t0
        jets_all = self._across_ranks(n_jets, False)[0]
        epochs = (self.epoch + self.batch_in_epoch / per_epoch) if per_epoch else None
        return FitResult(self.step, self.best, self.best_step, reason == "early_stopping", secs,
                         jets_all / max(secs, 1e-9), describe_device(self.device), reason, total, epochs,
                         jets_all)

    def _across_ranks(self, jets: int, late: bool) -> tuple[int, bool]:
        """Jets summed over DDP ranks, and whether any rank passed the time limit (all ranks must stop at
        the same step, or the others would wait for it in their next all-reduce)."""
        if not self.dist.enabled:
            return jets, late
        t = torch.tensor([float(jets), float(late)], device=self.device)
        torch.distributed.all_reduce(t)
        return int(t[0].item()), bool(t[1].item())

    def _optimizer_step(self) -> torch.Tensor:
        params = [p for p in self.objective.parameters() if p.requires_grad]
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.clip_grad > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad)
        else:
            norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in params if p.grad is not None])
            )
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach().float()

    def _check_finite(self, bad: torch.Tensor) -> None:
        if bool(bad):
            raise TrainingDivergedError(
                f"training diverged: the loss became NaN/inf before step {self.step}; "
                f"the last good checkpoint is kept in {self.ckpt_dir} "
                "(lower the learning rate, or check the inputs)"
            )

    def _log_row(self, sums: dict[str, torch.Tensor], bad: torch.Tensor, dt: float, jets: int,
                 n: int) -> dict[str, Any]:
        """One metrics row: means over the interval's ``n`` steps (fewer than log_every after a resume or
        at the end), learning rate, throughput."""
        self._check_finite(bad)
        n_micro = n * self.cfg.grad_accum
        row: dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        for k, v in sums.items():
            row[f"train_{k}"] = float(v) / (n if k == "grad_norm" else n_micro)
        reason = self.objective.collapsed(
            {k[len("train_") :]: v for k, v in row.items() if k.startswith("train_")}
        )
        self.collapsed_logs = self.collapsed_logs + 1 if reason else 0
        if reason and self.collapsed_logs >= self.cfg.collapse_patience:
            raise TrainingDivergedError(
                f"representation collapse at step {self.step}: {reason}; the last good checkpoint is kept in "
                f"{self.ckpt_dir} (try a lower learning rate, a slower EMA, or stronger augmentations)")
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row["jets_per_s"] = jets / max(dt, 1e-9)  # jets of all ranks (summed by the caller)
        self.logger.log(row)
        return row

    def _monitor(self) -> None:
        if self.monitor is not None and self.dist.is_main:
            metrics = self.monitor(self.objective.export_backbone())
            self.objective.train()  # the monitor may have switched the backbone to eval mode
            self.logger.log({"step": self.step, **metrics})

    @torch.no_grad()
    def _evaluate(self, loader: Iterable[ParticleBatch]) -> bool:
        """Validation loss (+ classification metrics if the objective gives logits); best checkpoint.

        Under DDP every rank evaluates the whole validation set (the workflows build it unsharded),
        so best-checkpoint and early-stopping decisions agree on all ranks without a collective."""
        self.objective.eval()
        total, n = torch.zeros((), device=self.device), 0
        logits, labels = [], []
        for batch in loader:
            batch = batch.to(self.device, non_blocking=True)
            with self._autocast():
                out = self.objective(batch)
            total += out.loss.float() * len(batch)
            n += len(batch)
            if out.logits is not None and batch.label is not None:
                logits.append(out.logits.float().cpu())
                labels.append(batch.label.cpu())
        self.objective.train()
        if n == 0:
            raise HepfmInputError("the validation data is empty")
        metrics = {"val_loss": float(total) / n}
        if logits and self.metrics_fn is not None:
            metrics |= {f"val_{k}": v for k, v in
                        self.metrics_fn(torch.cat(logits).numpy(), torch.cat(labels).numpy()).items()}
        self.logger.log({"step": self.step, **metrics})
        value = metrics.get(self.cfg.monitor)
        if value is None:
            raise HepfmInputError(
                f"monitor {self.cfg.monitor!r} is not among the validation metrics {sorted(metrics)}"
            )
        better = self.best is None or (
            value < self.best if self.cfg.monitor_mode == "min" else value > self.best
        )
        if better and math.isfinite(value):
            self.best, self.best_step, self.bad_evals = value, self.step, 0
            if self.dist.is_main:
                ckpt.save_weights(self.run_dir / "best", self.objective, self.spec | {"step": self.step,
                                                                                     "val_metrics": metrics})
        else:
            self.bad_evals += 1
        return bool(self.cfg.early_stop_patience and self.bad_evals >= self.cfg.early_stop_patience)
