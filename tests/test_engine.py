"""The training engine with a small objective: learning, exact resume, budgets, divergence, early stopping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _factories import random_chunk
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hepfm.contracts import ParticleBatch
from hepfm.data.formats import ArraySource
from hepfm.data.loader import JetLoader, make_loader
from hepfm.errors import HepfmInputError
from hepfm.objectives.base import Objective, ObjectiveOutput
from hepfm.training.config import TrainConfig, apply_overrides
from hepfm.training.engine import Trainer, TrainingDivergedError, step_budget


class Blobs(Dataset):
    """Two classes of 'jets' whose mean feature differs; learnable by a linear model on the mean."""

    def __init__(self, n: int = 512, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.label = torch.randint(0, 2, (n,), generator=g)
        self.x = torch.randn(n, 8, 3, generator=g) + self.label[:, None, None] * 0.8

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int):
        return i


def collate_from(ds: Blobs):
    def collate(idx: list[int]) -> ParticleBatch:
        idx = torch.tensor(idx)
        x = ds.x[idx]
        return ParticleBatch(x=x, mask=torch.ones(x.shape[:2], dtype=torch.bool),
                             p4=torch.zeros(*x.shape[:2], 4), label=ds.label[idx])
    return collate


class MeanLinear(Objective):
    name = "test-mean-linear"

    def __init__(self, scale: float = 1.0, in_dim: int = 3) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
        self.scale = scale

    def forward(self, batch: ParticleBatch) -> ObjectiveOutput:
        mean = batch.x.sum(1) / batch.mask.sum(1, keepdim=True).clamp(min=1)
        logits = self.fc(mean) * self.scale
        loss = nn.functional.cross_entropy(logits, batch.label)
        return ObjectiveOutput(loss, {"acc": (logits.argmax(1) == batch.label).float().mean()}, logits)


def loader(ds: Blobs, seed: int = 0, bs: int = 32) -> DataLoader:
    """A plain torch DataLoader (the engine also takes loaders that are not hepfm's)."""
    return DataLoader(ds, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(seed),
                      collate_fn=collate_from(ds))


def jet_loader(n: int = 200, *, streaming: bool = False, bs: int = 32, seed: int = 0) -> JetLoader:
    """The production loader over random in-memory jets (kin features, 7 per particle)."""
    src = ArraySource(random_chunk(n, 16, seed=seed, mean_particles=10))
    return make_loader(src, "kin", bs, streaming=streaming, shuffle=True, seed=seed, rank=0, world_size=1,
                       chunk_size=64, buffer_size=128)


def cfg(**kw) -> TrainConfig:
    base = {"max_steps": 40, "eval_every": 10, "ckpt_every": 5, "log_every": 5, "seed": 3,
            "optim": {"lr": 3e-2}}
    base.update(kw)
    return TrainConfig.from_dict(base)


def acc_fn(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float((logits.argmax(1) == labels).mean())}


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0)


def test_learns_and_logs(tmp_path):
    ds, val = Blobs(512, 0), Blobs(256, 1)
    res = Trainer(MeanLinear(), cfg(), tmp_path, {"backbone": "x"}, acc_fn).fit(
        loader(ds), loader(val), progress=False
    )
    assert res.steps == 40
    assert res.best_step is not None
    assert res.stop_reason == "max_steps"
    assert res.budget_steps == 40
    assert not res.stopped_early
    assert res.jets == 40 * 32
    assert res.jets_per_second == pytest.approx(res.jets / res.seconds)
    assert res.epochs == pytest.approx(40 / 16)  # 512 jets in batches of 32
    assert res.device.startswith("cpu (")
    assert "threads" in res.device
    rows_ = rows(tmp_path)
    val_rows = [r for r in rows_ if "val_accuracy" in r]
    assert val_rows[-1]["val_accuracy"] > 0.85
    train_rows = [r for r in rows_ if "train_loss" in r]
    assert train_rows[-1]["train_loss"] < train_rows[0]["train_loss"]
    assert all(r["jets_per_s"] > 0 for r in train_rows)
    assert (tmp_path / "best.safetensors").exists()
    assert (tmp_path / "best.json").exists()
    assert (tmp_path / "metrics.csv").read_text().startswith("step,key,value")


class Interrupt(Exception):
    pass


class Dying(MeanLinear):
    """Dies (as a killed process would) on its ``after``-th training forward pass."""

    def __init__(self, after: int) -> None:
        super().__init__(in_dim=7)
        self.after, self.calls = after, 0

    def forward(self, batch: ParticleBatch) -> ObjectiveOutput:
        if self.training:
            self.calls += 1
            if self.calls == self.after:
                raise Interrupt
        return super().forward(batch)


@pytest.mark.parametrize(("optim", "streaming", "budget"), [
    ("adamw", False, {"max_steps": 20}),
    ("ranger", True, {"max_steps": None, "max_epochs": 6}),  # 6 x 7 batches // grad_accum 2 = 21 steps
    ("sgd", False, {"max_steps": 20}),  # seed 003's optimizer: its momentum buffers resume too
])
def test_exact_resume_after_interruption(tmp_path, optim, streaming, budget):
    """Through the production loader (200 jets, batch 32: 7 batches, the last one short, so steps straddle
    epochs): a run killed mid-step and resumed from its checkpoint ends with bitwise the same weights."""
    c = cfg(optim={"name": optim}, grad_accum=2, **budget)
    torch.manual_seed(0)
    ref = MeanLinear(in_dim=7)
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    res = Trainer(ref, c, tmp_path / "ref", {"backbone": "x"}).fit(
        jet_loader(streaming=streaming), progress=False
    )
    assert res.steps == res.budget_steps == (20 if "max_epochs" not in budget else 21)
    assert res.stop_reason == ("max_epochs" if "max_epochs" in budget else "max_steps")

    first = Dying(after=26)  # dies in step 13 (micro-batches 25 and 26): the last checkpoint is step 10
    first.load_state_dict(init)
    with pytest.raises(Interrupt):
        Trainer(first, c, tmp_path / "run", {"backbone": "x"}).fit(
            jet_loader(streaming=streaming), progress=False
        )
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["step"] == 10
    second = MeanLinear(in_dim=7)  # fresh process: weights come from the checkpoint
    res2 = Trainer(second, c, tmp_path / "run", {"backbone": "x"}).fit(jet_loader(streaming=streaming),
                                                                      progress=False)
    short = sum(m % 7 == 6 for m in range(20, 2 * res.steps))  # micro-batches from step 10 on that are 8 jets
    assert res2.steps == res.steps
    assert res2.jets == (res.steps - 10) * 2 * 32 - 24 * short
    assert_same_weights(ref, second)
    steps = [r["step"] for r in rows(tmp_path / "run")]
    assert steps == sorted(steps)
    assert len(steps) == len(set(steps))


def test_epoch_budget_sets_the_length_and_the_schedule(tmp_path):
    """max_epochs gives epochs x batches per epoch steps (fewer than max_steps here), and the cosine
    schedule ends there: the last logged learning rate is near its floor, not mid-way down max_steps'."""
    c = cfg(max_steps=1000, max_epochs=3, log_every=1, schedule={"name": "cosine", "min_lr_ratio": 0.01})
    dl = jet_loader(96, bs=32)  # 3 batches per epoch
    assert step_budget(c, dl) == (9, "max_epochs", 3)
    assert step_budget(cfg(max_steps=5, max_epochs=3), dl) == (5, "max_steps", 3)
    assert step_budget(cfg(max_steps=9, max_epochs=3), dl) == (9, "max_steps", 3)  # a tie: max_steps
    assert step_budget(cfg(max_epochs=3, grad_accum=2), dl)[:2] == (4, "max_epochs")  # optimizer steps
    res = Trainer(MeanLinear(in_dim=7), c, tmp_path, {"backbone": "x"}).fit(dl, progress=False)
    assert (res.steps, res.stop_reason, res.budget_steps, res.epochs) == (9, "max_epochs", 9, 3.0)
    lrs = [r["lr"] for r in rows(tmp_path) if "lr" in r]
    assert lrs[0] == pytest.approx(3e-2)
    assert lrs[-1] < 0.05 * 3e-2


def test_epoch_budget_needs_a_loader_with_a_length(tmp_path):
    class NoLen:
        def __iter__(self):
            return iter(loader(Blobs(64)))

    with pytest.raises(HepfmInputError, match="max_epochs needs a training loader with a length"):
        Trainer(MeanLinear(), cfg(max_epochs=2), tmp_path, {"backbone": "x"}).fit(NoLen(), progress=False)


def test_budget_options_are_checked_on_entry():
    with pytest.raises(HepfmInputError, match=r"max_steps may be null only with train\.max_epochs"):
        cfg(max_steps=None)
    with pytest.raises(HepfmInputError, match="max_epochs must be >= 1"):
        cfg(max_epochs=0)
    with pytest.raises(HepfmInputError, match="max_minutes must be > 0"):
        cfg(max_minutes=0)
    assert cfg(max_steps=None, max_epochs=2).max_steps is None
    c = TrainConfig.from_dict(apply_overrides({}, ["max_steps=null", "max_epochs=4", "max_minutes=1.5"]))
    assert (c.max_steps, c.max_epochs, c.max_minutes) == (None, 4, 1.5)


def test_time_limit_stops_cleanly_and_a_rerun_resumes_exactly(tmp_path):
    """The wall-clock guard ends a run with a checkpoint and says so; running it again continues to the
    same weights as a run that was never stopped."""
    c = cfg(max_steps=12)
    torch.manual_seed(0)
    ref = MeanLinear(in_dim=7)
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    Trainer(ref, c, tmp_path / "ref", {"backbone": "x"}).fit(jet_loader(), progress=False)

    first = MeanLinear(in_dim=7)
    first.load_state_dict(init)
    short = cfg(max_steps=12, max_minutes=1e-9)  # past the limit after the first step
    res = Trainer(first, short, tmp_path / "run", {"backbone": "x"}).fit(jet_loader(), progress=False)
    assert (res.steps, res.stop_reason, res.stopped_early) == (1, "time_limit", False)
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["step"] == 1
    assert [r["step"] for r in rows(tmp_path / "run") if "train_loss" in r] == [
        1
    ]  # its last interval is logged
    second = MeanLinear(in_dim=7)
    res = Trainer(second, c, tmp_path / "run", {"backbone": "x"}).fit(jet_loader(), progress=False)
    assert (res.steps, res.stop_reason) == (12, "max_steps")
    assert_same_weights(ref, second)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    ds = Blobs(256, 0)
    obj = MeanLinear(scale=1.0)
    c = cfg(max_steps=30, ckpt_every=5, log_every=5, optim={"lr": 1e-2}, clip_grad=0)
    trainer = Trainer(obj, c, tmp_path, {"backbone": "x"})

    class Poisoned:
        sampler, batch_size, dataset = None, 32, None

        def __iter__(self):
            for i, b in enumerate(loader(ds)):
                if i == 7:
                    b.x[0, 0, 0] = float("nan")
                yield b

    with pytest.raises(TrainingDivergedError, match="NaN"):
        trainer.fit(Poisoned(), progress=False)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_early_stopping(tmp_path):
    ds, val = Blobs(256, 0), Blobs(128, 1)
    c = cfg(
        max_steps=400, eval_every=2, early_stop_patience=2, optim={"lr": 1e-30}
    )  # below float32 resolution: never improves
    res = Trainer(MeanLinear(), c, tmp_path, {"backbone": "x"}).fit(loader(ds), loader(val), progress=False)
    assert res.stopped_early
    assert res.steps == 6
    assert res.stop_reason == "early_stopping"
    # the run is finished: running it again trains no further and gives the same reason
    again = Trainer(MeanLinear(), c, tmp_path, {"backbone": "x"}).fit(loader(ds), loader(val), progress=False)
    assert (again.steps, again.stop_reason, again.jets) == (6, "early_stopping", 0)


def test_overrides_and_unknown_keys():
    d = apply_overrides({"optim": {"lr": 1}}, ["optim.lr=0.5", "max_steps=7", "schedule.name=constant"])
    c = TrainConfig.from_dict(d)
    assert c.optim.lr == 0.5
    assert c.max_steps == 7
    assert c.schedule.name == "constant"
    with pytest.raises(HepfmInputError, match="bogus"):
        TrainConfig.from_dict({"bogus": 1})


class AlwaysCollapsed(MeanLinear):
    def collapsed(self, logs):
        return f"accuracy log {logs['acc']:.2f} (test)" if "acc" in logs else None


def test_collapse_detection_stops_with_clear_error(tmp_path):
    ds = Blobs(256, 0)
    c = cfg(max_steps=50, log_every=5, ckpt_every=5, collapse_patience=3)
    with pytest.raises(TrainingDivergedError, match="representation collapse at step 15"):
        Trainer(AlwaysCollapsed(), c, tmp_path, {"backbone": "x"}).fit(loader(ds), progress=False)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 10  # the step-15 checkpoint is not written


def test_denormals_are_flushed_only_during_a_cpu_fit():
    from hepfm.training.engine import denormals_flushed

    tiny = float("5e-324")
    assert tiny * 1.0 > 0  # the process default: denormals kept
    with denormals_flushed(True):
        flushed = tiny * 1.0 == 0
    assert flushed
    assert tiny * 1.0 > 0
