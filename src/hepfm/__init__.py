"""hepfm: foundation models for particle physics.

Pretrain particle-set networks on unlabeled jets with self-supervised objectives, finetune them on
small labeled samples, and measure what that saves. See README.md for the two set-up commands.
"""

from __future__ import annotations

from hepfm._version import __version__
from hepfm.errors import HepfmInputError


def load(path: str):
    """Rebuild a trained model (eval mode) from a run directory or ``.safetensors`` file.

    Returns ``(model, spec)``: the model maps a ``ParticleBatch`` to logits via ``model.logits``;
    ``spec`` holds registry names, hyper-parameters, the feature set and the class names.
    """
    from hepfm.workflows.classify import load as _load

    return _load(path)


__all__ = ["HepfmInputError", "__version__", "load"]
