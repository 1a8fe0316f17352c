"""Masked particle modelling: masking, leak-freeness, the codebook, orderings, training signal."""

from __future__ import annotations

import math

import pytest
import torch

from hepfm.contracts import ParticleBatch
from hepfm.data.features import FEATURE_SETS
from hepfm.errors import HepfmInputError
from hepfm.models import create_backbone
from hepfm.nn.testing import random_jets
from hepfm.objectives.mpm import (
    MaskedParticleModelling,
    MPMConfig,
    pt_rank,
    sample_mask,
)
from hepfm.objectives.registry import create_objective
from hepfm.objectives.tokenize import KMeansCodebook, kmeans, nearest_centre

SMALL_HEAD = {"head_dim": 32, "head_layers": 1, "head_heads": 4, "max_rank": 32, "codebook_size": 16}


def _jets(seed: int = 0, b: int = 16, n: int = 24) -> ParticleBatch:
    return random_jets(b, n, 7, min_particles=1, generator=torch.Generator().manual_seed(seed))


def _mpm(backbone: str = "part-small", **options) -> MaskedParticleModelling:
    torch.manual_seed(0)
    obj = create_objective("mpm", lambda: create_backbone(backbone, 7), FEATURE_SETS.get("kin"),
                           SMALL_HEAD | options)
    obj.prepare([_jets(10), _jets(11)])
    return obj


# -- masking -----------------------------------------------------------------------------------------

def test_mask_respects_padding_and_fraction() -> None:
    batch = _jets(b=64, n=32)
    torch.manual_seed(3)
    sel = sample_mask(batch.mask, 0.3)
    assert not (sel & ~batch.mask).any()
    n = batch.mask.sum(1)
    want = torch.floor(0.3 * n + 0.5).clamp(min=1)
    want = torch.minimum(want, (n - 1).clamp(min=1))
    assert torch.equal(sel.sum(1), want.long())
    assert (sel.sum(1) >= 1).all()
    assert ((n - sel.sum(1) >= 1) | (n == 1)).all()  # some context kept where n > 1
    overall = sel.sum() / batch.mask.sum()
    assert abs(float(overall) - 0.3) < 0.05


def test_mask_is_random_and_seeded() -> None:
    mask = torch.ones(4, 50, dtype=torch.bool)
    torch.manual_seed(1)
    a = sample_mask(mask, 0.5)
    torch.manual_seed(1)
    b = sample_mask(mask, 0.5)
    c = sample_mask(mask, 0.5)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # jets are masked independently


def test_pt_rank_orders_real_particles_first() -> None:
    batch = _jets(b=8, n=16)
    perm = torch.randperm(16)
    p4, mask = batch.p4[:, perm], batch.mask[:, perm]
    rank = pt_rank(p4, mask)
    pt = torch.hypot(p4[..., 0], p4[..., 1])
    for j in range(8):
        real = mask[j].nonzero().squeeze(1)
        order = real[torch.argsort(pt[j, real], descending=True)]
        assert torch.equal(rank[j, order], torch.arange(len(real)))
        assert (rank[j, ~mask[j]] >= len(real)).all()


# -- no information leak -----------------------------------------------------------------------------

def _tamper(batch: ParticleBatch, sel: torch.Tensor, keep_pt: bool) -> ParticleBatch:
    """New random content for the masked particles only (pT kept if ``keep_pt``, so ranks stay)."""
    g = torch.Generator().manual_seed(99)
    x = torch.where(sel.unsqueeze(-1), 5.0 * torch.randn(batch.x.shape, generator=g), batch.x)
    pt = torch.hypot(batch.p4[..., 0], batch.p4[..., 1])
    if not keep_pt:
        pt = 300.0 * torch.rand(pt.shape, generator=g)
    eta, phi = torch.randn(pt.shape, generator=g), 3.0 * torch.rand(pt.shape, generator=g)
    new = torch.stack((pt * phi.cos(), pt * phi.sin(), pt * eta.sinh(), pt * eta.cosh() + 1.0), -1)
    p4 = torch.where(sel.unsqueeze(-1), new, batch.p4)
    return ParticleBatch(x=x, mask=batch.mask, p4=p4, jet=batch.jet, label=batch.label)


@pytest.mark.parametrize("backbone", ["part-small", "transformer-small"])
@pytest.mark.parametrize("ordering", ["none", "input", "head"])
@pytest.mark.parametrize("train_mode", [False, True])
def test_masked_content_does_not_reach_backbone(backbone: str, ordering: str, train_mode: bool) -> None:
    obj = _mpm(backbone, ordering=ordering).train(train_mode)  # train: batch-norm batch statistics
    batch = _jets(1)
    torch.manual_seed(5)
    sel = sample_mask(batch.mask, 0.3)
    # ``input`` ordering gives the backbone each particle's pT rank by design, so keep the ranks there
    tampered = _tamper(batch, sel, keep_pt=ordering == "input")
    outs = []
    for b in (batch, tampered):
        torch.manual_seed(7)  # the same dropout draws
        outs.append(obj.encode_masked(b, sel)[0])
    real = batch.mask.unsqueeze(-1)
    torch.testing.assert_close(outs[0].tokens * real, outs[1].tokens * real)
    if outs[0].pooled is not None:
        torch.testing.assert_close(outs[0].pooled, outs[1].pooled)


def test_leak_test_is_sensitive() -> None:
    """Control: ParT does read p4, so masking x alone (without neutralising p4) would leak."""
    obj = _mpm("part-small").eval()
    batch = _jets(1)
    torch.manual_seed(5)
    sel = sample_mask(batch.mask, 0.3)
    tampered = _tamper(batch, sel, keep_pt=False)
    rank = pt_rank(batch.p4, batch.mask)
    a, b = (obj.corrupt(v, sel, rank) for v in (batch, tampered))
    leaky = ParticleBatch(x=b.x, mask=b.mask, p4=tampered.p4)  # true p4 of the masked particles
    assert not torch.allclose(obj.backbone(a).pooled, obj.backbone(leaky).pooled)
    assert torch.equal(b.p4[sel], torch.zeros_like(b.p4[sel]))
    assert b.jet is None


def test_ordering_none_is_a_set_prediction_and_head_is_not() -> None:
    batch = _jets(2, b=4, n=20)
    torch.manual_seed(4)
    sel = sample_mask(batch.mask, 0.3)
    for ordering, same in (("none", True), ("head", False)):
        obj = _mpm(ordering=ordering).eval()
        out, rank = obj.encode_masked(batch, sel)
        pred = obj.head(out, sel, rank)  # (M, K)
        first = sel.nonzero()[:, 0] == 0  # masked particles of jet 0
        rows = pred[first]
        assert rows.shape[0] >= 2
        assert torch.allclose(rows[0], rows[1], atol=1e-5) == same


# -- codebook ----------------------------------------------------------------------------------------

def test_kmeans_deterministic_and_round_trips() -> None:
    x = torch.randn(3000, 7, generator=torch.Generator().manual_seed(0))
    a, b = kmeans(x, 32, seed=3), kmeans(x, 32, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, kmeans(x, 32, seed=4))
    book = KMeansCodebook(32, 7)
    book.fit(x, seed=3)
    assert torch.equal(book.encode(book.centres), torch.arange(32))
    torch.testing.assert_close(book.decode(torch.arange(32)), book.centres)
    ids = book.encode(x.view(30, 100, 7))  # vectorised over any leading shape
    assert ids.shape == (30, 100)
    brute = torch.cdist(x, book.centres).argmin(1)
    assert (ids.view(-1) == brute).float().mean() > 0.999  # up to float ties


def test_kmeans_recovers_clusters() -> None:
    g = torch.Generator().manual_seed(1)
    truth = 10.0 * torch.randn(8, 3, generator=g)
    x = (truth.repeat(200, 1) + 0.05 * torch.randn(1600, 3, generator=g))
    centres = kmeans(x, 8, seed=0)
    _, d2 = nearest_centre(truth, centres)
    assert d2.max() < 0.01
    with pytest.raises(HepfmInputError):
        kmeans(x[:5], 8)


def test_prepare_uses_real_particles_and_is_saved() -> None:
    batch = _jets(3)
    junk = batch.x.masked_fill(~batch.mask.unsqueeze(-1), 1e3)  # padding must not be clustered
    obj = _mpm()
    obj.prepare([ParticleBatch(x=junk, mask=batch.mask, p4=batch.p4)], force=True)
    assert obj.codebook.centres.abs().max() < 100.0
    state = obj.state_dict()
    assert "codebook.centres" in state
    assert bool(state["codebook.fitted"])
    kin = FEATURE_SETS.get("kin")
    fresh = create_objective("mpm", lambda: create_backbone("part-small", 7), kin, SMALL_HEAD)
    assert not bool(fresh.codebook.fitted)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.codebook.encode(batch.x), obj.codebook.encode(batch.x))
    before = fresh.codebook.centres.clone()
    fresh.prepare([_jets(20)])  # already fitted: no refit
    assert torch.equal(fresh.codebook.centres, before)


def test_unfitted_codebook_is_a_clear_error_and_regression_needs_none() -> None:
    kin = FEATURE_SETS.get("kin")
    obj = create_objective("mpm", lambda: create_backbone("pfn-small", 7), kin, SMALL_HEAD)
    with pytest.raises(HepfmInputError, match="prepare"):
        obj(_jets())
    reg = create_objective("mpm", lambda: create_backbone("pfn-small", 7), kin,
                           SMALL_HEAD | {"target": "regression"})
    assert reg.codebook is None
    assert reg.prepare([_jets()]) is None
    assert math.isfinite(float(reg(_jets()).loss.detach()))


# -- objective ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ordering", ["none", "input", "head"])
@pytest.mark.parametrize("target", ["tokens", "regression"])
def test_loss_finite_and_gradients_reach_backbone(ordering: str, target: str) -> None:
    obj = _mpm(ordering=ordering, target=target)
    torch.manual_seed(0)
    out = obj(_jets(4))
    assert out.loss.ndim == 0
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in obj.backbone.parameters() if p.requires_grad]
    assert sum(g.abs().sum() for g in grads if g is not None) > 0
    assert obj.mask_token.grad is not None
    assert obj.mask_token.grad.abs().sum() > 0
    if target == "tokens":
        assert {"token_accuracy", "token_top5", "masked_fraction"} <= set(out.logs)
        assert not any(t.requires_grad for t in obj.codebook.buffers())
        assert not list(obj.codebook.parameters())
    else:
        assert {"feature_mse", "feature_mae"} <= set(out.logs)
    assert "mask_token" in obj.no_weight_decay()


@pytest.mark.parametrize("target", ["tokens", "regression"])
def test_few_steps_reduce_loss(target: str) -> None:
    obj = _mpm(target=target, head_dim=64)
    batch = _jets(5, b=16)
    opt = torch.optim.Adam(obj.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        torch.manual_seed(0)  # the same mask every step: a fixed task to fit
        loss = obj(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]


@pytest.mark.parametrize("backbone", ["part-small", "transformer-small"])
def test_registry_build_and_export(backbone: str) -> None:
    obj = create_objective("mpm", lambda: create_backbone(backbone, 7), FEATURE_SETS.get("kin"),
                           {"mask_fraction": 0.3, "ordering": "head", **SMALL_HEAD})
    assert isinstance(obj, MaskedParticleModelling)
    assert obj.export_backbone() is obj.backbone
    assert obj.config == MPMConfig(**{"mask_fraction": 0.3, "ordering": "head", **SMALL_HEAD})
    obj.prepare([_jets(6)])
    assert torch.isfinite(obj(_jets(7)).loss)


def test_bad_options_are_input_errors() -> None:
    kin = FEATURE_SETS.get("kin")
    for opts in ({"ordering": "sorted"}, {"target": "flow"}, {"mask_fraction": 1.5}, {"colour": 1}):
        with pytest.raises(HepfmInputError):
            create_objective("mpm", lambda: create_backbone("pfn-small", 7), kin, opts)
    with pytest.raises(HepfmInputError):
        create_objective("mpm", lambda: create_backbone("pfn-small", 5), kin, {})


def test_fit_codebook_subsamples_deterministically() -> None:
    x = torch.randn(500, 7, generator=torch.Generator().manual_seed(2))
    books = []
    for _ in range(2):
        obj = create_objective("mpm", lambda: create_backbone("pfn-small", 7), FEATURE_SETS.get("kin"),
                               SMALL_HEAD | {"codebook_particles": 100})
        obj.fit_codebook(x)
        books.append(obj.codebook.centres)
    assert torch.equal(books[0], books[1])
    assert bool(obj.codebook.fitted)


def test_rank_tables_are_sized_by_the_data_particle_cap():
    kin = FEATURE_SETS.get("kin")
    head = {k: v for k, v in SMALL_HEAD.items() if k != "max_rank"}
    obj = create_objective("mpm", lambda: create_backbone("pfn-small", 7), kin, head, max_particles=24)
    assert obj.config.max_rank == 24
    assert obj.head.rank_embed.num_embeddings == 24
    with pytest.raises(HepfmInputError, match="max_rank"):
        create_objective("mpm", lambda: create_backbone("pfn-small", 7), kin, head)


def test_the_codebook_can_tokenise_the_papers_inputs_only() -> None:
    """token_features picks the columns the k-means codebook reads; the head still sees every feature."""
    from hepfm.objectives.mpm import PAPER_TOKEN_FEATURES

    paper = _mpm(token_features=list(PAPER_TOKEN_FEATURES), codebook_size=8)
    assert paper.codebook.centres.shape == (8, 3)
    kin = FEATURE_SETS.get("kin")
    cols = [kin.names.index(n) for n in PAPER_TOKEN_FEATURES]
    batch = _jets(3)
    truth = batch.x[batch.mask]
    # the token of a particle depends on those columns only
    other = truth.clone()
    rest = [i for i in range(kin.dim) if i not in cols]
    other[:, rest] += 5.0
    tokens = paper.codebook.encode(paper._tokenised(truth))
    assert torch.equal(tokens, paper.codebook.encode(paper._tokenised(other)))
    other[:, cols[0]] += 5.0  # moving Δη moves the tokens
    assert not torch.equal(tokens, paper.codebook.encode(paper._tokenised(other)))
    out = paper(batch)
    assert torch.isfinite(out.loss)
    with pytest.raises(HepfmInputError, match=r"token_features .* must name columns of feature set 'kin'"):
        _mpm(token_features=["part_deta", "part_bogus"])
