"""Metric sinks: JSONL and CSV always (append-only, flushed per row), TensorBoard when asked for."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class MetricLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = False, enabled: bool = True) -> None:
        self.enabled = enabled
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # tensorboard is optional
                raise ImportError("train.tensorboard=true needs `pip install tensorboard`") from err
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        new = not self.csv.exists()
        with open(self.csv, "a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(["step", "key", "value"])
            for k, v in row.items():
                if k != "step":
                    w.writerow([row["step"], k, v])
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, row["step"])

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so the logs match the resumed run."""
        if not (self.enabled and self.jsonl.exists()):
            return
        rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if r["step"] <= step]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in kept))
        with open(self.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "key", "value"])
            for r in kept:
                for k, v in r.items():
                    if k != "step":
                        w.writerow([r["step"], k, v])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
