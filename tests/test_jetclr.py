"""The JetCLR objective: NT-Xent by hand, gradients, a few steps of learning, registry and presets."""

from __future__ import annotations

import math

import pytest
import torch

from hepfm.configs import load_preset
from hepfm.contracts import ParticleBatch
from hepfm.data.features import FEATURE_SETS
from hepfm.errors import HepfmInputError
from hepfm.losses import alignment, nt_xent, positive_similarity, uniformity
from hepfm.models import backbone_config, create_backbone
from hepfm.objectives.jetclr import JetCLR, JetCLROptions
from hepfm.objectives.registry import create_objective, objective_names
from hepfm.physics.torch_features import compute_features
from hepfm.training.config import TrainConfig


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (30x slower on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_batch(b: int = 16, n: int = 20, features: str = "kin", seed: int = 0) -> ParticleBatch:
    """Toy jets (4..n-4 massless particles around a random axis) with the loader's features."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(4, n - 4, (b,), generator=g)
    mask = torch.arange(n).unsqueeze(0) < counts.unsqueeze(1)
    frac = torch.sort(torch.rand(b, n, generator=g).pow(3) * mask, dim=1, descending=True).values
    pt = (400 + 400 * torch.rand(b, 1, generator=g)) * frac / frac.sum(1, keepdim=True)
    eta = 2 * torch.rand(b, 1, generator=g) - 1 + 0.2 * torch.randn(b, n, generator=g)
    phi = 2 * math.pi * torch.rand(b, 1, generator=g) + 0.2 * torch.randn(b, n, generator=g)
    px, py, pz = pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta)
    p4 = torch.stack([px, py, pz, torch.sqrt(px**2 + py**2 + pz**2)], -1) * mask.unsqueeze(-1)
    fs = FEATURE_SETS.get(features)
    if any(f.requires for f in fs.features):  # toy charge / PID columns for non-kinematic features
        src = (torch.randint(-1, 2, (b, n, fs.dim), generator=g).float()) * mask.unsqueeze(-1)
    else:
        src = None
    return ParticleBatch(x=compute_features(fs, p4, mask, source_x=src), mask=mask, p4=p4)


def small_jetclr(**options) -> JetCLR:
    """A tiny transformer-small (1 layer, D=32) so a few CPU steps take well under a second."""
    dims = {"num_layers": 1, "model_dim": 32, "ffn_dim": 64, "output_dim": 32}
    return create_objective("jetclr", lambda: create_backbone("transformer-small", 7, **dims),
                            FEATURE_SETS.get("kin"), options)


# -- losses by hand ------------------------------------------------------------------------------------


def test_nt_xent_against_hand_computation():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    tau = 0.5
    v = [(1.0, 0.0), (0.0, 1.0), (1 / math.sqrt(2), 1 / math.sqrt(2)), (-1.0, 0.0)]  # normalised 2B rows
    cos = [[a[0] * b[0] + a[1] * b[1] for b in v] for a in v]
    total = 0.0
    for i in range(4):
        pos = (i + 2) % 4
        denom = sum(math.exp(cos[i][k] / tau) for k in range(4) if k != i)
        total += -math.log(math.exp(cos[i][pos] / tau) / denom)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(total / 4, rel=1e-6)
    # alignment: mean ||a - b||^2 over the positive pairs; pos_sim: mean cosine
    align = ((1 - v[2][0]) ** 2 + v[2][1] ** 2 + (0 + 1) ** 2 + 1.0) / 2
    assert alignment(z1, z2).item() == pytest.approx(align, rel=1e-6)
    assert positive_similarity(z1, z2).item() == pytest.approx((cos[0][2] + cos[1][3]) / 2, rel=1e-6)
    # uniformity of view 2 (two points at distance^2 = 2 - 2 cos): log exp(-2 d^2)
    d2 = 2 - 2 * cos[2][3]
    assert uniformity(z2).item() == pytest.approx(-2 * d2, rel=1e-6)


def test_nt_xent_limits():
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    perfect = nt_xent(z, z, 0.05)  # identical views of well-separated jets: small loss
    random = nt_xent(z, torch.randn(8, 16), 0.05)
    assert perfect < random
    with pytest.raises(ValueError, match="two \\(B, D\\) tensors of one shape"):
        nt_xent(z, z[:4])


# -- the objective -------------------------------------------------------------------------------------


def test_loss_finite_logs_and_gradients_reach_backbone():
    torch.manual_seed(0)
    obj = small_jetclr()
    out = obj(make_batch())
    assert out.loss.ndim == 0
    assert torch.isfinite(out.loss)
    assert out.loss.item() == pytest.approx(math.log(31), abs=0.6)  # ~ log(2B - 1) at init
    assert set(out.logs) == {"alignment", "uniformity", "pos_sim"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in out.logs.values())
    out.loss.backward()
    grads = [p.grad for p in obj.backbone.parameters() if p.requires_grad]
    assert grads
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is not None for p in obj.projection.parameters())


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(1)
    obj = small_jetclr()
    batch = make_batch(b=16, seed=1)
    opt = torch.optim.Adam(obj.parameters(), lr=3e-3)
    losses = []
    for _step in range(10):
        torch.manual_seed(100)  # the same views every step: the loss must fall
        out = obj(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses


def test_views_recompute_features_and_eval_is_deterministic():
    obj = small_jetclr()
    batch = make_batch(b=8)
    torch.manual_seed(2)
    both = obj.views(batch)
    assert both.x.shape[0] == 16
    assert both.x.shape[1] >= 20
    assert both.jet.shape == (16, 5)
    x_again = compute_features(obj.feature_set, both.p4, both.mask)
    torch.testing.assert_close(both.x, x_again)
    assert torch.equal(both.mask[:8], batch.mask)  # view 1: symmetries only, same particles
    assert torch.all(both.mask[8:].sum(1) > batch.mask.sum(1))  # view 2: collinear splits
    obj.eval()
    with torch.no_grad():
        assert obj(batch).loss.item() == obj(batch).loss.item()


def test_part_backbone_with_pid_features():
    fs = FEATURE_SETS.get("kinpid")
    obj = create_objective("jetclr", lambda: create_backbone("part-small", fs.dim), fs,
                           {"projection_dims": [16], "symmetric_views": True,
                            "augment": {"split_extra_slots": 4}})
    torch.manual_seed(3)
    out = obj(make_batch(b=6, features="kinpid"))
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_registry_build_and_export():
    assert "jetclr" in objective_names()
    kin = FEATURE_SETS.get("kin")
    obj = create_objective("jetclr", lambda: create_backbone("transformer-small", 7), kin, {})
    assert isinstance(obj, JetCLR)
    assert obj.options.temperature == 0.1
    bb = obj.export_backbone()
    assert bb is obj.backbone
    assert not any(name.startswith("projection") for name, _ in bb.named_parameters())
    assert len(obj.projection) == 4  # JetCLR's two head layers: ReLU, Linear, ReLU, Linear
    with pytest.raises(
        HepfmInputError,
        match=r"unknown option objective\.options\.temprature; did you mean objective\.options\.temperature",
    ):
        small_jetclr(temprature=0.2)
    with pytest.raises(HepfmInputError, match="features"):
        create_objective("jetclr", lambda: create_backbone("transformer-small", 6), kin, {})


def test_the_representation_after_the_head_layers_is_exported_with_them():
    """Seed 000's code reads its linear classifier after the two head layers: with the head layers in the
    backbone and no projection, the contrastive loss and the finetuning head read the same output."""
    dims = {"num_layers": 1, "model_dim": 32, "ffn_dim": 64, "output_dim": 16, "num_head_layers": 2}
    obj = create_objective("jetclr", lambda: create_backbone("transformer-small", 7, **dims),
                           FEATURE_SETS.get("kin"), {"projection_dims": []})
    assert len(obj.projection) == 0  # identity
    bb = obj.export_backbone()
    assert bb.pooled_dim == 16
    assert sum(isinstance(m, torch.nn.Linear) for m in bb.head) == 2
    batch = make_batch()
    assert bb(batch).pooled.shape == (16, 16)
    loss = obj(batch).loss
    loss.backward()
    assert bb.head[-1].weight.grad is not None  # the head layers are trained by the contrastive loss


@pytest.mark.parametrize("preset", ["jetclr-paper", "jetclr-cpu"])
def test_presets_are_consistent(preset):
    d = load_preset("pretrain", preset)
    assert set(d) == {"data", "model", "objective", "train"}
    assert d["objective"]["name"] == "jetclr"
    opts = JetCLROptions.from_dict(d["objective"].get("options", {}))
    backbone_config(d["model"]["backbone"], **d["model"].get("backbone_options", {}))
    cfg = TrainConfig.from_dict(d["train"])
    assert cfg.clip_grad > 0
    assert opts.temperature > 0
    if preset == "jetclr-paper":
        assert cfg.clip_grad == 0.1
        assert cfg.optim.eps == 1e-4
        assert cfg.amp == "fp16"
        assert cfg.optim.name == "adam"
        assert d["data"]["features"] == "jetclr"
        assert opts.projection_dims == (1024, 1024)
