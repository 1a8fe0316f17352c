"""The Subjet Transformer backbone (hepfm.models.subjet_transformer), beyond the shared contract tests."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastjet")

from hepfm.contracts import ParticleBatch
from hepfm.errors import HepfmInputError
from hepfm.models import SubjetTransformer, create_backbone
from hepfm.nn.testing import random_jets

F_IN = 7
D = 64  # sjt-small's width
S_MAX = 20


@pytest.fixture(scope="module")
def jets() -> ParticleBatch:
    # wide jets (up to 0.2 in Δη, Δφ) so that most have several R = 0.2 subjets
    return random_jets(8, 40, F_IN, min_particles=6, generator=torch.Generator().manual_seed(11))


def _sjt(**overrides: object) -> SubjetTransformer:
    torch.manual_seed(0)
    model = create_backbone("sjt-small", F_IN, **overrides)
    assert isinstance(model, SubjetTransformer)
    return model.eval()


@pytest.mark.parametrize("embedding", ["mlp", "attention"])
def test_each_subjet_is_embedded_from_its_own_particles_only(embedding: str, jets: ParticleBatch) -> None:
    model = _sjt(embedding=embedding)
    sub = model.find_subjets(jets)
    jet = int(sub.mask.sum(1).argmax())  # the jet with the most subjets
    assert int(sub.mask[jet].sum()) >= 3
    k = 1
    in_k = (sub.index == k) & (torch.arange(len(jets)) == jet).unsqueeze(1)  # (B, N) particles of subjet k
    changed = ParticleBatch(jets.x + 2.0 * in_k.unsqueeze(-1), jets.mask, jets.p4)
    with torch.no_grad():
        before = model.embed_subjets(jets, sub.index, sub.max_subjets)  # (B, S, D) SEL tokens
        after = model.embed_subjets(changed, sub.index, sub.max_subjets)
        tokens_before, _, _ = model.encode_subjets(jets, sub.index, sub.max_subjets, sub.coordinates())
        tokens_after, _, _ = model.encode_subjets(changed, sub.index, sub.max_subjets, sub.coordinates())
    others = torch.ones_like(sub.mask)
    others[jet, k] = False
    torch.testing.assert_close(after[others], before[others], atol=1e-6, rtol=0)
    assert (after[jet, k] - before[jet, k]).abs().max() > 1e-3
    # sensitivity: after the subjet blocks the change reaches the jet's other subjets, and only that jet
    real = sub.mask[jet].clone()
    real[k] = False
    assert (tokens_after[jet, real] - tokens_before[jet, real]).abs().amax(-1).min() > 1e-4
    torch.testing.assert_close(tokens_after[torch.arange(len(jets)) != jet],
                               tokens_before[torch.arange(len(jets)) != jet])


@pytest.mark.parametrize(("aggregation", "width"),
                         [("class_attention", D), ("sum", D), ("flatten", S_MAX * D)])
def test_aggregation_shapes(aggregation: str, width: int, jets: ParticleBatch) -> None:
    model = _sjt(aggregation=aggregation)
    assert model.pooled_dim == width
    with torch.no_grad():
        out = model(jets)
        sub = model.find_subjets(jets)
        tokens, mask, pooled = model.encode_subjets(jets, sub.index, sub.max_subjets, sub.coordinates())
    assert out.pooled is not None
    assert out.pooled.shape == (len(jets), width)
    assert tokens.shape == (len(jets), sub.max_subjets, D)
    assert torch.equal(mask, sub.mask)
    torch.testing.assert_close(pooled, out.pooled)
    assert (tokens[~mask] == 0).all()
    if aggregation == "sum":
        torch.testing.assert_close(pooled, tokens.sum(1))


def test_flatten_puts_subjet_s_in_block_s_and_zeros_for_padded_subjets(jets: ParticleBatch) -> None:
    model = _sjt(aggregation="flatten")
    sub = model.find_subjets(jets)
    s = sub.max_subjets
    assert s < S_MAX  # the batch needs fewer than max_subjets slots: flatten still pads to max_subjets
    with torch.no_grad():
        tokens, mask, pooled = model.encode_subjets(jets, sub.index, s, sub.coordinates())
    blocks = pooled.view(len(jets), S_MAX, D)
    torch.testing.assert_close(blocks[:, :s], tokens)
    padded = torch.cat((~mask, mask.new_ones(len(jets), S_MAX - s)), dim=1)  # (B, S_MAX)
    assert padded.any()
    assert (blocks[padded] == 0).all()
    assert (blocks[~padded].abs().sum(-1) > 0).all()


def test_particles_carry_their_subjets_token(jets: ParticleBatch) -> None:
    model = _sjt(max_subjets=2)  # softer subjets' particles are dropped
    sub = model.find_subjets(jets)
    assert (jets.mask & (sub.index < 0)).any()
    with torch.no_grad():
        out = model(jets)
        tokens, _, _ = model.encode_subjets(jets, sub.index, sub.max_subjets, sub.coordinates())
    for s in range(sub.max_subjets):
        b, n = (sub.index == s).nonzero(as_tuple=True)
        torch.testing.assert_close(out.tokens[b, n], tokens[b, s])
    assert (out.tokens[sub.index < 0] == 0).all()  # padding and particles of dropped subjets


@pytest.mark.parametrize("aggregation", ["class_attention", "flatten", "sum"])
def test_jets_are_encoded_independently_of_their_batch(aggregation: str, jets: ParticleBatch) -> None:
    model = _sjt(aggregation=aggregation)
    # one more jet with no particles, so no subjets
    batch = ParticleBatch(torch.cat((jets.x, torch.zeros_like(jets.x[:1]))),
                          torch.cat((jets.mask, torch.zeros_like(jets.mask[:1]))),
                          torch.cat((jets.p4, torch.zeros_like(jets.p4[:1]))))
    with torch.no_grad():
        together = model(batch)
        alone = [model(ParticleBatch(jets.x[i:i + 1], jets.mask[i:i + 1], jets.p4[i:i + 1]))
                 for i in range(3)]
    assert together.pooled is not None
    assert torch.isfinite(together.pooled).all()
    assert torch.isfinite(together.tokens).all()
    for i, out in enumerate(alone):
        assert out.pooled is not None
        torch.testing.assert_close(out.pooled[0], together.pooled[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.tokens[0], together.tokens[i], atol=1e-5, rtol=1e-5)


def test_coordinates_from_the_index_match_the_clustering(jets: ParticleBatch) -> None:
    model = _sjt()
    sub = model.find_subjets(jets)
    with torch.no_grad():
        given = model.encode_subjets(jets, sub.index, sub.max_subjets, sub.coordinates())
        derived = model.encode_subjets(jets, sub.index, sub.max_subjets)
    for a, b in zip(given, derived, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_options_are_checked_and_layer_decay_sees_the_input_embeddings() -> None:
    with pytest.raises(HepfmInputError, match="aggregation must be one of"):
        create_backbone("sjt-small", F_IN, aggregation="mean")
    with pytest.raises(HepfmInputError, match="embedding must be one of"):
        create_backbone("sjt-small", F_IN, embedding="linear")
    with pytest.raises(HepfmInputError, match="multiple of num_heads"):
        create_backbone("sjt-small", F_IN, dim=30)
    model = _sjt()
    assert model.no_weight_decay() == {"cls_token", "sel.query"}
    assert model.no_weight_decay() <= dict(model.named_parameters()).keys()
    assert "cls_token" not in dict(_sjt(aggregation="sum").named_parameters())  # no unused parameters
    depths, top = model.parameter_depths()
    assert {depths[n] for n in depths if n.startswith(("particle_embed", "sel", "coord_embed"))} == {0}
    assert {depths[n] for n in depths if n.startswith("cls_")} == {top}
    assert create_backbone("sjt", F_IN).embed_dim == 256
