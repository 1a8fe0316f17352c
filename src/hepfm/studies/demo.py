"""The main job (``hepfm demo``): generate -> pretrain -> finetune vs scratch -> compare, on 2 CPU cores.

It is the few-label study at toy scale: Top-Tagging-like jets from Pythia 8 + FastJet, an unlabeled
pretraining set, a JetCLR-pretrained backbone finetuned on a few hundred labels next to the same
architecture trained from scratch on the same labels, both evaluated on the same test jets.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hepfm.generation.job import GenerationJob, run_job
from hepfm.options import require
from hepfm.studies.fewshot import FewShotStudy, cost_lines, markdown_table, run_study

log = logging.getLogger(__name__)

#: (name, jets, labeled, seed offset) of the generated files
FILES = (
    ("pretrain", 8000, False, 10),
    ("train", 2000, True, 20),
    ("val", 1000, True, 30),
    ("test", 2000, True, 40),
)


def demo(out: str | Path, *, workers: int = 2, seed: int = 1, objective: str = "jetclr", n_labels: int = 200,
         pretrain_steps: int = 1200, finetune_steps: int = 200, backbone: str = "part-small",
         max_particles: int = 32, progress: bool = True) -> dict[str, Any]:
    out = Path(out)
    require(workers >= 1, "--workers", "must be >= 1", workers)
    t0 = time.perf_counter()
    files = {name: [str(out / "data" / f"{name}.h5")] for name, *_ in FILES}
    study = FewShotStudy(  # built first: it checks every option before minutes of generation
        out=out / "study", pretrain_data=files["pretrain"], train=files["train"], val=files["val"],
        test=files["test"], objectives=[objective], modes=["finetune", "scratch"], n_labels=[n_labels],
        seeds=[seed],
        pretrain_overrides=[f"train.max_steps={pretrain_steps}", f"train.seed={seed}",
                            f"model.backbone={backbone}", f"data.max_particles={max_particles}"],
        finetune_overrides=[f"train.max_steps={finetune_steps}"],
    )
    jobs = [GenerationJob("toptag", n, Path(files[name][0]), seed=seed + offset, labeled=labeled,
                          shard_size=500)
            for name, n, labeled, offset in FILES]
    for job in jobs:
        if not job.out.exists():
            log.info("generating %s (%d jets)", job.out, job.n_jets)
            run_job(job, workers=workers, progress=progress)
    t_gen = time.perf_counter() - t0
    result = run_study(study, progress=progress)
    result["seconds"] = {"generation": t_gen, "total": time.perf_counter() - t0}
    return result | {"markdown": markdown_table(result["table"]) + cost_lines(result["pretraining"])}
