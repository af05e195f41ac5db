"""Serving torch ``Dataset``s through torch's ``DataLoader``: seeded order per epoch, one shard per rank, and a
resumed epoch that continues with exactly the batches an uninterrupted run would have seen.

The order of an epoch is :class:`EpochSampler`'s (``DistributedSampler``'s rule: a permutation seeded with
``seed + epoch``, padded to a multiple of the world size, every ``world_size``-th index from the rank), so it
depends on the seed, the epoch and the rank only, never on the number of workers. ``skip(n)`` drops the first
``n`` samples of the next epoch (a run resumed mid-epoch). Augmentation is seeded per sample (see
``datasets``); an iterable data set is sharded over ranks and workers by :class:`Shard`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from retort.plugins.data.datasets import Batch, is_iterable, length


def collate(samples: Any) -> Any:
    return samples if isinstance(samples, Batch) else default_collate(samples)


def _mix(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 2_654_435_761 + index) % (2**63 - 1)


class EpochSampler(DistributedSampler):
    """Yields ``(epoch, index)`` keys in ``DistributedSampler``'s order for ``seed + epoch``; ``skip`` resumes."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)  # type: ignore
        self._skip = 0

    def skip(self, samples: int) -> None:
        """The next iteration starts ``samples`` into the epoch's order."""
        self._skip = samples

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        start, self._skip = self._skip, 0
        epoch = self.epoch
        return iter([(epoch, i) for i in list(super().__iter__())[start:]])


class Seeded(Dataset):
    """A map-style data set read by ``(epoch, index)`` keys. With ``augment`` (training), a ``sample(index,
    generator)`` method gets a generator seeded from the recipe's seed, the epoch and the index; evaluation
    reads ``dataset[index]``."""

    def __init__(self, dataset: Dataset, seed: int, augment: bool = True):
        self.dataset, self.seed = dataset, seed
        self._sample = getattr(dataset, "sample", None) if augment else None
        self._generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if self._sample is None:
            return self.dataset[index]
        if self._generator is None:  # made lazily: a worker process builds its own
            self._generator = torch.Generator()
        return self._sample(index, self._generator.manual_seed(_mix(self.seed, epoch, index)))


class SeededBatches(Seeded):
    """:class:`Seeded` for a data set that reads a whole batch at once (``__getitems__`` returning a Batch)."""

    def __getitems__(self, keys: list[tuple[int, int]]) -> Any:
        return self.dataset.__getitems__([i for _, i in keys])  # type: ignore[attr-defined]


class Shard(IterableDataset):
    """Every ``world_size``-th sample of an iterable data set from the rank's offset, dealt out to the workers;
    ``set_epoch`` reaches a data set that has it, ``skip`` drops the first samples of a resumed epoch."""

    def __init__(self, dataset: IterableDataset, rank: int, world_size: int):
        self.dataset, self.rank, self.world_size = dataset, rank, world_size
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def skip(self, samples: int) -> None:
        self._skip = samples

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.world_size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        workers, wid = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        # the rank's share does not depend on the workers: every world_size-th sample; then worker by worker
        mine = (s for k, s in enumerate(self.dataset) if k % self.world_size == self.rank)
        skip = self._skip // workers + (1 if wid < self._skip % workers else 0)
        for j, sample in enumerate(mine):
            if j % workers == wid:
                if skip:
                    skip -= 1
                    continue
                yield sample


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, rank: int = 0,
                world_size: int = 1, drop_last: bool = False, num_workers: int = 0, pin_memory: bool = False,
                persistent_workers: bool = False, prefetch_factor: int | None = None,
                augment: bool = True) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` in retort's seeded, sharded, resumable order.

    Its ``sampler`` (map-style) or ``dataset`` (iterable) has ``set_epoch(epoch)`` and ``skip(samples)``.
    """
    # its own generator: a DataLoader draws its workers' base seed from the global RNG at every iteration
    # otherwise, which shifts dropout's random numbers between a resumed run and an uninterrupted one
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory, "collate_fn": collate,
                               "drop_last": drop_last, "batch_size": batch_size,
                               "generator": torch.Generator().manual_seed(seed)}
    if num_workers > 0:
        options.update(persistent_workers=persistent_workers, prefetch_factor=prefetch_factor)
    if is_iterable(dataset):
        return DataLoader(Shard(dataset, rank, world_size), **options)  # type: ignore[arg-type]
    wrapper = SeededBatches if getattr(dataset, "reads_batches", False) else Seeded
    sampler = EpochSampler(length(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
    return DataLoader(wrapper(dataset, seed, augment), sampler=sampler, **options)


def start_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """The loader's next iteration serves ``epoch`` from batch ``start_batch`` on."""
    target = loader.dataset if isinstance(loader.dataset, Shard) else loader.sampler
    target.set_epoch(epoch)  # type: ignore[union-attr]
    target.skip(start_batch * (loader.batch_size or 1))  # type: ignore[union-attr]
