"""Data plugins: in-memory tables, seeded splits and a fast tensor loader.

A data factory returns a :class:`Table` (every row in memory as numpy arrays). :func:`prepare` splits
it (test first, then validation from the rest, stratified for classification), fits the scaling on
the training split only and returns torch tensors with a :class:`DataInfo` that models and metrics
are built from. :class:`TensorLoader` batches in-memory tensors by slicing a permutation, which is
much cheaper than torch's ``DataLoader`` (per-sample indexing and collation) for small data sets::

    >>> import plugins
    >>> from plugins.data import prepare
    >>> splits = prepare(plugins.build("data", "digits"), val_fraction=0.2, test_fraction=0.2, seed=0)
    >>> splits.info.n_train, splits.info.n_val, splits.info.n_test
    (1077, 360, 360)
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from retort.plugins import PluginError, did_you_mean, register

TASKS = ("multiclass", "binary", "regression")
# An integer-valued target with at most this many distinct values is read as class labels (task "auto").
MAX_AUTO_CLASSES = 20
# Rows of image shape (C, H, W) that come with the built-in sets; named in models' error messages.
IMAGE_DATASETS = ("digits",)


@dataclass
class Table:
    """Every row of a data set in memory.

    ``y`` holds int64 class indices of shape (N,) for classification, float32 of shape (N, T) for
    regression. ``image_shape`` is (C, H, W) when each row of ``x`` is a flattened image.
    """

    x: np.ndarray
    y: np.ndarray
    task: str
    name: str
    image_shape: tuple[int, int, int] | None = None
    class_names: list[str] | None = None
    source: str = "synthetic"


@dataclass(frozen=True)
class DataInfo:
    """What a model or a metric needs to know about the data: shapes, task and split sizes.

    ``n_outputs`` is the number of classes for multiclass, 1 for binary (one logit), T for regression.
    """

    name: str
    task: str
    n_features: int
    image_shape: tuple[int, int, int] | None
    n_outputs: int
    n_train: int
    n_val: int
    n_test: int
    class_names: list[str] | None


@dataclass
class Splits:
    """Train, validation and test tensors ``(x, y)``; ``target_scaler`` is ``(mean, std)`` or None.

    Scaled regression targets go back to data units with :meth:`unscale_target`.
    """

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    info: DataInfo
    digest: str
    target_scaler: tuple[torch.Tensor, torch.Tensor] | None = None

    def unscale_target(self, y: torch.Tensor) -> torch.Tensor:
        if self.target_scaler is None:
            return y
        mean, std = (t.to(y.device) for t in self.target_scaler)
        return y * std + mean


# --- built-in data sets -------------------------------------------------------------------------

def _sklearn(loader_name: str, name: str, task: str, image_shape=None) -> Table:
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, loader_name)()
    x = np.ascontiguousarray(bunch.data, dtype=np.float32)
    if task == "regression":
        y = np.asarray(bunch.target, dtype=np.float32).reshape(len(x), -1)
        class_names = None
    else:
        y = np.asarray(bunch.target, dtype=np.int64)
        class_names = [str(c) for c in bunch.target_names]
    return Table(x, y, task, name, image_shape, class_names, f"sklearn:{name}")


@register("data", "digits")
def digits() -> Table:
    """scikit-learn's handwritten digits: 1797 rows of 8×8 images (64 features, 0 to 16), 10 classes."""
    return _sklearn("load_digits", "digits", "multiclass", (1, 8, 8))


@register("data", "wine")
def wine() -> Table:
    """scikit-learn's wine recognition: 178 rows, 13 chemical features, 3 cultivars."""
    return _sklearn("load_wine", "wine", "multiclass")


@register("data", "breast_cancer")
def breast_cancer() -> Table:
    """scikit-learn's Wisconsin breast cancer: 569 rows, 30 features, binary (malignant/benign)."""
    return _sklearn("load_breast_cancer", "breast_cancer", "binary")


@register("data", "diabetes")
def diabetes() -> Table:
    """scikit-learn's diabetes: 442 rows, 10 (centred, scaled) features, 1 regression target."""
    return _sklearn("load_diabetes", "diabetes", "regression")


@register("data", "iris")
def iris() -> Table:
    """scikit-learn's iris: 150 rows, 4 features, 3 species."""
    return _sklearn("load_iris", "iris", "multiclass")


def _sklearn_call(fn, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    try:
        return fn(**kwargs)
    except ValueError as exc:  # sklearn checks the combinations (e.g. n_classes vs n_informative)
        raise PluginError(f"{fn.__name__}: {exc}") from None


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise PluginError(f"{key} must be at least 1, got {value}", field=key)


@register("data", "synthetic_classification")
def synthetic_classification(
    *,
    n_samples: int = 1000,
    n_features: int = 20,
    n_informative: int = 10,
    n_classes: int = 2,
    class_sep: float = 1.0,
    seed: int = 0,
) -> Table:
    """sklearn make_classification: 1000 rows, 20 features (10 informative), 2 classes, class_sep 1."""
    from sklearn.datasets import make_classification

    _check_positive(n_samples=n_samples, n_features=n_features, n_informative=n_informative)
    if n_classes < 2:
        raise PluginError(f"n_classes must be at least 2, got {n_classes}", field="n_classes")
    if n_informative > n_features:
        raise PluginError(f"n_informative ({n_informative}) must not exceed n_features ({n_features})",
                          field="n_informative")
    x, y = _sklearn_call(make_classification, n_samples=n_samples, n_features=n_features,
                         n_informative=n_informative, n_classes=n_classes,
                         class_sep=class_sep, random_state=seed)
    task = "binary" if n_classes == 2 else "multiclass"
    return Table(x.astype(np.float32), y.astype(np.int64), task, "synthetic_classification",
                 class_names=[str(c) for c in range(n_classes)], source="synthetic")


@register("data", "synthetic_regression")
def synthetic_regression(
    *,
    n_samples: int = 1000,
    n_features: int = 20,
    n_informative: int = 10,
    n_targets: int = 1,
    noise: float = 0.1,
    seed: int = 0,
) -> Table:
    """sklearn make_regression: 1000 rows, 20 features (10 informative), 1 target, noise sd 0.1."""
    from sklearn.datasets import make_regression

    _check_positive(n_samples=n_samples, n_features=n_features, n_informative=n_informative,
                    n_targets=n_targets)
    if n_informative > n_features:
        raise PluginError(f"n_informative ({n_informative}) must not exceed n_features ({n_features})",
                          field="n_informative")
    x, y = _sklearn_call(make_regression, n_samples=n_samples, n_features=n_features,
                         n_informative=n_informative, n_targets=n_targets, noise=noise, random_state=seed)
    return Table(x.astype(np.float32), y.astype(np.float32).reshape(n_samples, -1), "regression",
                 "synthetic_regression", source="synthetic")


# --- files --------------------------------------------------------------------------------------

TaskName = Literal["auto", "multiclass", "binary", "regression"]


def _existing(path: str) -> str:
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        what = "is a directory, not a file" if os.path.isdir(full) else "does not exist"
        raise PluginError(f"data file {full} {what}", field="path")
    return full


def _label_name(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _target(raw: np.ndarray, task: str, where: str, field: str, rows: list[str]) -> tuple:
    """``raw`` labels/values -> ``(y, task, class_names)``; ``rows`` names each row in messages."""
    numeric = raw.dtype.kind in "iufb"
    if task == "auto":
        if not numeric:
            task = "classification"
        elif raw.ndim > 1 and raw.shape[1] > 1:
            task = "regression"
        else:
            flat = raw.reshape(-1).astype(np.float64)
            whole = bool(np.all(np.isfinite(flat)) and np.all(flat == np.round(flat)))
            task = "classification" if whole and len(np.unique(flat)) <= MAX_AUTO_CLASSES else "regression"
    if task == "regression":
        if not numeric:
            example = raw.reshape(-1)[0]
            raise PluginError(f"task 'regression' needs a numeric target, but {where} holds {example!r}; "
                              "set task to 'multiclass' or 'binary' for labels", field="task")
        y = raw.astype(np.float32).reshape(len(raw), -1)
        bad = ~np.isfinite(y).all(axis=1)
        if bad.any():
            raise PluginError(f"{where}: non-finite target value at {rows[int(np.argmax(bad))]}", field=field)
        return np.ascontiguousarray(y), "regression", None
    if raw.ndim > 1:
        if raw.shape[1] != 1:
            raise PluginError(f"{where}: class labels must be one column, got shape {raw.shape}", field=field)
        raw = raw[:, 0]
    if numeric and not np.isfinite(raw.astype(np.float64)).all():
        bad = int(np.argmax(~np.isfinite(raw.astype(np.float64))))
        raise PluginError(f"{where}: missing (NaN) class label at {rows[bad]}", field=field)
    labels, y = np.unique(raw, return_inverse=True)
    names = [_label_name(v) for v in labels]
    if task == "classification":
        task = "binary" if len(labels) == 2 else "multiclass"
    if len(labels) < 2:
        raise PluginError(f"{where} has {len(labels)} distinct class label(s) ({', '.join(names)}); "
                          "classification needs at least 2", field=field)
    if task == "binary" and len(labels) != 2:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise PluginError(f"task 'binary' needs exactly 2 classes, but {where} has {len(labels)}: {shown}",
                          field="task")
    return y.astype(np.int64).reshape(-1), task, names


def _check_rows(n: int, where: str) -> None:
    if n < 2:
        raise PluginError(f"{where} has {n} data row(s); at least 2 are needed", field="path")


def _check_finite(x: np.ndarray, where: str, field: str, rows: list[str], columns: list[str]) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise PluginError(f"{where}: {x[r, c]} in feature {columns[c]!r} at {rows[r]}; "
                          "features must be finite numbers", field=field)


@register("data", "csv")
def csv_file(
    *,
    path: str,
    target: str,
    features: list[str] | None = None,
    task: TaskName = "auto",
    delimiter: str = ",",
) -> Table:
    """A CSV file with a header row: target column, features (default: every other column), task auto."""
    full = _existing(path)
    if len(delimiter) != 1:
        raise PluginError(f"delimiter must be one character, got {delimiter!r}", field="delimiter")
    try:
        with open(full, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, delimiter=delimiter, strict=True)
            header = next(reader, None)
            if header is None:
                raise PluginError(f"{full} is empty; a header row is needed", field="path")
            header = [h.strip() for h in header]
            rows, lines = [], []
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise PluginError(f"{full}, line {reader.line_num}: {len(row)} fields, but the header "
                                      f"has {len(header)}", field="path")
                rows.append(row)
                lines.append(f"line {reader.line_num}")
    except csv.Error as exc:
        raise PluginError(f"{full}, line {reader.line_num}: malformed CSV: {exc}", field="path") from None
    except UnicodeDecodeError as exc:
        raise PluginError(f"{full} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                          field="path") from None
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise PluginError(f"{full}: duplicate column name(s) in the header: {', '.join(dupes)}", field="path")
    _check_rows(len(rows), full)

    if target not in header:
        raise PluginError(f"{full} has no column {target!r}{did_you_mean(target, header)}; "
                          f"columns: {', '.join(header)}", field="target")
    if features is None:
        features = [h for h in header if h != target]
    if not features:
        raise PluginError(f"{full}: no feature columns besides the target {target!r}", field="features")
    for name in features:
        if name not in header:
            raise PluginError(f"{full} has no column {name!r}{did_you_mean(name, header)}; "
                              f"columns: {', '.join(header)}", field="features")
        if name == target:
            raise PluginError(f"column {target!r} is the target and cannot also be a feature",
                              field="features")

    columns = list(zip(*rows))
    x = np.empty((len(rows), len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        cells = columns[header.index(name)]
        try:
            x[:, j] = np.asarray(cells, dtype=np.float64)
        except ValueError:
            i = next(i for i, cell in enumerate(cells) if not _is_number(cell))
            raise PluginError(f"{full}, {lines[i]}: feature {name!r} has the non-numeric value {cells[i]!r}",
                              field="features") from None
    _check_finite(x, full, "features", lines, features)

    cells = columns[header.index(target)]
    blank = [i for i, cell in enumerate(cells) if not cell.strip()]
    if blank:
        raise PluginError(f"{full}, {lines[blank[0]]}: the target {target!r} is empty", field="target")
    try:
        raw = np.asarray(cells, dtype=np.float64)
    except ValueError:
        raw = np.asarray([c.strip() for c in cells])
    y, task, class_names = _target(raw, task, f"column {target!r} of {full}", "target", lines)
    name = os.path.splitext(os.path.basename(full))[0]
    return Table(x.astype(np.float32), y, task, name, None, class_names, full)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


@register("data", "npz")
def npz_file(*, path: str, x: str = "x", y: str = "y", task: TaskName = "auto") -> Table:
    """A NumPy .npz archive: features under key x (N, F) or images (N, H, W)/(N, C, H, W), targets under y."""
    full = _existing(path)
    if not zipfile.is_zipfile(full):  # np.load would try a .npy or a pickle and fail less clearly
        raise PluginError(f"{full} is not an .npz archive (not a zip file); write one with np.savez",
                          field="path")
    try:
        archive = np.load(full, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise PluginError(f"{full} is not a readable .npz archive: {exc}", field="path") from None
    with archive:
        arrays = {}
        for field, key in (("x", x), ("y", y)):
            if key not in archive.files:
                raise PluginError(f"{full} has no array {key!r}{did_you_mean(key, archive.files)}; "
                                  f"keys: {', '.join(archive.files) or '(none)'}", field=field)
            try:
                arrays[field] = archive[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise PluginError(f"{full}: array {key!r} is unreadable: {exc}", field="path") from None
    xs, ys = arrays["x"], arrays["y"]
    if xs.dtype.kind not in "iufb":
        raise PluginError(f"{full}: array {x!r} must be numeric, got dtype {xs.dtype}", field="x")
    if xs.ndim not in (1, 2, 3, 4):
        raise PluginError(f"{full}: array {x!r} has shape {xs.shape}; expected (N,), (N, F), (N, H, W) "
                          "or (N, C, H, W)", field="x")
    image_shape = None
    if xs.ndim == 3:
        image_shape = (1, *xs.shape[1:])
    elif xs.ndim == 4:
        image_shape = tuple(xs.shape[1:])
    n = len(xs)
    _check_rows(n, full)
    features = xs.reshape(n, -1).astype(np.float32)
    rows = [f"row {i}" for i in range(n)]
    _check_finite(features, f"{full}, array {x!r}", "x", rows, [str(j) for j in range(features.shape[1])])
    if ys.ndim == 0 or len(ys) != n:
        raise PluginError(f"{full}: array {y!r} has shape {ys.shape}, but {x!r} has {n} rows", field="y")
    if ys.dtype.kind not in "iufbUS":
        raise PluginError(f"{full}: array {y!r} must hold numbers or strings, got dtype {ys.dtype}",
                          field="y")
    target, task, class_names = _target(ys, task, f"array {y!r} of {full}", "y", rows)
    name = os.path.splitext(os.path.basename(full))[0]
    return Table(np.ascontiguousarray(features), target, task, name, image_shape, class_names, full)


# --- splits -------------------------------------------------------------------------------------

def table_digest(table: Table) -> str:
    """First 16 hex digits of sha256 over task, shapes and little-endian bytes of x and y."""
    h = hashlib.sha256()
    y_dtype = "<f4" if table.task == "regression" else "<i8"
    for part in (np.ascontiguousarray(table.x, dtype="<f4"), np.ascontiguousarray(table.y, dtype=y_dtype)):
        h.update(repr(part.shape).encode())
        h.update(part.tobytes())
    h.update(table.task.encode())
    return h.hexdigest()[:16]


def _n_outputs(table: Table) -> int:
    if table.task == "regression":
        return int(table.y.shape[1])
    if table.task == "binary":
        return 1
    return len(table.class_names) if table.class_names else int(table.y.max()) + 1


def _count(fraction: float, n: int) -> int:
    # ceil like scikit-learn, minus a hair so that 0.7 * 10 = 7.000000000000001 gives 7
    return math.ceil(fraction * n - 1e-9)


def _split(index: np.ndarray, y: np.ndarray, size: int, seed: int, stratify: bool,
           field: str) -> tuple[np.ndarray, np.ndarray]:
    """``index`` -> (rest, taken) with ``size`` rows taken."""
    if size == 0:
        return index, index[:0]
    from sklearn.model_selection import train_test_split

    try:
        rest, taken = train_test_split(index, test_size=size, random_state=seed,
                                       stratify=y[index] if stratify else None)
    except ValueError as exc:
        raise PluginError(f"{field} gives {size} of {len(index)} rows; the stratified split failed: {exc}",
                          field=field) from None
    return np.sort(rest), np.sort(taken)


def _scaler(train: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """(offset, divisor) fitted on ``train``; constant columns get divisor 1 so they do not become NaN."""
    if how == "standard":
        offset, spread = train.mean(axis=0), train.std(axis=0)
    else:
        offset, spread = train.min(axis=0), train.max(axis=0) - train.min(axis=0)
    return offset, np.where(spread > 0, spread, 1.0)


def prepare(
    table: Table,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    scale: str = "standard",
    target_scale: str = "none",
) -> Splits:
    """Split ``table`` into train/val/test tensors, scaled with statistics of the train split.

    The test split is taken first (``ceil(test_fraction * N)`` rows), then the validation split
    (``ceil(val_fraction * N)`` rows) from the rest, both with scikit-learn's ``train_test_split``
    seeded with ``seed`` and stratified by class for classification. A fraction of 0 gives empty
    tensors of the right shape. ``scale``: standard (zero mean, unit variance), minmax ([0, 1]) or
    none; ``target_scale``: standard or none, regression only.
    """
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise PluginError(f"{key} must be a number in [0, 1), got {value!r}", field=key)
    if val_fraction + test_fraction >= 1:
        raise PluginError(f"val_fraction + test_fraction must be below 1 to leave training rows, got "
                          f"{val_fraction} + {test_fraction}", field="val_fraction")
    if scale not in ("standard", "minmax", "none"):
        raise PluginError(f"scale {scale!r} is unknown; valid choices: standard, minmax, none", field="scale")
    if target_scale not in ("standard", "none"):
        raise PluginError(f"target_scale {target_scale!r} is unknown; valid choices: standard, none",
                          field="target_scale")
    if target_scale != "none" and table.task != "regression":
        raise PluginError(f"target_scale {target_scale!r} applies to regression only; data "
                          f"{table.name!r} is {table.task}", field="target_scale")

    n = len(table.x)
    n_test, n_val = _count(test_fraction, n), _count(val_fraction, n)
    if n - n_test - n_val < 1:
        raise PluginError(f"{n} rows leave no training rows after {n_test} test and {n_val} validation rows",
                          field="val_fraction")
    stratify = table.task != "regression"
    rest, test_idx = _split(np.arange(n), table.y, n_test, seed, stratify, "test_fraction")
    train_idx, val_idx = _split(rest, table.y, n_val, seed, stratify, "val_fraction")

    x = table.x.astype(np.float64)
    if scale != "none":
        offset, divisor = _scaler(x[train_idx], scale)
        x = (x - offset) / divisor
    y = table.y
    target_scaler = None
    if target_scale == "standard":
        mean, std = _scaler(y[train_idx].astype(np.float64), "standard")
        y = ((y - mean) / std).astype(np.float32)
        target_scaler = (torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))
    x = x.astype(np.float32)
    y_dtype = np.float32 if table.task == "regression" else np.int64

    def part(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.ascontiguousarray(x[idx])), torch.from_numpy(
            np.ascontiguousarray(y[idx], dtype=y_dtype))

    info = DataInfo(
        name=table.name,
        task=table.task,
        n_features=int(table.x.shape[1]),
        image_shape=table.image_shape,
        n_outputs=_n_outputs(table),
        n_train=len(train_idx),
        n_val=len(val_idx),
        n_test=len(test_idx),
        class_names=table.class_names,
    )
    return Splits(part(train_idx), part(val_idx), part(test_idx), info, table_digest(table), target_scaler)


# --- batches ------------------------------------------------------------------------------------

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
