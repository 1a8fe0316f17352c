"""hepfm: foundation models for particle physics.

Pretrain particle-set networks on unlabeled jets with self-supervised objectives, finetune them on
small labeled samples, and measure what that saves. See README.md for the two set-up commands.
"""

from __future__ import annotations

__version__ = "0.1.0"

from hepfm.errors import HepfmInputError

__all__ = ["HepfmInputError", "__version__"]
