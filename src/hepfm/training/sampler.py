"""A seeded, rank-sharded, resumable sampler for map-style datasets.

Each epoch draws a permutation from (seed, epoch); rank r takes every world-th index, so ranks never
share a jet. ``start_at(k)`` skips the first k samples of the current epoch without loading them,
which is how the engine resumes exactly where an interrupted run stopped.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, n: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world = rank, world_size
        # equal share per rank so that DDP ranks run the same number of steps
        self.per_rank = n // world_size if drop_last else -(-n // world_size)
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._skip = 0

    def start_at(self, k: int) -> None:
        self._skip = k

    def __len__(self) -> int:
        return self.per_rank - self._skip

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if len(order) < self.per_rank * self.world:  # pad by wrapping (drop_last=False)
            order = torch.cat([order, order[: self.per_rank * self.world - len(order)]])
        mine = order[self.rank : self.per_rank * self.world : self.world]
        skip, self._skip = self._skip, 0
        return iter(mine[skip:].tolist())
