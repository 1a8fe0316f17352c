"""Training objectives: each wraps backbone(s) (and heads) and returns a loss; the engine knows nothing
else."""

from __future__ import annotations

from hepfm.objectives.base import Objective, ObjectiveOutput

__all__ = ["Objective", "ObjectiveOutput"]
