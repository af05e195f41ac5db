"""Batches of in-memory tensors by slicing a seeded permutation: the fast path for tables that fit in memory."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from retort.plugins import PluginError


class TensorLoader:
    """Batches of in-memory tensors, one index per batch: ``for xb, yb in TensorLoader(x, y, 64)``.

    Each iteration is an epoch: with ``shuffle`` the order is a permutation drawn from a generator
    seeded with ``seed + epoch`` (as ``DistributedSampler`` does), and the epoch counter advances
    after each pass; ``set_epoch`` sets it. With ``world_size > 1`` the permutation is padded with
    its own head to a multiple of ``world_size`` and rank ``r`` takes every ``world_size``-th
    index from ``r``, so every rank sees the same number of batches.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        if batch_size < 1:
            raise PluginError(f"batch_size must be at least 1, got {batch_size}", field="batch_size")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next iteration serves ``epoch``'s order from ``start_batch`` on (a resumed epoch skips what ran)."""
        self.epoch = epoch
        self._start = start_batch

    @property
    def n_rows(self) -> int:
        """Rows this rank sees per epoch (padding included)."""
        return math.ceil(len(self.x) / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.n_rows // self.batch_size
        return math.ceil(self.n_rows / self.batch_size)

    def _order(self) -> torch.Tensor | None:
        """This rank's indices for the current epoch, or None for plain slicing."""
        n = len(self.x)
        if not self.shuffle and self.world_size == 1:
            return None
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            pad = self.n_rows * self.world_size - n
            if pad:
                order = torch.cat([order, order.repeat(math.ceil(pad / n))[:pad]])
            order = order[self.rank::self.world_size]
        return order.to(self.x.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        self.epoch += 1
        start, self._start = self._start, 0
        size = self.batch_size
        for b in range(start, len(self)):
            if order is None:
                yield self.x[b * size:(b + 1) * size], self.y[b * size:(b + 1) * size]
            else:
                idx = order[b * size:(b + 1) * size]
                yield self.x[idx], self.y[idx]
