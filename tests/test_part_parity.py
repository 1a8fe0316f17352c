"""Our ParT reproduces weaver-core's ParticleTransformer output for output, given its weights.

weaver-core is the reference implementation behind the paper (arXiv:2202.03772) and the published
checkpoints; this is what lets ``load_weaver_state_dict`` load ``ParT_kin.pt`` and friends.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch

from hepfm.contracts import ParticleBatch
from hepfm.models import create_backbone, load_weaver_state_dict
from hepfm.nn.testing import random_jets

WeaverParT = pytest.importorskip("weaver.nn.model.ParticleTransformer").ParticleTransformer

logging.getLogger("weaver").setLevel(logging.WARNING)

KIN = 7  # ParT's 'kin' inputs


def _weaver(num_classes: int, **overrides: object) -> torch.nn.Module:
    # The paper's configuration, as in particle_transformer/networks/example_ParticleTransformer.py.
    cfg = {
        "input_dim": KIN,
        "num_classes": num_classes,
        "pair_input_dim": 4,
        "use_pre_activation_pair": False,
        "embed_dims": [128, 512, 128],
        "pair_embed_dims": [64, 64, 64],
        "num_heads": 8,
        "num_layers": 8,
        "num_cls_layers": 2,
        "cls_block_params": {"dropout": 0, "attn_dropout": 0, "activation_dropout": 0},
        "fc_params": [],
        "activation": "gelu",
        "trim": True,
        "for_inference": False,
        **overrides,
    }
    torch.manual_seed(num_classes)
    model = WeaverParT(**cfg)
    # weaver initialises norms to (1, 0), scales to 1 and batch-norm statistics to (0, 1): perturb
    # them all so that a mix-up of any two of them changes the output.
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            if key.endswith("running_var"):
                value.copy_(torch.rand_like(value) + 0.5)
            elif key.endswith(("running_mean", ".bias")):
                value.copy_(0.3 * torch.randn_like(value))
            elif value.dim() <= 1 or key == "cls_token":
                value.copy_(1.0 + 0.3 * torch.randn_like(value))
    return model.eval()


def _jets(batch_size: int, n_particles: int) -> ParticleBatch:
    """Variable-length padded jets plus one that fills all N slots."""
    g = torch.Generator().manual_seed(batch_size + n_particles)
    full = random_jets(1, n_particles, KIN, min_particles=n_particles, generator=g)
    rest = random_jets(batch_size - 1, n_particles, KIN, min_particles=3, generator=g)
    jets = ParticleBatch(
        x=torch.cat((full.x, rest.x)),
        mask=torch.cat((full.mask, rest.mask)),
        p4=torch.cat((full.p4, rest.p4)),
    )
    assert jets.mask[0].all()
    assert (~jets.mask).any()
    return jets


def _weaver_logits(model: torch.nn.Module, jets: ParticleBatch) -> torch.Tensor:
    # weaver's layout: features (B, F, N), four-vectors (B, 4, N), float mask (B, 1, N).
    return model(jets.x.transpose(1, 2), v=jets.p4.transpose(1, 2), mask=jets.mask.unsqueeze(1).float())


@pytest.mark.parametrize(
    ("num_classes", "n_particles", "overrides"),
    [
        (2, 64, {}),
        (10, 128, {}),
        (10, 48, {"use_sparse_pairs": False, "trim": False}),  # the torch.compile-friendly path
    ],
)
def test_logits_match_weaver(num_classes: int, n_particles: int, overrides: dict) -> None:
    reference = _weaver(num_classes)
    ours = create_backbone("part", KIN, **overrides).eval()
    head = load_weaver_state_dict(ours, reference.state_dict())
    assert head is not None
    jets = _jets(24, n_particles)
    with torch.no_grad():
        expected = _weaver_logits(reference, jets)
        got = head(ours(jets))
    diff = (got - expected).abs().max().item()
    assert got.shape == (24, num_classes)
    assert diff < 1e-5, f"max |Δlogit| = {diff:.2e}"


def test_published_checkpoint_key_styles_load() -> None:
    # ParT_{kin,kinpid,full}.pt come from the repository's wrapper ("mod." prefix) and older
    # weaver-core versions that used nn.MultiheadAttention ("attn.in_proj_weight").
    reference = _weaver(10)
    old_style = {
        "mod." + re.sub(r"attn\.in_proj\.(weight|bias)$", r"attn.in_proj_\1", k): v
        for k, v in reference.state_dict().items()
    }
    assert any(k.endswith("in_proj_weight") for k in old_style)
    ours = create_backbone("part", KIN).eval()
    head = load_weaver_state_dict(ours, old_style)
    jets = _jets(8, 32)
    with torch.no_grad():
        assert (head(ours(jets)) - _weaver_logits(reference, jets)).abs().max() < 1e-5


def test_converter_rejects_mismatches() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        load_weaver_state_dict(create_backbone("part", KIN), _weaver(2, fc_params=[(64, 0.1)]).state_dict())
    with pytest.raises(ValueError, match="does not fit"):
        load_weaver_state_dict(create_backbone("part", KIN + 1), _weaver(2).state_dict())
    backbone_only = {k: v for k, v in _weaver(2).state_dict().items() if not k.startswith("fc.")}
    assert load_weaver_state_dict(create_backbone("part", KIN), backbone_only) is None
