"""``hepfm study fewshot``: the few-label study from flags, a shorthand for a one-task ``study run``.

It writes the study file it stands for (``<out>/study.yaml``: one pretraining per objective on the
whole pretraining set, one labeled task, the tree baseline) and runs it, so a flag-built study can be
re-run, extended or shared as a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hepfm.options import require
from hepfm.studies.runner import run_study
from hepfm.studies.spec import spec_from_dict


def fewshot_spec(*, pretrain_data: list[str], train: list[str], val: list[str], test: list[str],
                 objectives: list[str], modes: list[str], n_labels: list[int], seeds: list[int], head: str,
                 pretrain_preset: str | None, pretrain_overrides: list[str], finetune_preset: str,
                 finetune_overrides: list[str], baselines: list[str], workers: int | None = None,
                 backend: str = "local") -> dict[str, Any]:
    """The study file's content for the flags (file names made absolute)."""
    require(len(n_labels) > 0 and min(n_labels) >= 2, "--n-labels", "must be >= 2 each", n_labels)
    def absolute(files: list[str]) -> list[str]:
        return [str(Path(f).expanduser().absolute()) for f in files]

    return {
        "name": "fewshot",
        "seeds": seeds,
        "pretraining": {"data": absolute(pretrain_data), "objectives": objectives, "sizes": ["all"],
                        "preset": pretrain_preset, "overrides": pretrain_overrides},
        "tasks": [{"name": "task", "train": absolute(train), "val": absolute(val), "test": absolute(test),
                   "n_labels": n_labels}],
        "finetune": {"modes": modes, "heads": [head], "preset": finetune_preset,
                     "overrides": finetune_overrides},
        "baselines": baselines,
        "executor": {"backend": backend, "workers": workers},
    }


def run_fewshot(out: str | Path, content: dict[str, Any], *, progress: bool = False,
                command: str = "") -> dict[str, Any]:
    spec = spec_from_dict(content, Path(out) / "study.yaml")
    return run_study(spec, out, progress=progress, command=command, study_file=content)
