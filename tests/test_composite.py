"""The composite objective: one shared backbone, a weighted sum of registered objectives."""

from __future__ import annotations

import pytest
import torch

from hepfm.data.features import FEATURE_SETS
from hepfm.errors import HepfmInputError
from hepfm.models import create_backbone
from hepfm.nn.testing import random_jets
from hepfm.objectives.registry import create_objective, objective_needs_labels

KIN = FEATURE_SETS.get("kin")


def build(parts, **kw):
    torch.manual_seed(0)
    return create_objective("composite", lambda: create_backbone("part-small", KIN.dim), KIN,
                            {"parts": parts, **kw}, max_particles=24)


def batch(labels: bool = False):
    b = random_jets(16, 24, KIN.dim, min_particles=4, generator=torch.Generator().manual_seed(1))
    if labels:
        b.label = torch.arange(16) % 2
    return b


def test_parts_share_one_backbone_and_the_loss_is_their_weighted_sum():
    obj = build([{"name": "jepa", "weight": 2.0}, {"name": "jetclr", "weight": 0.5}]).train()
    shared = obj.export_backbone()
    assert obj.parts["jetclr"].backbone is shared
    assert obj.parts["jepa"].backbone is shared
    # J-JEPA's EMA target is its own encoder, not the shared one
    assert all(p is not q for p in obj.parts["jepa"].target.parameters() for q in shared.parameters())
    out = obj(batch())
    parts = 2.0 * out.logs["jepa_loss"].item() + 0.5 * out.logs["jetclr_loss"].item()
    assert out.loss.item() == pytest.approx(parts, rel=1e-5)
    assert "jetclr_alignment" in out.logs
    before = [p.detach().clone() for p in shared.parameters()]
    out.loss.backward()
    opt = torch.optim.SGD(obj.parameters(), lr=0.1)
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, shared.parameters(), strict=True))
    obj.on_step_end(0, 10)  # delegated: J-JEPA's EMA update runs


def test_labels_are_needed_when_a_part_needs_them():
    assert objective_needs_labels("composite", {"parts": [{"name": "mpm"}, {"name": "supervised"}]})
    assert not objective_needs_labels("composite", {"parts": [{"name": "mpm"}, {"name": "jetclr"}]})
    obj = build([{"name": "jetclr"}, {"name": "supervised", "weight": 0.5}], num_classes=2).train()
    out = obj(batch(labels=True))
    assert out.logits is not None
    assert out.logits.shape == (16, 2)
    assert "supervised_accuracy" in out.logs


@pytest.mark.parametrize(("parts", "message"), [
    ([], "non-empty list"),
    ([{"name": "mpn"}], "unknown objective 'mpn'; did you mean mpm"),
    ([{"name": "mpm", "weight": -1.0}], "parts[0].weight must be > 0"),
    ([{"name": "mpm", "weight": 0}], "parts[0].weight must be > 0"),
    ([{"name": "composite"}], "unknown objective 'composite'"),
    ([{"name": "mpm"}, {"name": "mpm"}], "each objective once"),
    (["mpm"], "must be a mapping"),
    ([{"name": "mpm", "wieght": 1}], "did you mean objective.options.parts[0].weight"),
])
def test_bad_parts_are_one_line(parts, message):
    with pytest.raises(HepfmInputError) as err:
        build(parts)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
