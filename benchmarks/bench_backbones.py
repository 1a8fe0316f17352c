"""Throughput and memory of every backbone at its paper size, next to weaver-core's ParT.

For each backbone (plus a linear head, 10 classes) and N in {64, 128} particles per jet (every
slot real, i.e. the cost *at* N), batch 128, it measures

* training: AdamW step on a cross-entropy loss (forward + backward + update), jets/s;
* inference: eval mode under ``torch.inference_mode``, jets/s;
* peak memory of the training steps (CPU: peak RSS above the level before the step, via
  ``/proc/self/clear_refs``; CUDA: ``torch.cuda.max_memory_allocated``);

and the ratio of each throughput to weaver-core's ``ParticleTransformer`` (paper config, same
inputs, same run). On CUDA it adds bf16-autocast rows and, with ``--compile``, ``torch.compile``
rows. Measurements are short (a warm-up, then ``--steps`` timed steps of which the fastest counts,
each row in a fresh process), so expect a few percent of noise, more on a shared machine.

Usage:
    python benchmarks/bench_backbones.py                 # CPU, 2 threads, a few minutes
    python benchmarks/bench_backbones.py --device cuda --compile --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from hepfm.contracts import ParticleBatch
from hepfm.heads import create_head_for
from hepfm.models import create_backbone
from hepfm.nn.testing import random_jets

PAPER_PRESETS = ("part", "particle_net", "pfn", "transformer")
WEAVER = "weaver ParT"
IN_FEATURES, NUM_CLASSES = 7, 10  # ParT's 'kin' inputs, JetClass classes


@dataclass
class Row:
    model: str
    n: int
    mode: str
    params: int
    train: float
    infer: float
    memory_mb: float


class _Ours(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.backbone = create_backbone(name, IN_FEATURES)
        self.head = create_head_for("linear", self.backbone, NUM_CLASSES)

    def forward(self, batch: ParticleBatch) -> torch.Tensor:
        return self.head(self.backbone(batch))


class _Weaver(nn.Module):
    """weaver-core's ParT with the paper's config, fed weaver's (B, F, N) layout."""

    def __init__(self) -> None:
        super().__init__()
        from weaver.nn.model.ParticleTransformer import ParticleTransformer

        logging.getLogger("weaver").setLevel(logging.WARNING)
        no_drop = {"dropout": 0, "attn_dropout": 0, "activation_dropout": 0}
        self.model = ParticleTransformer(
            input_dim=IN_FEATURES,
            num_classes=NUM_CLASSES,
            pair_input_dim=4,
            use_pre_activation_pair=False,
            cls_block_params=no_drop,
            fc_params=[],
        )

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, v, mask = inputs
        return self.model(x, v=v, mask=mask)


def _inputs(name: str, batch: ParticleBatch) -> object:
    if name != WEAVER:
        return batch
    # Converted once, outside the timing: a weaver data loader yields this layout directly.
    return (
        batch.x.transpose(1, 2).contiguous(),
        batch.p4.transpose(1, 2).contiguous(),
        batch.mask.unsqueeze(1).float(),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _peak_memory(device: torch.device, out: list[float]) -> Iterator[None]:
    """Append the peak memory (MB) of the enclosed block to ``out`` (NaN if unmeasurable)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield
        out.append((torch.cuda.max_memory_allocated(device) - before) / 2**20)
        return
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM, the peak RSS
        before = int(re.search(r"VmRSS:\s+(\d+)", status.read_text())[1])
    except (OSError, TypeError):
        yield
        out.append(float("nan"))
        return
    yield
    out.append((int(re.search(r"VmHWM:\s+(\d+)", status.read_text())[1]) - before) / 1024)


def _throughput(step: Callable[[], object], steps: int, jets: int, device: torch.device) -> float:
    """Jets/s of the fastest of ``steps`` timed calls: robust to other processes stealing the CPU."""
    best = float("inf")
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return jets / best


def _measure(
    model: nn.Module, name: str, batch: ParticleBatch, args: argparse.Namespace, mode: str
) -> tuple[float, float, float]:
    device = torch.device(args.device)
    inputs, warm = _inputs(name, batch), _inputs(name, _slice(batch, args.warmup_batch))
    labels = torch.randint(NUM_CLASSES, (len(batch),), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if mode != "fp32" else contextlib.nullcontext()
    fn = torch.compile(model) if "compile" in mode else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step(x: object = inputs, y: torch.Tensor = labels) -> None:
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = nn.functional.cross_entropy(fn(x), y[: _len(x)])
        loss.backward()
        opt.step()

    def infer_step(x: object = inputs) -> None:
        with torch.inference_mode(), amp:
            fn(x)

    model.eval()
    for _ in range(args.warmup):
        infer_step(warm)
    infer = _throughput(infer_step, args.steps, len(batch), device)
    model.train()
    for _ in range(args.warmup):
        train_step(warm)
    memory: list[float] = []
    with _peak_memory(device, memory):
        train = _throughput(train_step, args.steps, len(batch), device)
    return train, infer, memory[0]


def _len(x: object) -> int:
    return len(x) if isinstance(x, ParticleBatch) else x[0].shape[0]  # type: ignore[index]


def _slice(batch: ParticleBatch, n: int) -> ParticleBatch:
    return ParticleBatch(x=batch.x[:n], mask=batch.mask[:n], p4=batch.p4[:n])


def _modes(args: argparse.Namespace, name: str) -> list[str]:
    if args.device != "cuda":
        return ["fp32"]
    return ["fp32", "bf16"] + (["bf16+compile"] if args.compile and name != WEAVER else [])


def measure_row(name: str, n: int, mode: str, args: argparse.Namespace) -> Row:
    """Build one model and measure it (in this process)."""
    device = torch.device(args.device)
    batch = random_jets(args.batch, n, IN_FEATURES, min_particles=n).to(device)
    torch.manual_seed(0)
    model = (_Weaver() if name == WEAVER else _Ours(name)).to(device)
    params = sum(p.numel() for p in model.parameters())
    train, infer, memory = _measure(model, name, batch, args, mode)
    return Row(name, n, mode, params, train, infer, memory)


def run(args: argparse.Namespace, argv: list[str]) -> list[Row]:
    """Measure every (model, N, mode) row, each in a fresh process.

    A fresh process per row keeps peak-memory readings honest (the allocator keeps freed memory
    from earlier rows) and stops one model's warm caches from helping the next.
    """
    names = [*args.models] + ([] if args.no_weaver else [WEAVER])
    rows = []
    for n in args.particles:
        for name in names:
            for mode in _modes(args, name):
                cmd = [sys.executable, __file__, *argv, "--row", name, str(n), mode]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode:
                    raise RuntimeError(f"row {name} N={n} {mode} failed:\n{proc.stderr[-3000:]}")
                row = Row(**json.loads(proc.stdout.strip().splitlines()[-1]))
                rows.append(row)
                print(
                    f"  measured {name:>12} N={n:<4} {mode:<13} train {row.train:8.1f} jets/s  "
                    f"infer {row.infer:8.1f} jets/s",
                    flush=True,
                )
    return rows


def table(rows: list[Row]) -> str:
    """A markdown table with throughput ratios to weaver's ParT at the same N and mode."""
    ref = {(r.n, r.mode): r for r in rows if r.model == WEAVER}
    lines = [
        "| model | N | mode | params | train jets/s | infer jets/s | train peak MB "
        "| train / weaver | infer / weaver |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        w = ref.get((r.n, r.mode)) or ref.get((r.n, "bf16" if "bf16" in r.mode else "fp32"))
        ratio_t = f"{r.train / w.train:.2f}" if w else "-"
        ratio_i = f"{r.infer / w.infer:.2f}" if w else "-"
        lines.append(
            f"| {r.model} | {r.n} | {r.mode} | {r.params / 1e6:.2f}M | {r.train:.1f} | {r.infer:.1f} | "
            f"{r.memory_mb:.0f} | {ratio_t} | {ratio_i} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=list(PAPER_PRESETS))
    p.add_argument("--particles", nargs="+", type=int, default=[64, 128])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps, the fastest counts (default: 2 on CPU, 20 on CUDA)",
    )
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 1 on CPU, 5 on CUDA)")
    p.add_argument("--warmup-batch", type=int, default=None, help="warm-up batch (default: 8 on CPU)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--compile", action="store_true", help="CUDA: add torch.compile rows")
    p.add_argument("--no-weaver", action="store_true", help="skip the weaver-core reference")
    p.add_argument("--row", nargs=3, metavar=("MODEL", "N", "MODE"), help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    cpu = args.device == "cpu"
    args.steps = args.steps or (2 if cpu else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if cpu else 5)
    args.warmup_batch = args.warmup_batch or (8 if cpu else args.batch)
    if not args.no_weaver:
        try:
            import weaver  # noqa: F401
        except ImportError:
            print("weaver-core not installed: no reference rows (pip install weaver-core --no-deps)")
            args.no_weaver = True
    torch.set_num_threads(args.threads)
    if args.row:  # worker: one row, reported as JSON on the last line
        name, n, mode = args.row
        print(json.dumps(asdict(measure_row(name, int(n), mode, args))))
        return
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"# backbones, batch {args.batch}, {device_name}, torch {torch.__version__}", flush=True)
    start = time.perf_counter()
    rows = run(args, argv)
    print(table(rows))
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
