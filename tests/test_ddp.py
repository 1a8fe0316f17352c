"""One code path from 1 CPU to N GPUs: two CPU processes under torchrun (gloo) train with DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gen


def test_torchrun_two_processes(toptag_files, tmp_path):
    run = tmp_path / "ddp"
    f = toptag_files
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "hepfm.cli", "train", "--data", str(f["train"]), "--val", str(f["val"]), "--out", str(run),
           "--backbone", "part-small", "--steps", "6", "--batch-size", "32", "--max-particles", "32",
           "--no-progress", "-o", "train.eval_every=3", "-o", "train.log_every=3", "-o", "train.ckpt_every=3"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # rank 0 alone logs: one row per log step and per evaluation, no duplicates from rank 1
    assert [r["step"] for r in rows if "train_loss" in r] == [3, 6]
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]
    assert (run / "best.safetensors").exists()
    # throughput counts both ranks' jets: 2 ranks x 6 steps x 32 jets, over this run's time
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["jets"] == 2 * 6 * 32
    assert summary["stop_reason"] == "max_steps"
    assert summary["jets_per_second"] == pytest.approx(summary["jets"] / summary["seconds"])
    assert all(r["jets_per_s"] > 0 for r in rows if "jets_per_s" in r)  # summed over ranks the same way
