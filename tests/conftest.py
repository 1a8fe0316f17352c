"""Shared fixtures: small generated (Pythia 8 + FastJet) datasets, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread: the test models are tiny, and on a shared 2-core machine a second OpenMP
    # thread spin-waits against other processes (measured: up to 7x slower steps).
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def toptag_files(tmp_path_factory) -> dict[str, Path]:
    """Top-Tagging-like train/val/test files (1600/400/400 jets, truth level), as the CLI writes them."""
    pytest.importorskip("pythia8mc")
    from hepfm.generation.job import GenerationJob, run_job

    root = tmp_path_factory.mktemp("toptag")
    files = {}
    for name, n, seed, fmt in (("train", 1600, 101, "hepfm"), ("val", 400, 102, "hepfm"),
                               ("test", 400, 103, "toptag-h5")):
        job = GenerationJob("toptag", n, root / f"{name}.h5", seed=seed, fmt=fmt, shard_size=200)
        run_job(job, workers=2, progress=False)
        files[name] = job.out
    return files
