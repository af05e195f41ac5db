"""Seeded, stratified train/validation/test splits of a table, scaled with the training split's statistics."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from retort.plugins import PluginError
from retort.plugins.data.tables import DataInfo, Splits, Table


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
    offset = divisor = None
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
    from retort.plugins.preprocess import TablePreprocess

    names = table.features or [f"x{j}" for j in range(table.x.shape[1])]
    preprocess = TablePreprocess(names, offset, divisor, table.x[train_idx[:5]])
    return Splits(part(train_idx), part(val_idx), part(test_idx), info, table_digest(table), target_scaler,
                  preprocess)
