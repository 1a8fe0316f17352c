"""The training engine with a small objective: learning, exact resume, divergence, early stopping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hepfm.contracts import ParticleBatch
from hepfm.objectives.base import Objective, ObjectiveOutput
from hepfm.training.config import TrainConfig, apply_overrides
from hepfm.training.engine import Trainer, TrainingDivergedError
from hepfm.training.sampler import ResumableSampler


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
        return ParticleBatch(x=x, mask=torch.ones(x.shape[:2], dtype=torch.bool), p4=torch.zeros(*x.shape[:2], 4),
                             label=ds.label[idx])
    return collate


class MeanLinear(Objective):
    name = "test-mean-linear"

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
        self.scale = scale

    def forward(self, batch: ParticleBatch) -> ObjectiveOutput:
        logits = self.fc(batch.x.mean(1)) * self.scale
        loss = nn.functional.cross_entropy(logits, batch.label)
        return ObjectiveOutput(loss, {"acc": (logits.argmax(1) == batch.label).float().mean()}, logits)


def loader(ds: Blobs, seed: int = 0, bs: int = 32) -> DataLoader:
    return DataLoader(ds, batch_size=bs, sampler=ResumableSampler(len(ds), seed=seed), collate_fn=collate_from(ds))


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=40, eval_every=10, ckpt_every=5, log_every=5, seed=3, optim={"lr": 3e-2})
    base.update(kw)
    return TrainConfig.from_dict(base)


def acc_fn(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float((logits.argmax(1) == labels).mean())}


def test_learns_and_logs(tmp_path):
    ds, val = Blobs(512, 0), Blobs(256, 1)
    res = Trainer(MeanLinear(), cfg(), tmp_path, {"backbone": "x"}, acc_fn).fit(loader(ds), loader(val), progress=False)
    assert res.steps == 40 and res.best_step is not None
    assert res.device.startswith("cpu (") and "threads" in res.device  # timings say what they ran on
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val_rows = [r for r in rows if "val_accuracy" in r]
    assert val_rows[-1]["val_accuracy"] > 0.85
    train_rows = [r for r in rows if "train_loss" in r]
    assert train_rows[-1]["train_loss"] < train_rows[0]["train_loss"]
    assert all(r["jets_per_s"] > 0 for r in train_rows)
    assert (tmp_path / "best.safetensors").exists() and (tmp_path / "best.json").exists()
    assert (tmp_path / "metrics.csv").read_text().startswith("step,key,value")


class Interrupt(Exception):
    pass


def interrupting(dl: DataLoader, after: int):
    class Wrapped:
        def __init__(self) -> None:
            self.sampler, self.batch_size, self.dataset, self.seen = dl.sampler, dl.batch_size, dl.dataset, 0

        def __iter__(self):
            for b in dl:
                self.seen += 1
                if self.seen > after:
                    raise Interrupt
                yield b
    return Wrapped()


@pytest.mark.parametrize("optim", ["adamw", "ranger"])
def test_exact_resume_after_interruption(tmp_path, optim):
    ds = Blobs(200, 0)  # 6 batches per epoch: the run crosses epochs
    c = cfg(max_steps=20, optim={"name": optim}, grad_accum=2)
    torch.manual_seed(0)
    ref = MeanLinear()
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    Trainer(ref, c, tmp_path / "ref", {"backbone": "x"}).fit(loader(ds), progress=False)

    first = MeanLinear()
    first.load_state_dict(init)
    with pytest.raises(Interrupt):  # dies during step 13 (26 micro-batches): last checkpoint is step 10
        Trainer(first, c, tmp_path / "run", {"backbone": "x"}).fit(interrupting(loader(ds), 25), progress=False)
    second = MeanLinear()  # fresh process: weights come from the checkpoint
    t = Trainer(second, c, tmp_path / "run", {"backbone": "x"})
    t.fit(loader(ds), progress=False)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(second.state_dict()[k], v, rtol=0, atol=0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


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
    c = cfg(max_steps=400, eval_every=2, early_stop_patience=2, optim={"lr": 1e-30})  # below float32 resolution: never improves
    res = Trainer(MeanLinear(), c, tmp_path, {"backbone": "x"}).fit(loader(ds), loader(val), progress=False)
    assert res.stopped_early and res.steps == 6


def test_sampler_shards_without_overlap():
    seen = []
    for rank in range(2):
        s = ResumableSampler(10, seed=1, rank=rank, world_size=2)
        s.set_epoch(3)
        seen += list(s)
    assert sorted(seen) == list(range(10))
    s = ResumableSampler(10, seed=1)
    s.set_epoch(0)
    full = list(s)
    s.start_at(4)
    assert list(s) == full[4:]


def test_overrides_and_unknown_keys():
    d = apply_overrides({"optim": {"lr": 1}}, ["optim.lr=0.5", "max_steps=7", "schedule.name=constant"])
    c = TrainConfig.from_dict(d)
    assert c.optim.lr == 0.5 and c.max_steps == 7 and c.schedule.name == "constant"
    from hepfm.errors import HepfmInputError

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
