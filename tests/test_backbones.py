"""Contract tests for every registered backbone (small presets) and the shared building blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hepfm.contracts import ParticleBatch
from hepfm.errors import HepfmInputError
from hepfm.models import BACKBONES, backbone_config, create_backbone
from hepfm.models.particle_net import knn
from hepfm.models.particle_transformer import PairEmbed
from hepfm.nn import MaskedBatchNorm, relative_eta_phi
from hepfm.nn.testing import random_jets, scramble_padding, shuffle_slots

F_IN = 7
SMALL = sorted(name for name in BACKBONES if name.endswith("-small"))
FAMILIES = {type(create_backbone(name, F_IN)) for name in BACKBONES}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def jets() -> ParticleBatch:
    return random_jets(6, 24, F_IN, min_particles=2, generator=_gen(1))


def _model(name: str, **overrides: object) -> nn.Module:
    torch.manual_seed(0)
    model = create_backbone(name, F_IN, **overrides)
    # Non-trivial batch-norm statistics, so eval-mode checks see more than the identity.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_every_family_has_a_small_preset() -> None:
    assert {type(create_backbone(name, F_IN)) for name in SMALL} == FAMILIES
    assert len(FAMILIES) == 5


@pytest.mark.parametrize("name", SMALL)
def test_output_shapes(name: str, jets: ParticleBatch) -> None:
    model = _model(name)
    out = model(jets)
    b, n = jets.mask.shape
    assert out.tokens.shape == (b, n, model.embed_dim)
    assert torch.equal(out.mask, jets.mask)
    assert out.pooled is not None
    assert out.pooled.shape == (b, model.pooled_dim)
    assert torch.isfinite(out.tokens).all()
    assert torch.isfinite(out.pooled).all()
    assert (out.tokens[~jets.mask] == 0).all()


@pytest.mark.parametrize("trim", [True, False])
@pytest.mark.parametrize("name", SMALL)
def test_padding_invariance(name: str, trim: bool, jets: ParticleBatch) -> None:
    model = _model(name, trim=trim)
    # Interleave the padding first, so trimming trailing slots cannot hide a dependence on it.
    base, _ = shuffle_slots(jets, _gen(2))
    noisy = scramble_padding(base, _gen(3), extra=5)
    with torch.no_grad():
        ref, out = model(base), model(noisy)
    n = base.mask.shape[1]
    assert out.tokens.shape[1] == n + 5
    _close(out.tokens[:, :n][base.mask], ref.tokens[base.mask])
    _close(out.pooled, ref.pooled)


def _without_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = 0.0  # attention-probability dropout
    return model


@pytest.mark.parametrize("name", SMALL)
def test_padding_invariance_in_training_mode(name: str, jets: ParticleBatch) -> None:
    # Batch statistics (batch norm) must be computed over real particles only.
    model = _without_dropout(_model(name, trim=False)).train()
    base, _ = shuffle_slots(jets, _gen(2))
    noisy = scramble_padding(base, _gen(3), extra=5)
    ref, out = model(base), model(noisy)
    n = base.mask.shape[1]
    _close(out.tokens[:, :n][base.mask], ref.tokens[base.mask])
    _close(out.pooled, ref.pooled)


@pytest.mark.parametrize("name", SMALL)
def test_trimming_is_exact(name: str, jets: ParticleBatch) -> None:
    padded = scramble_padding(jets, _gen(4), extra=16)
    with torch.no_grad():
        trimmed, full = _model(name, trim=True)(padded), _model(name, trim=False)(padded)
    _close(trimmed.tokens[padded.mask], full.tokens[padded.mask])
    _close(trimmed.pooled, full.pooled)


@pytest.mark.parametrize("name", SMALL)
def test_permutation_symmetry(name: str, jets: ParticleBatch) -> None:
    model = _model(name)
    shuffled, perm = shuffle_slots(jets, _gen(5))
    with torch.no_grad():
        ref, out = model(jets), model(shuffled)
    expected = torch.gather(ref.tokens, 1, perm.unsqueeze(-1).expand_as(ref.tokens))
    _close(out.tokens, expected)  # equivariant tokens
    _close(out.pooled, ref.pooled)  # invariant jet embedding


@pytest.mark.parametrize("name", SMALL)
def test_gradients_reach_every_parameter(name: str, jets: ParticleBatch) -> None:
    model = _model(name).train()
    out = model(jets)
    g = _gen(6)
    loss = (out.pooled * torch.randn(out.pooled.shape, generator=g)).sum()
    loss = loss + (out.tokens * torch.randn(out.tokens.shape, generator=g)).sum()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", SMALL)
def test_eval_is_deterministic_and_train_mode_is_not(name: str, jets: ParticleBatch) -> None:
    model = _model(name)
    with torch.no_grad():
        a, b = model(jets), model(jets)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.pooled, b.pooled)
    uses_dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    if uses_dropout:
        model.train()
        torch.manual_seed(7)
        c = model(jets)
        assert not torch.allclose(c.pooled, a.pooled)


@pytest.mark.parametrize("name", SMALL)
def test_wrong_inputs_raise_clear_errors(name: str, jets: ParticleBatch) -> None:
    model = _model(name)
    bad = ParticleBatch(x=jets.x[..., :5], mask=jets.mask, p4=jets.p4)
    with pytest.raises(ValueError, match=rf"built for {F_IN} input features.*\(6, 24, 5\)"):
        model(bad)
    with pytest.raises(ValueError, match="mask must be bool"):
        model(ParticleBatch(x=jets.x, mask=jets.mask.float(), p4=jets.p4))


def test_registry_errors_and_overrides() -> None:
    with pytest.raises(HepfmInputError, match="did you mean part"):
        create_backbone("partt", F_IN)
    with pytest.raises(HepfmInputError, match=r"unknown option model\.backbone_options\.num_layers"):
        create_backbone("pfn-small", F_IN, num_layers=3)
    model = create_backbone("part-small", F_IN, embed_dims=[16, 16], num_layers=1)  # YAML lists
    assert model.config.embed_dims == (16, 16)
    assert len(model.blocks) == 1
    assert model.embed_dim == 16
    assert backbone_config("part").num_layers == 8  # the registered preset is not mutated


def test_paper_parameter_counts() -> None:
    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    # ParT on JetClass 'full' (17 features, 10 classes): 2.14M in the paper (weaver: 2,143,486).
    assert count(create_backbone("part", 17)) + (128 + 1) * 10 == 2_143_486
    # ParticleNet (7 inputs) + its FC(256) classifier for 2 classes: 366k in the paper; Lite 26k.
    fc = (256 + 1) * 256 + (256 + 1) * 2
    assert round((count(create_backbone("particle_net", 7)) + fc) / 1e3) == 366
    assert round((count(create_backbone("particle_net-lite", 7)) + (64 + 1) * 128 + 129 * 2) / 1e3) == 26


def test_part_no_weight_decay_names_exist() -> None:
    model = create_backbone("part-small", F_IN)
    assert model.no_weight_decay() <= dict(model.named_parameters()).keys()


# --- building blocks -------------------------------------------------------------------------------


def test_masked_batchnorm_ignores_padded_rows() -> None:
    g = _gen(8)
    x = torch.randn(4, 10, 3, generator=g)
    mask = torch.rand(4, 10, generator=g) > 0.4
    ours, ref = MaskedBatchNorm(3), nn.BatchNorm1d(3)
    y = ours(x.masked_fill(~mask.unsqueeze(-1), 1e3), mask)  # padded rows hold junk
    y_ref = ref(x[mask])
    _close(y[mask], y_ref)
    _close(ours.running_mean, ref.running_mean)
    _close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    _close(ours(x)[mask], ref(x[mask]))


def test_knn_skips_self_and_padding() -> None:
    points = torch.tensor([[[0.0], [1.0], [3.0], [0.5], [9.0]]])
    mask = torch.tensor([[True, True, True, False, True]])  # slot 3 (closest to 0) is padding
    idx, valid = knn(points, mask, k=2)
    assert idx[0, 0].tolist() == [1, 2]
    assert valid.all()
    idx, valid = knn(points, mask, k=10)  # more neighbours asked than real particles exist
    assert idx.shape[-1] == 4
    assert valid[0, 0].sum() == 3
    assert 3 not in idx[0, 0][valid[0, 0]].tolist()


@pytest.mark.parametrize("training", [True, False])
def test_pair_embed_sparse_equals_dense(training: bool, jets: ParticleBatch) -> None:
    torch.manual_seed(0)
    sparse = PairEmbed((8, 8), num_heads=4, use_output_activation=True, use_sparse=True)
    dense = PairEmbed((8, 8), num_heads=4, use_output_activation=True, use_sparse=False)
    dense.load_state_dict(sparse.state_dict())
    sparse.train(training), dense.train(training)
    a, b = sparse(jets.p4, jets.mask), dense(jets.p4, jets.mask)
    pair = (jets.mask[:, :, None] & jets.mask[:, None, :]).unsqueeze(1).expand_as(a)
    _close(a[pair], b[pair])
    _close(sparse.input_norm.running_mean, dense.input_norm.running_mean)


def test_relative_eta_phi_agrees_with_vector() -> None:
    vector = pytest.importorskip("vector")
    jets = random_jets(8, 30, generator=_gen(9))
    coords = relative_eta_phi(jets.p4, jets.mask)
    assert coords.shape == (8, 30, 2)
    assert (coords[~jets.mask] == 0).all()
    p4 = jets.p4.double().numpy()
    for b in range(8):
        real = jets.mask[b].numpy()
        parts = vector.array({k: p4[b, real, i] for i, k in enumerate(("px", "py", "pz", "E"))})
        axis = vector.obj(**{k: p4[b, real, i].sum() for i, k in enumerate(("px", "py", "pz", "E"))})
        expected = torch.from_numpy(np.stack((parts.deltaeta(axis), parts.deltaphi(axis)), -1))
        torch.testing.assert_close(coords[b, jets.mask[b]].double(), expected, atol=2e-5, rtol=1e-4)
