"""The J-JEPA objective (hepfm.objectives.jepa) on small backbones and multi-prong random jets."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

pytest.importorskip("fastjet")

from hepfm.contracts import ParticleBatch
from hepfm.data.features import FEATURE_SETS
from hepfm.data.jets import JetChunk
from hepfm.errors import HepfmInputError
from hepfm.models import SubjetTransformer, create_backbone
from hepfm.objectives.ema import momentum_at
from hepfm.objectives.jepa import JEPA, SjTEncoder, mean_pairwise_cosine
from hepfm.objectives.registry import create_objective

KIN = FEATURE_SETS.get("kin")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The CI box is shared: one intra-op thread avoids oversubscription stalls on these tiny models.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_batch(n_jets: int = 12, n_max: int = 32, seed: int = 0, single: int = 0) -> ParticleBatch:
    """Jets of 3-4 tight prongs (ΔR ≈ 0.35-0.45 apart); the last ``single`` jets have one particle."""
    rng = np.random.default_rng(seed)
    p4 = np.zeros((n_jets, n_max, 4))
    mask = np.zeros((n_jets, n_max), dtype=bool)
    for i in range(n_jets):
        eta0, phi0, parts = rng.uniform(-1.5, 1.5), rng.uniform(-math.pi, math.pi), []
        n_prongs = 1 if i >= n_jets - single else int(rng.integers(3, 5))
        for c in range(n_prongs):
            k = 1 if i >= n_jets - single else int(rng.integers(3, 7))
            a = 2 * math.pi * c / n_prongs + rng.uniform(0, 1)
            pt = rng.dirichlet(np.ones(k)) * rng.uniform(50, 300)
            eta = eta0 + 0.25 * math.cos(a) + rng.normal(0, 0.02, k)
            phi = phi0 + 0.25 * math.sin(a) + rng.normal(0, 0.02, k)
            parts.append(np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta),
                                   pt * np.cosh(eta)], axis=1))
        jet = np.concatenate(parts)
        jet = jet[np.argsort(-np.hypot(jet[:, 0], jet[:, 1]))][:n_max]
        p4[i, : len(jet)], mask[i, : len(jet)] = jet, True
    chunk = JetChunk(p4=p4.astype(np.float32), mask=mask)
    x = torch.from_numpy(KIN.compute(chunk))
    return ParticleBatch(x, torch.from_numpy(mask), torch.from_numpy(chunk.p4))


def make_jepa(backbone: str = "part-small", backbone_options: dict | None = None, **options) -> JEPA:
    torch.manual_seed(0)
    return create_objective("jepa", lambda: create_backbone(backbone, KIN.dim, **(backbone_options or {})),
                            KIN, options)


@pytest.mark.parametrize("backbone", ["part-small", "transformer-small", "sjt-small"])
def test_builds_from_registry_and_trains_a_step(backbone: str) -> None:
    obj = make_jepa(backbone)
    out = obj(make_batch())
    assert out.loss.ndim == 0
    assert torch.isfinite(out.loss)
    assert {"cos_sim", "pred_std", "target_std", "targets_per_jet", "unusable_jets"} <= set(out.logs)
    out.loss.backward()
    # every trainable parameter takes part (DistributedDataParallel needs no find_unused_parameters)
    assert [n for n, p in obj.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize("sel", ["mlp", "attention"])
def test_both_subjet_embeddings_run(sel: str) -> None:
    obj = make_jepa(subjet_embedding=sel, subjet_dim=24, loss="smooth_l1")
    out = obj(make_batch())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert out.logs["target_std"] > 0


def test_no_gradient_reaches_the_ema_target() -> None:
    obj = make_jepa()
    assert all(not p.requires_grad for p in obj.target.parameters())
    # what the engine's optimizer takes: every parameter that requires a gradient, none of the target's
    trainable = {id(p) for p in obj.parameters() if p.requires_grad}
    assert not trainable & {id(p) for p in obj.target.parameters()}
    assert {id(p) for p in obj.context.parameters()} <= trainable
    before = [p.clone() for p in obj.target.parameters()]
    opt = torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=0.1)
    obj(make_batch()).loss.backward()
    assert all(p.grad is None for p in obj.target.parameters())
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, obj.target.parameters(), strict=True))


def test_ema_update_moves_target_by_the_momentum() -> None:
    obj = make_jepa(ema_start=0.9, ema_end=1.0)
    with torch.no_grad():
        for p in obj.context.parameters():
            p.add_(torch.randn_like(p))
    old = [p.clone() for p in obj.target.parameters()]
    obj.on_step_end(0, 10)  # momentum 0.9 at step 0
    for t0, t1, c in zip(old, obj.target.parameters(), obj.context.parameters(), strict=True):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * c, atol=1e-6)
    assert momentum_at(0, 10, 0.996, 1.0) == pytest.approx(0.996)
    assert momentum_at(5, 10, 0.996, 1.0) == pytest.approx(0.998)
    assert momentum_at(10, 10, 0.996, 1.0) == pytest.approx(1.0)
    assert momentum_at(5, 10, 0.996, 1.0, "linear") == pytest.approx(0.998)


@pytest.mark.parametrize("backbone", ["part-small", "transformer-small"])
def test_context_encoder_never_sees_target_particles(backbone: str) -> None:
    obj = make_jepa(backbone).eval()
    batch = make_batch()
    sub = obj.find_subjets(batch)
    targets = obj.sample_targets(sub.mask, torch.Generator().manual_seed(3))
    hidden = torch.gather(targets, 1, sub.index.clamp(min=0)) & (sub.index >= 0)  # (B, N)
    assert hidden.any()
    assert (hidden.sum(1) < batch.mask.sum(1)).all()
    out1, reps1 = obj.encode_context(batch, sub, targets)
    h = hidden.unsqueeze(-1)
    changed = ParticleBatch(batch.x + 3.0 * h, batch.mask, batch.p4 * (1 + h))  # only target particles
    out2, reps2 = obj.encode_context(changed, sub, targets)
    assert torch.allclose(out1.pooled, out2.pooled)
    assert torch.allclose(reps1, reps2)
    assert int(out1.mask.sum()) == int((batch.mask & ~hidden).sum())  # only visible particles were encoded
    # the test is sensitive: the target encoder (which sees the full jet) does change
    assert not torch.allclose(obj.encode_targets(batch, sub), obj.encode_targets(changed, sub))


def test_targets_are_real_subjets_and_leave_context() -> None:
    obj = make_jepa()
    sub = obj.find_subjets(make_batch(seed=1))
    targets = obj.sample_targets(sub.mask)
    n, k = sub.mask.sum(1), targets.sum(1)
    assert not (targets & ~sub.mask).any()
    assert (k >= 1).all()
    assert (k <= n - 1).all()
    fixed = make_jepa(n_targets=2).sample_targets(sub.mask)
    assert (fixed.sum(1) == torch.minimum(torch.full_like(n, 2), n - 1)).all()


@pytest.mark.parametrize(("backbone", "backbone_options", "options"), [
    ("part-small", None, {"subjet_embedding": "mlp"}),
    ("sjt-small", {"embedding": "mlp"}, {}),  # SjT-T and AE-SjT-T in hepfm's reading
    ("sjt-small", {"embedding": "attention"}, {}),
])
def test_loss_decreases_on_a_fixed_batch(backbone, backbone_options, options) -> None:
    obj = make_jepa(backbone, backbone_options, **options)
    batch = make_batch()
    opt = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for step in range(12):
        torch.manual_seed(0)  # the same context/target split every step
        loss = obj(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        obj.on_step_end(step, 100)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_collapse_diagnostic() -> None:
    z = torch.randn(1, 16).expand(8, 16)
    assert mean_pairwise_cosine(z).item() == pytest.approx(1.0, abs=1e-5)
    assert mean_pairwise_cosine(torch.randn(64, 32)).item() < 0.2
    assert mean_pairwise_cosine(torch.randn(1, 4)).item() == 1.0


def test_jets_with_one_subjet_are_dropped_and_counted() -> None:
    obj = make_jepa()
    out = obj(make_batch(single=3))
    assert out.logs["unusable_jets"].item() == 3
    assert torch.isfinite(out.loss)


def test_batch_without_usable_jets_is_a_clear_input_error() -> None:
    obj = make_jepa()
    with pytest.raises(HepfmInputError, match="at least 2 subjets") as err:
        obj(make_batch(n_jets=4, single=4))
    assert err.value.exit_code == 2


def test_the_subjet_selection_keeps_jets_with_enough_subjets() -> None:
    batch = make_batch(n_jets=12)
    obj = make_jepa()
    counts = obj.find_subjets(batch).mask.sum(1)
    cut = int(counts.max())  # only the jets with the most subjets pass
    selective = make_jepa(min_subjets=cut)
    out = selective(batch)
    assert out.logs["unusable_jets"].item() == int((counts < cut).sum())
    assert torch.isfinite(out.loss)
    selective.prepare([batch])  # some jets pass: nothing to refuse
    strict = make_jepa(min_subjets=min(cut + 1, 20))
    with pytest.raises(HepfmInputError, match=r"min_subjets=\d+ leaves no jets") as err:
        strict.prepare(iter([batch, batch]))
    assert f"at most {cut}" in str(err.value)
    skipped = strict(batch)  # a batch no jet passes: nothing to learn, but the run goes on
    assert skipped.loss.item() == 0.0
    assert skipped.logs["skipped_batches"].item() == 1
    skipped.loss.backward()
    with pytest.raises(HepfmInputError, match="min_subjets must be >= 2"):
        make_jepa(min_subjets=1)


def test_the_seed_collapse_check_reads_flattened_subjet_representations() -> None:
    obj = make_jepa().train()
    out = obj(make_batch())
    assert 0.0 < out.logs["cos_sim_flat"].item() < 0.995
    assert obj.collapsed({"cos_sim_flat": 0.999}) is not None
    assert "flattened subjet" in obj.collapsed({"cos_sim_flat": 0.999, "cos_sim": 0.5})
    assert obj.collapsed({"cos_sim_flat": 0.6, "cos_sim": 0.5}) is None


def test_validation_splits_are_reproducible() -> None:
    obj = make_jepa().eval()
    batch = make_batch()
    with torch.no_grad():
        torch.manual_seed(1)
        a = obj(batch).loss
        torch.manual_seed(2)
        b = obj(batch).loss
    assert torch.equal(a, b)


def test_options_and_export() -> None:
    with pytest.raises(
        HepfmInputError,
        match=r"unknown option objective\.options\.n_target; did you mean objective\.options\.n_targets",
    ):
        make_jepa(n_target=2)
    with pytest.raises(HepfmInputError, match="subjet_embedding"):
        make_jepa(subjet_embedding="linear")
    with pytest.raises(HepfmInputError, match="multiple of predictor_heads"):
        make_jepa(predictor_dim=10, predictor_heads=4)
    obj = make_jepa()
    exported = obj.export_backbone()
    assert exported is not obj.target.backbone
    assert all(p.requires_grad for p in exported.parameters())
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(),
                                                   obj.target.backbone.state_dict().values(), strict=True))
    ctx = make_jepa(export="context")
    assert ctx.export_backbone() is ctx.context.backbone


# --- subjet-level J-JEPA: the SjT as context and target encoder --------------------------------------


def test_sjt_is_its_own_subjet_encoder() -> None:
    obj = make_jepa("sjt-small")
    assert obj.subjet_level
    assert not make_jepa().subjet_level
    assert isinstance(obj.context, SjTEncoder)
    assert isinstance(obj.target, SjTEncoder)
    assert [name for name, _ in obj.context.named_children()] == ["backbone"]  # no SEL on top
    batch = make_batch()
    sub = obj.find_subjets(batch)
    with torch.no_grad():
        sjt = obj.target.backbone
        tokens, _, _ = sjt.encode_subjets(batch, sub.index, sub.max_subjets, sub.coordinates())
        reps = obj.encode_targets(batch, sub)
    torch.testing.assert_close(reps, torch.nn.functional.layer_norm(tokens, tokens.shape[-1:]))


@pytest.mark.parametrize("aggregation", ["class_attention", "flatten"])
def test_sjt_context_encoder_never_sees_target_subjets(aggregation: str) -> None:
    obj = make_jepa("sjt-small", {"aggregation": aggregation}).eval()
    batch = make_batch()
    sub = obj.find_subjets(batch)
    targets = obj.sample_targets(sub.mask, torch.Generator().manual_seed(3))
    hidden = torch.gather(targets, 1, sub.index.clamp(min=0)) & (sub.index >= 0)  # (B, N)
    assert hidden.any()
    with torch.no_grad():
        out1, reps1 = obj.encode_context(batch, sub, targets)
        h = hidden.unsqueeze(-1)
        changed = ParticleBatch(batch.x + 3.0 * h, batch.mask, batch.p4 * (1 + h))  # only target particles
        out2, reps2 = obj.encode_context(changed, sub, targets)
    assert torch.equal(out1.mask, sub.mask & ~targets)  # the target subjets are absent, the rest present
    assert (reps1[targets] == 0).all()
    torch.testing.assert_close(out1.pooled, out2.pooled)
    torch.testing.assert_close(reps1, reps2)
    # the test is sensitive: the target encoder (which sees the full jet) does change
    assert not torch.allclose(obj.encode_targets(batch, sub), obj.encode_targets(changed, sub))


def test_sjt_options_must_agree_with_the_backbone() -> None:
    with pytest.raises(HepfmInputError, match=r"objective\.options\.max_subjets=10 differs .*max_subjets=20"):
        make_jepa("sjt-small", max_subjets=10)
    with pytest.raises(HepfmInputError, match=r"subjet_radius=0\.3 differs"):
        make_jepa("sjt-small", subjet_radius=0.3)
    with pytest.raises(HepfmInputError, match=r"subjet_embedding=mlp contradicts .*embedding=attention"):
        make_jepa("sjt-small", subjet_embedding="mlp")
    with pytest.raises(HepfmInputError, match="subjet_dim=32 contradicts"):
        make_jepa("sjt-small", subjet_dim=32)
    make_jepa("sjt-small", {"embedding": "mlp", "max_subjets": 10}, subjet_embedding="mlp", max_subjets=10)


def test_sjt_export_is_an_sjt_that_encodes_plain_batches() -> None:
    obj = make_jepa("sjt-small", {"aggregation": "flatten"})
    exported = obj.export_backbone()
    assert isinstance(exported, SubjetTransformer)
    assert all(p.requires_grad for p in exported.parameters())
    batch = make_batch()
    out = exported.eval()(batch)
    assert out.tokens.shape == (*batch.mask.shape, 64)
    assert out.pooled is not None
    assert out.pooled.shape == (len(batch), 20 * 64)
    assert torch.isfinite(out.pooled).all()
