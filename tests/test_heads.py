"""Every head on every backbone (small presets): shapes, padding invariance, pooling semantics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hepfm.contracts import BackboneOutput, ParticleBatch
from hepfm.errors import HepfmInputError
from hepfm.heads import HEADS, ClassAttentionHead, create_head, create_head_for
from hepfm.models import BACKBONES, create_backbone
from hepfm.nn import masked_mean
from hepfm.nn.testing import random_jets, scramble_padding, shuffle_slots

F_IN, K = 7, 3
SMALL = sorted(name for name in BACKBONES if name.endswith("-small"))
HEAD_OPTIONS = {"flatten": {"n_tokens": 16}, "mlp": {"hidden_dims": (16, 16)}}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def jets() -> ParticleBatch:
    return random_jets(5, 20, F_IN, min_particles=2, generator=_gen(11))


@pytest.fixture(scope="module")
def backbones() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: create_backbone(name, F_IN).eval() for name in SMALL}


def _head(name: str, backbone: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    return create_head_for(name, backbone, K, **HEAD_OPTIONS.get(name, {})).eval()


def test_registry_names() -> None:
    assert set(HEADS) == {"linear", "mlp", "mean", "class-attention", "flatten"}


@pytest.mark.parametrize("backbone_name", SMALL)
@pytest.mark.parametrize("head_name", sorted(HEADS))
def test_shapes_and_padding_invariance(
    head_name: str, backbone_name: str, backbones: dict[str, nn.Module], jets: ParticleBatch
) -> None:
    backbone = backbones[backbone_name]
    head = _head(head_name, backbone)
    base, _ = shuffle_slots(jets, _gen(12))  # padding between real particles
    noisy = scramble_padding(base, _gen(13), extra=6)
    with torch.no_grad():
        ref, out = head(backbone(base)), head(backbone(noisy))
    assert ref.shape == (5, K)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head_name", ["linear", "mlp", "mean", "class-attention"])
def test_set_heads_are_permutation_invariant(
    head_name: str, backbones: dict[str, nn.Module], jets: ParticleBatch
) -> None:
    backbone = backbones["part-small"]
    head = _head(head_name, backbone)
    with torch.no_grad():
        ref = head(backbone(jets))
        out = head(backbone(shuffle_slots(jets, _gen(14))[0]))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_flatten_head_reads_tokens_in_order() -> None:
    head = create_head("flatten", 2, 1, n_tokens=3)
    with torch.no_grad():
        head.fc.weight.copy_(torch.arange(6.0).view(1, 6))
        head.fc.bias.zero_()
    tokens = torch.tensor([[[1.0, 0.0], [9.0, 9.0], [0.0, 1.0], [5.0, 5.0]]])  # slots 1, 3 padded
    mask = torch.tensor([[True, False, True, False]])
    logits = head(BackboneOutput(tokens=tokens, mask=mask))
    # Real tokens first ([1, 0], [0, 1]), then zero padding: 0*1 + 3*1 = 3.
    assert logits.item() == pytest.approx(3.0)
    assert head(BackboneOutput(tokens=tokens[:, :2], mask=mask[:, :2])).item() == pytest.approx(0.0)


def test_linear_uses_pooled_and_mean_uses_tokens(
    backbones: dict[str, nn.Module], jets: ParticleBatch
) -> None:
    backbone = backbones["pfn-small"]  # pooled (32) and tokens (64) differ in width
    out = backbone(jets)
    linear, mean = _head("linear", backbone), _head("mean", backbone)
    torch.testing.assert_close(linear(out), linear.fc(out.pooled))
    torch.testing.assert_close(mean(out), mean.fc(masked_mean(out.tokens, out.mask)))
    no_pool = BackboneOutput(tokens=out.tokens, mask=out.mask)
    tokens_linear = create_head("linear", backbone.embed_dim, K)
    torch.testing.assert_close(tokens_linear(no_pool), tokens_linear.fc(masked_mean(out.tokens, out.mask)))
    with pytest.raises(ValueError, match="create_head_for"):
        create_head("linear", backbone.embed_dim, K)(out)  # built without pooled_dim


def test_class_attention_head_reproduces_part_pooling(
    backbones: dict[str, nn.Module], jets: ParticleBatch
) -> None:
    part = backbones["part-small"]
    cfg = part.config
    head = ClassAttentionHead(part.embed_dim, K, num_heads=cfg.num_heads, num_blocks=cfg.num_cls_layers)
    head.blocks.load_state_dict(part.cls_blocks.state_dict())
    head.norm.load_state_dict(part.norm.state_dict())
    head.cls_token.data.copy_(part.cls_token.data)
    head.eval()
    with torch.no_grad():
        out = part(jets)
        torch.testing.assert_close(head(out), head.fc(out.pooled), atol=1e-6, rtol=1e-6)


def test_create_head_rejects_unknown_names_and_options() -> None:
    with pytest.raises(HepfmInputError, match="unknown head"):
        create_head("linaer", 8, 2)
    with pytest.raises(HepfmInputError, match="n_tokens"):
        create_head("mean", 8, 2, n_tokens=4)


def test_heads_train(backbones: dict[str, nn.Module], jets: ParticleBatch) -> None:
    backbone = backbones["transformer-small"]
    with torch.no_grad():
        out = backbone(jets)
    labels = torch.arange(5) % K
    for name in sorted(HEADS):
        head = _head(name, backbone).train()
        loss = nn.functional.cross_entropy(head(out), labels)
        loss.backward()
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
