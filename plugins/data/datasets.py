"""Data sets that are not tables: torch ``Dataset``s, split by seeded index and described for models and metrics.

A data plugin may return a :class:`DataSets` (a train ``Dataset`` and, optionally, validation and test ones,
with the task and the number of outputs) or a bare torch ``Dataset`` (map-style or iterable; its task is read
from a ``classes`` attribute, else from its first sample). What the plugin does not provide, retort takes
from the training set by seeded index: ``ceil(test_fraction * N)`` samples for the test split, then
``ceil(val_fraction * N)`` for validation, with scikit-learn's ``train_test_split`` as for tables (stratified
when the plugin gives ``targets``)::

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from retort.plugins.data import DataSets, split_datasets
    >>> ds = TensorDataset(torch.randn(100, 3), torch.arange(100) % 2)
    >>> s = split_datasets(DataSets(ds, task="binary"), val_fraction=0.2, test_fraction=0.1, seed=0)
    >>> s.info.n_train, s.info.n_val, s.info.n_test
    (70, 20, 10)

A sample is ``(x, y)``: ``x`` a tensor (features (F,), an image (C, H, W), a sequence of token ids (T,)),
``y`` a class index, a target vector, or a sequence of class indices (T,) for sequence models.
A data set whose ``__getitems__(indices)`` reads a whole batch at once sets ``reads_batches = True`` and returns
a :class:`Batch`. A data set that defines ``sample(index, generator)`` gets a ``torch.Generator`` seeded from
the recipe's seed, the epoch and the index: augmentations drawn from it are the same under any number of
workers and on resume.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from retort.plugins import PluginError
from retort.plugins.data.tables import TASKS, DataInfo


@dataclass
class DataSets:
    """What a data plugin returns when its data is not a table.

    ``n_outputs``: classes for multiclass (default: ``len(class_names)``), 1 for binary, targets for
    regression (default: the first sample's target size). ``targets``: the training set's class per sample,
    when cheap to give (a stratified split). ``digest``: of the data's content (default: of a sample of it).
    ``preprocess``: a :class:`~retort.plugins.preprocess.Preprocess` from raw inputs (files) to samples, saved
    with the run's model; without one the run logs no model.
    """

    train: Dataset
    val: Dataset | None = None
    test: Dataset | None = None
    task: str = "multiclass"
    n_outputs: int | None = None
    class_names: list[str] | None = None
    name: str = "dataset"
    source: str = "dataset"
    digest: str | None = None
    targets: Sequence[int] | None = field(default=None, repr=False)
    preprocess: Any = field(default=None, repr=False)


@dataclass
class DatasetSplits:
    """Train, validation and test ``Dataset``s (None when empty) with what models and metrics need to know."""

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    info: DataInfo
    digest: str
    target_scaler: None = None

    def unscale_target(self, y: torch.Tensor) -> torch.Tensor:
        return y


class Batch(tuple):
    """A batch a data set's ``__getitems__`` made itself (read in one go): passed through collation as it is."""


class Part(Dataset):
    """The samples of ``dataset`` at ``indices`` (a split), passing on ``sample`` and batched reads."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)
        self.reads_batches = getattr(dataset, "reads_batches", False)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]

    def sample(self, i: int, generator: torch.Generator) -> Any:
        inner = getattr(self.dataset, "sample", None)
        return self.dataset[self.indices[i]] if inner is None else inner(self.indices[i], generator)

    def __getitems__(self, positions: list[int]) -> Any:
        if not self.reads_batches:  # torch's DataLoader calls this whenever it exists: a plain one too
            return [self.dataset[self.indices[i]] for i in positions]
        return self.dataset.__getitems__([self.indices[i] for i in positions])  # type: ignore[attr-defined]


def is_iterable(ds: Dataset) -> bool:
    return isinstance(ds, IterableDataset)


def length(ds: Dataset | None) -> int:
    """Samples in ``ds``; -1 for an iterable data set without ``__len__``."""
    if ds is None:
        return 0
    try:
        return len(ds)  # type: ignore[arg-type]
    except TypeError:
        return -1


def first_sample(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The data set's first ``(x, y)`` as tensors (a fixed generator for its augmentation)."""
    if is_iterable(ds):
        sample = next(iter(ds))
    elif hasattr(ds, "sample"):
        sample = ds.sample(0, torch.Generator().manual_seed(0))
    else:
        sample = ds[0]
    if not isinstance(sample, (tuple, list)) or len(sample) != 2:
        raise PluginError(f"a data set's samples must be (x, y) pairs, got {type(sample).__name__}", field="name")
    return torch.as_tensor(sample[0]), torch.as_tensor(sample[1])


def as_datasets(data: DataSets | Dataset) -> DataSets:
    """A data plugin's data sets as :class:`DataSets` (a bare ``Dataset``'s task read from it)."""
    if isinstance(data, DataSets):
        return data
    classes = getattr(data, "classes", None)
    y = first_sample(data)[1]
    if classes is not None:
        task = "binary" if len(classes) == 2 else "multiclass"
        return DataSets(data, task=task, class_names=[str(c) for c in classes], n_outputs=len(classes),
                        name=type(data).__name__, source=type(data).__name__, targets=getattr(data, "targets", None),
                        preprocess=getattr(data, "preprocess", None))
    if y.is_floating_point():
        return DataSets(data, task="regression", name=type(data).__name__, source=type(data).__name__,
                        preprocess=getattr(data, "preprocess", None))
    raise PluginError(f"data set {type(data).__name__} has integer targets but no `classes` attribute; give it "
                      "one, or return DataSets(train, task=..., n_outputs=...)", field="name")


def _take(ds: Dataset, fraction: float, n_total: int, targets: np.ndarray | None, seed: int,
          field_name: str) -> tuple[Dataset, Dataset | None, np.ndarray | None]:
    """``ds`` -> (rest, taken) with ``ceil(fraction * n_total)`` samples taken by seeded index."""
    from retort.plugins.data.splits import _count, _split

    size = _count(fraction, n_total)
    if size == 0:
        return ds, None, targets
    if is_iterable(ds):
        raise PluginError(f"an iterable data set cannot be split by index; set {field_name}: 0, or have the "
                          "data plugin return its own split", field=field_name)
    n = len(ds)  # type: ignore[arg-type]
    if size >= n:
        raise PluginError(f"{field_name} takes {size} of {n} samples, leaving none to train on", field=field_name)
    labels = targets if targets is not None else np.zeros(n, dtype=np.int64)
    rest, taken = _split(np.arange(n), labels, size, seed, targets is not None, field_name)
    return (Part(ds, rest.tolist()), Part(ds, taken.tolist()),
            None if targets is None else targets[rest])


def sample_digest(ds: Dataset, count: int = 64) -> str:
    """sha256 (16 hex digits) over the length and up to ``count`` evenly spaced samples' bytes."""
    h = hashlib.sha256()
    n = length(ds)
    h.update(str(n).encode())
    if is_iterable(ds):
        picks = []
        for k, sample in enumerate(ds):
            if k >= count:
                break
            picks.append(sample)
    else:
        idx = sorted({int(i) for i in np.linspace(0, n - 1, min(n, count))}) if n > 0 else []
        picks = [ds.sample(i, torch.Generator().manual_seed(0)) if hasattr(ds, "sample") else ds[i] for i in idx]
    for x, y in picks:
        for t in (x, y):
            h.update(torch.as_tensor(t).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def split_datasets(data: DataSets | Dataset, *, val_fraction: float, test_fraction: float, seed: int) -> DatasetSplits:
    """The plugin's data sets, with the validation and test splits it lacks taken from the training set."""
    d = as_datasets(data)
    if d.task not in TASKS:
        raise PluginError(f"task {d.task!r} is unknown; valid choices: {', '.join(TASKS)}", field="name")
    train, n_all = d.train, length(d.train)
    targets = None if d.targets is None else np.asarray(d.targets)
    test, val = d.test, d.val
    if test is None:
        train, test, targets = _take(train, test_fraction, n_all, targets, seed, "test_fraction")
    if val is None:
        train, val, targets = _take(train, val_fraction, n_all, targets, seed, "val_fraction")
    x, y = first_sample(train)
    n_outputs = d.n_outputs
    if n_outputs is None:
        if d.task == "binary":
            n_outputs = 1
        elif d.task == "regression":
            n_outputs = max(1, y.numel())
        elif d.class_names:
            n_outputs = len(d.class_names)
        else:
            raise PluginError("a multiclass data set needs n_outputs or class_names", field="name")
    info = DataInfo(name=d.name, task=d.task, n_features=int(math.prod(x.shape)),
                    image_shape=tuple(x.shape) if x.ndim == 3 else None, n_outputs=int(n_outputs),
                    n_train=length(train), n_val=length(val), n_test=length(test), class_names=d.class_names)
    return DatasetSplits(train, val, test, info, d.digest or sample_digest(d.train))


def is_datasets(value: Any) -> bool:
    """Whether a data plugin returned data sets (not a :class:`~retort.plugins.data.tables.Table`)."""
    return isinstance(value, (DataSets, Dataset))
