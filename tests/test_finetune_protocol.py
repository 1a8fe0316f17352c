"""The finetuning protocol: per-objective backbone multipliers, layer-wise decay, probe-then-finetune."""

from __future__ import annotations

import pytest
import torch

from hepfm.configs.sections import FinetuneConfig
from hepfm.errors import HepfmInputError
from hepfm.heads import create_head_for
from hepfm.models import BACKBONES, create_backbone
from hepfm.nn.testing import random_jets
from hepfm.objectives.supervised import Supervised
from hepfm.options import from_dict
from hepfm.training.config import OptimConfig
from hepfm.training.optim import param_groups

F_IN = 7
SMALL = sorted(name for name in BACKBONES if name.endswith("-small"))


def test_backbone_multiplier_per_pretraining_objective():
    ft = from_dict(FinetuneConfig, {"backbone_lr_scale": {"supervised": 0.1, "default": 0.5}}, "finetune")
    assert ft.lr_scale_for("supervised") == 0.1
    assert ft.lr_scale_for("jetclr") == 0.5  # not listed: the default
    assert ft.lr_scale_for(None) == 0.5  # a backbone that does not say how it was pretrained
    only_mpm = from_dict(FinetuneConfig, {"backbone_lr_scale": {"mpm": 2.0}}, "finetune")
    assert only_mpm.lr_scale_for("jepa") == 1.0
    assert from_dict(FinetuneConfig, {"backbone_lr_scale": 0.3}, "finetune").lr_scale_for("mpm") == 0.3


@pytest.mark.parametrize(("value", "message"), [
    ({"backbone_lr_scale": {"mpm": -1}}, "finetune.backbone_lr_scale.mpm must be a number >= 0"),
    ({"backbone_lr_scale": {"mpm": "fast"}}, "finetune.backbone_lr_scale.mpm must be a number >= 0"),
    ({"backbone_lr_scale": -0.5}, "finetune.backbone_lr_scale must be a number >= 0"),
    ({"layer_decay": 0}, "finetune.layer_decay must be in (0, 1]"),
    ({"layer_decay": 1.5}, "finetune.layer_decay must be in (0, 1]"),
    ({"probe_steps": -1}, "finetune.probe_steps must be >= 0"),
])
def test_bad_protocol_values_are_refused(value, message):
    with pytest.raises(HepfmInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(FinetuneConfig, value, "finetune")


def test_an_unknown_objective_in_the_multipliers_is_named():
    from hepfm.workflows.finetune import resolve

    with pytest.raises(HepfmInputError, match=r"did you mean finetune\.backbone_lr_scale\.jetclr"):
        resolve("cpu-small", {"finetune": {"backbone_lr_scale": {"jetclrr": 0.1}}})


@pytest.mark.parametrize("name", SMALL)
def test_every_backbone_orders_its_parameters_by_depth(name):
    """Every parameter has a depth in [0, top]; a stack's entries count up from 1; and what the forward
    pass reads first (the input embedding) is never deeper than what it reads last."""
    bb = create_backbone(name, F_IN)
    depths, top = bb.parameter_depths()
    assert set(depths) == {n for n, _ in bb.named_parameters()}
    assert all(0 <= d <= top for d in depths.values())
    stack = [n for n in depths if n.split(".")[0] in ("blocks", "edge_convs", "layers")]
    if stack:
        assert sorted({depths[n] for n in stack}) == list(range(1, top))
        assert min(depths.values()) == 0 or name.startswith("pfn")


def test_layer_decay_gives_each_layer_its_rate():
    torch.manual_seed(0)
    bb = create_backbone("part-small", F_IN)
    obj = Supervised(bb, create_head_for("linear", bb, 2), backbone_lr_scale=0.5, layer_decay=0.5)
    scales = obj.param_groups_lr_scale()
    n_layers = len(bb.blocks)
    assert scales["backbone.blocks.0.fc1.weight"] == pytest.approx(0.5 * 0.5 ** n_layers)
    assert scales[f"backbone.blocks.{n_layers - 1}.fc1.weight"] == pytest.approx(0.5 * 0.5)
    assert scales["backbone.embed.linears.0.weight"] == pytest.approx(0.5 * 0.5 ** (n_layers + 1))
    assert scales["backbone.cls_token"] == pytest.approx(0.5)
    groups = param_groups(obj, OptimConfig(lr=1.0), set(), scales)
    by_param = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert by_param[id(obj.head.fc.weight if hasattr(obj.head, "fc") else next(obj.head.parameters()))] == 1.0
    assert by_param[id(bb.blocks[0].fc1.weight)] == pytest.approx(0.5 ** (n_layers + 1))
    # without decay the backbone is one multiplier
    plain = Supervised(bb, create_head_for("linear", bb, 2), backbone_lr_scale=0.5)
    assert plain.param_groups_lr_scale() == {"backbone.": 0.5}


def test_probe_steps_train_the_head_alone_then_the_backbone():
    torch.manual_seed(0)
    bb = create_backbone("transformer-small", F_IN, dropout=0.5)
    obj = Supervised(bb, create_head_for("linear", bb, 2), probe_steps=2).train()
    batch = random_jets(8, 12, F_IN, min_particles=2, generator=torch.Generator().manual_seed(0))
    batch.label = torch.tensor([0, 1] * 4)

    obj.on_step_start(0, 10)
    assert not bb.training  # the probed backbone is a fixed feature extractor: no dropout
    obj(batch).loss.backward()
    assert all(p.grad is None for p in bb.parameters())
    assert all(p.grad is not None for p in obj.head.parameters())
    obj.eval()
    obj.train()  # validation in between keeps the phase
    assert not bb.training

    obj.zero_grad(set_to_none=True)
    obj.on_step_start(2, 10)
    assert bb.training
    obj(batch).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.parameters())
