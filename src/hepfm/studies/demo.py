"""The main job (``hepfm demo``): generate -> pretrain -> finetune, frozen, scratch -> report, on 2 CPU cores.

It is the ``demo`` study preset (src/hepfm/configs/study/demo.yaml) on Top-Tagging-like jets that it
generates first with Pythia 8 + FastJet: a JetCLR-pretrained backbone finetuned and probed on a few
labels next to the same architecture from scratch and trees on high-level features, at two label
counts and three seeds, so that what it prints carries a spread and says whether the gain exceeds it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import yaml

from hepfm.generation.job import GenerationJob, run_job
from hepfm.io import check_output_dir
from hepfm.options import from_dict, require
from hepfm.studies.runner import run_study
from hepfm.studies.spec import STUDY_PRESETS, StudySpec, check_presets, normalise, resolve_files

log = logging.getLogger(__name__)

#: (name, jets, labeled, seed offset) of the generated files
FILES = (
    ("pretrain", 6000, False, 10),
    ("train", 2000, True, 20),
    ("val", 1000, True, 30),
    ("test", 2000, True, 40),
)


def demo(out: str | Path, *, workers: int = 2, seed: int = 1, objective: str = "jetclr",
         n_labels: tuple[int, ...] = (100, 1000), seeds: tuple[int, ...] = (1, 2, 3),
         pretrain_steps: int | None = None, finetune_steps: int | None = None, detector: str = "none",
         progress: bool = True, command: str = "") -> dict[str, Any]:
    out = check_output_dir(out)
    require(workers >= 1, "--workers", "must be >= 1", workers)
    require(len(n_labels) > 0 and min(n_labels) >= 2, "--n-labels", "must be >= 2 each", n_labels)
    require(len(seeds) > 0 and min(seeds) >= 0, "--seeds", "must be >= 0 each", seeds)
    t0 = time.perf_counter()
    data = out / "data"
    raw = yaml.safe_load((STUDY_PRESETS / "demo.yaml").read_text())
    raw["seeds"] = list(seeds)
    raw["pretraining"] |= {"objectives": [objective], "seed": seed}
    raw["tasks"][0]["n_labels"] = list(n_labels)
    raw["executor"]["workers"] = workers
    if pretrain_steps is not None:
        raw["pretraining"]["overrides"]["train.max_steps"] = pretrain_steps
    if finetune_steps is not None:
        raw["finetune"]["overrides"]["train.max_steps"] = finetune_steps
    # the whole study is checked before minutes of generation (its files are resolved once they exist)
    spec = from_dict(StudySpec, normalise(raw), "")
    check_presets(spec)
    jobs = [GenerationJob("toptag", n, data / f"{name}.h5", seed=seed + offset, labeled=labeled,
                          detector=detector, shard_size=500)
            for name, n, labeled, offset in FILES]
    for job in jobs:
        if not job.out.exists():
            log.info("generating %s (%d jets)", job.out, job.n_jets)
            run_job(job, workers=workers, progress=progress)
    t_gen = time.perf_counter() - t0
    spec = resolve_files(spec, data)
    result = run_study(spec, out / "study", progress=progress, command=command)
    result["seconds"] = {"generation": t_gen, "total": time.perf_counter() - t0}
    return result
