"""Tables from the user's files: CSV with a header row, NumPy ``.npz`` archives; bad cells named by file and line."""

from __future__ import annotations

import csv
import os
import zipfile
from typing import Literal

import numpy as np

from retort.plugins import PluginError, did_you_mean, register
from retort.plugins.data.tables import MAX_AUTO_CLASSES, Table

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


@register("data", "csv", paths=("path",))
def csv_file(
    *,
    path: str,
    target: str,
    features: list[str] | None = None,
    task: TaskName = "auto",
    delimiter: str = ",",
) -> Table:
    """A CSV file with a header row: target column, features (default: every other column), task auto.

    path: the CSV file, relative to the recipe file's folder
    target: the column to predict
    features: the input columns (default: every column but the target)
    task: auto (integer labels with at most 20 values or text: classification; else regression), multiclass,
        binary or regression
    delimiter: the field separator, one character
    """
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
    return Table(x.astype(np.float32), y, task, name, None, class_names, full, list(features))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


@register("data", "npz", paths=("path",))
def npz_file(*, path: str, x: str = "x", y: str = "y", task: TaskName = "auto") -> Table:
    """A NumPy .npz archive: features under key x (N, F) or images (N, H, W)/(N, C, H, W), targets under y.

    path: the .npz file (np.savez), relative to the recipe file's folder
    x: the key of the inputs
    y: the key of the targets (class labels or regression values)
    task: auto, multiclass, binary or regression, as for csv
    """
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
