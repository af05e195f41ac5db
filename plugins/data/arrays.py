"""Data larger than memory: rows of a NumPy ``.npy`` file read from disk on demand, a batch at a time.

Why positioned reads (``os.pread``) and not ``np.load(mmap_mode="r")``: pages a memory map has touched count in
the process's resident set until the kernel reclaims them, so an epoch over a mapped file grows the resident
set by the file's size, and a map of a file larger than the address-space limit cannot be made at all.
Positioned reads leave the caching to the kernel's page cache (shared, not the process's), keep the resident
set at one batch, and read sorted, coalesced runs of rows. ``scripts/bench data`` measures both.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from retort.plugins import PluginError, register
from retort.plugins.data.datasets import Batch, DataSets
from retort.plugins.data.files import TaskName, _target


def npy_header(path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, offset of the first byte of data)`` of an ``.npy`` file, read without its data."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
    except (ValueError, OSError) as exc:
        raise PluginError(f"{path} is not a readable .npy file: {exc}", field="path") from None
    if fortran and len(shape) > 1:
        raise PluginError(f"{path} is in Fortran order; rows must be contiguous (save np.ascontiguousarray)",
                          field="path")
    if dtype.hasobject:
        raise PluginError(f"{path} holds Python objects; it must hold numbers", field="path")
    return tuple(shape), dtype, offset


class NpyRows(Dataset):
    """Rows of an ``.npy`` file as float32 tensors, read on demand; ``targets`` in memory (one per row)."""

    reads_batches = True

    def __init__(self, path: str, targets: np.ndarray):
        self.path = path
        self.shape, self.dtype, self.offset = npy_header(path)
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.targets = torch.from_numpy(targets)
        self._fd: int | None = None

    def __getstate__(self) -> dict[str, Any]:  # a worker process opens its own file
        return {**self.__dict__, "_fd": None}

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, indices: np.ndarray) -> np.ndarray:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        order = np.argsort(indices, kind="stable")
        ordered = indices[order]
        out = np.empty((len(indices), *self.row_shape), dtype=self.dtype)
        view = out.reshape(len(indices), -1).view(np.uint8)
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1  # runs of consecutive rows: one read each
        for run in np.split(np.arange(len(ordered)), breaks):
            first, count = int(ordered[run[0]]), len(run)
            want = count * self.row_bytes
            data = os.pread(self._fd, want, self.offset + first * self.row_bytes)
            if len(data) != want:
                raise OSError(f"{self.path}: rows {first}..{first + count - 1} are past the end of the file")
            view[order[run[0]:run[0] + count]] = np.frombuffer(data, np.uint8).reshape(count, -1)
        return out

    def __getitems__(self, indices: list[int]) -> Batch:
        idx = np.asarray(indices, dtype=np.int64)
        x = torch.from_numpy(self._rows(idx))
        return Batch((x if x.dtype == torch.float32 else x.float(), self.targets[idx]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]


def file_digest(*paths: str) -> str:
    """sha256 (16 hex digits) over the files' bytes, read in 8 MB chunks."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(8 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


class _RowNames:
    def __getitem__(self, i: int) -> str:
        return f"row {i}"


@register("data", "npy", paths=("path",))
def npy_files(*, path: str, x: str = "x.npy", y: str = "y.npy", task: TaskName = "auto") -> DataSets:
    """A folder with x.npy (rows first) and y.npy: rows read from disk on demand, for data larger than memory."""
    folder = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(folder):
        raise PluginError(f"data folder {folder} does not exist", field="path")
    files = {}
    for key, name in (("x", x), ("y", y)):
        files[key] = os.path.join(folder, name)
        if not os.path.isfile(files[key]):
            present = ", ".join(sorted(f for f in os.listdir(folder) if f.endswith(".npy"))) or "(no .npy files)"
            raise PluginError(f"{files[key]} does not exist; {folder} holds {present}", field=key)
    shape, dtype, _ = npy_header(files["x"])
    if dtype.kind not in "iufb" or len(shape) < 2 or shape[0] < 2:
        raise PluginError(f"{files['x']} has shape {shape} and dtype {dtype}; expected numbers, at least 2 rows, "
                          "(N, F), (N, H, W) or (N, C, H, W)", field="x")
    raw = np.load(files["y"], allow_pickle=False)
    if raw.ndim == 0 or len(raw) != shape[0]:
        raise PluginError(f"{files['y']} has shape {raw.shape}, but {files['x']} has {shape[0]} rows", field="y")
    target, task, class_names = _target(raw, task, files["y"], "y", _RowNames())  # type: ignore[arg-type]
    rows = NpyRows(files["x"], target)
    if len(shape) == 3:  # (N, H, W): one channel
        rows.row_shape = (1, *shape[1:])
    n_outputs = target.shape[1] if task == "regression" else (1 if task == "binary" else len(class_names))
    return DataSets(rows, task=task, n_outputs=n_outputs, class_names=class_names,
                    name=os.path.basename(folder.rstrip(os.sep)), source=folder,
                    digest=file_digest(files["x"], files["y"]), targets=None if task == "regression" else target)
