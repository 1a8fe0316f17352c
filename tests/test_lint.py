"""The lint and type gate: ruff (rule set in pyproject.toml) and mypy on src/hepfm, run by the test suite so
that CI enforces them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_ruff_clean():
    r = _run("ruff", "check", "--no-cache", "src", "tests", "benchmarks")
    assert r.returncode == 0, f"ruff check failed:\n{r.stdout}\n{r.stderr}"


def test_mypy_clean():
    r = _run("mypy")  # files and settings: [tool.mypy] in pyproject.toml
    assert r.returncode == 0, f"mypy failed:\n{r.stdout}\n{r.stderr}"
