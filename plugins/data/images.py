"""Image folders: one folder per class, decoded with Pillow, transformed with torch (no torchvision needed).

Training samples are augmented (a random resized crop, then a horizontal flip with probability 1/2), drawn
from the generator retort seeds per sample, epoch and run; evaluation samples are resized; both are scaled to
[0, 1] and normalized with a per-channel mean and std (by default measured on up to 512 of the images)::

    photos/cat/1.png  photos/dog/7.jpg ...           one folder, split by retort (stratified, seeded)
    photos/train/cat/1.png  photos/val/...  photos/test/...   splits of its own (val, test optional)
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from retort.plugins import PluginError, register
from retort.plugins.data.datasets import DataSets
from retort.plugins.preprocess import Preprocess

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageFiles(Dataset):
    """Images with class indices: ``ds[i]`` is an evaluation sample, ``ds.sample(i, generator)`` a training one."""

    def __init__(self, files: list[str], labels: list[int], *, size: int, mode: str, mean: list[float],
                 std: list[float], crop_scale: tuple[float, float] = (0.08, 1.0), flip: bool = True,
                 augment: bool = True):
        self.files, self.targets = files, labels
        self.size, self.mode, self.crop_scale, self.flip, self.augment = size, mode, crop_scale, flip, augment
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def _open(self, i: int):
        from PIL import Image

        try:
            with Image.open(self.files[i]) as img:
                return img.convert(self.mode)
        except (OSError, ValueError) as exc:
            raise OSError(f"{self.files[i]}: not a readable image ({exc})") from None

    def _tensor(self, img) -> torch.Tensor:
        return normalized(img, self.mean, self.std)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        img = self._open(i).resize((self.size, self.size), Image.BILINEAR)
        return self._tensor(img), self.targets[i]

    def sample(self, i: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        if not self.augment:
            return self[i]
        from PIL import Image

        img = self._open(i)
        box = crop_box(img.size, self.crop_scale, generator)
        img = img.resize((self.size, self.size), Image.BILINEAR, box=box)
        if self.flip and float(torch.rand((), generator=generator)) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return self._tensor(img), self.targets[i]


def normalized(img, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A Pillow image as a (C, H, W) tensor scaled to [0, 1] and normalized per channel."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    x = (x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)).float().div_(255)
    return (x - mean) / std


def crop_box(size: tuple[int, int], scale: tuple[float, float], generator: torch.Generator,
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A random resized crop's box (left, top, right, bottom): area a fraction in ``scale`` of the image,
    aspect ratio log-uniform in ``ratio``, ten tries, then the whole image (torchvision's rule)."""
    width, height = size
    area = width * height
    for _ in range(10):
        u = torch.rand(4, generator=generator).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(math.log(ratio[0]) + u[1] * (math.log(ratio[1]) - math.log(ratio[0])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(u[2] * (width - w + 1)), int(u[3] * (height - h + 1))
            return left, top, left + w, top + h
    return 0, 0, width, height


def _scan(folder: str, classes: list[str] | None) -> tuple[list[str], list[int], list[str]]:
    """Image files of ``folder/CLASS/`` (recursively), their class indices and the class names."""
    if classes is None:
        classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    files, labels = [], []
    for k, name in enumerate(classes):
        for root, _, names in sorted(os.walk(os.path.join(folder, name))):
            for f in sorted(names):
                if f.lower().endswith(EXTENSIONS):
                    files.append(os.path.join(root, f))
                    labels.append(k)
    return files, labels, classes


def _check(path: str, data: bytes) -> None:
    """Parses an image's header: an unreadable one is bad input, named by its path."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.size  # noqa: B018 (the header is parsed)
    except (OSError, ValueError) as exc:
        raise PluginError(f"{path} is not a readable image ({_reason(exc)})", field="path") from None


def _reason(exc: Exception) -> str:
    """Pillow's reason, without the in-memory file object it names when it cannot tell the format."""
    from PIL import UnidentifiedImageError

    return "not an image format Pillow reads" if isinstance(exc, UnidentifiedImageError) else str(exc)


def _check_and_digest(files: list[str], root: str, mode: str) -> str:
    """Opens every image's header (:func:`_check`); sha256 of the files."""
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as fh:
            data = fh.read()
        _check(path, data)
        h.update(os.path.relpath(path, root).encode())
        h.update(data)
    return h.hexdigest()[:16]


def _statistics(ds: ImageFiles, count: int = 512) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of up to ``count`` evenly spaced images (evaluation transform, unnormalized)."""
    idx = np.unique(np.linspace(0, len(ds) - 1, min(len(ds), count)).astype(int))
    x = torch.stack([ds[int(i)][0] for i in idx]).transpose(0, 1).reshape(ds.mean.shape[0], -1)
    return x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()


class ImagePreprocess(Preprocess):
    """Image files to the transform the run was evaluated with: decoded with Pillow, converted to ``mode``,
    resized to ``size`` x ``size`` (bilinear), scaled to [0, 1], normalized with the run's ``mean`` and ``std``.

    Raw inputs: a ``pandas.DataFrame`` with, per row, ``image`` (an encoded image file's bytes: PNG, JPEG, ...)
    or ``path`` (an image file); ``path`` comes back as the predictions' first column. ``read`` takes an image
    file or a folder (every image under it, sorted)."""

    def __init__(self, size: int, mode: str, mean: list[float], std: list[float], example_files: list[str]):
        self.size, self.mode, self.mean, self.std = size, mode, list(mean), list(std)
        self.example_files = list(example_files)

    def example(self) -> Any:
        """Two training images: the first as bytes (re-encoded as a small PNG), the second by its path."""
        import pandas as pd
        from PIL import Image

        with Image.open(self.example_files[0]) as img:
            small = img.convert(self.mode).resize((self.size, self.size), Image.BILINEAR)
        out = io.BytesIO()
        small.save(out, format="PNG")
        return pd.DataFrame({"path": [None, self.example_files[-1]], "image": [out.getvalue(), None]})

    def read(self, path: str) -> Any:
        import pandas as pd

        if os.path.isdir(path):
            files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                           if f.lower().endswith(EXTENSIONS))
            if not files:
                raise PluginError(f"{path} holds no images ({', '.join(EXTENSIONS)})")
        else:
            files = [path]
        for f in files:
            with open(f, "rb") as fh:
                _check(f, fh.read())
        return pd.DataFrame({"path": files})

    def transform(self, inputs: Any) -> torch.Tensor:
        from PIL import Image

        mean = torch.tensor(self.mean, dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).reshape(-1, 1, 1)
        images, paths = _column(inputs, "image"), _column(inputs, "path")
        if images is None and paths is None:
            raise PluginError("image inputs need a column 'image' (encoded image bytes) or 'path' (image files)")
        out = []
        for i in range(len(inputs)):
            data, where = _value(images, i), _value(paths, i)
            if data is None and where is None:
                raise PluginError(f"input row {i} has neither an image nor a path")
            name = where if data is None else f"the image of input row {i}"
            try:
                with Image.open(io.BytesIO(data) if data is not None else where) as img:
                    img = img.convert(self.mode).resize((self.size, self.size), Image.BILINEAR)
            except (OSError, ValueError) as exc:
                raise PluginError(f"{name} is not a readable image ({_reason(exc)})") from None
            out.append(normalized(img, mean, std))
        return torch.stack(out) if out else torch.zeros(0, len(self.mean), self.size, self.size)

    def predict(self, net: torch.nn.Module, inputs: Any, batch_size: int = 1024) -> Any:
        out = super().predict(net, inputs, batch_size)
        paths = _column(inputs, "path")
        if paths is not None:
            out.insert(0, "path", list(paths))
        return out


def _column(inputs: Any, name: str) -> Any:
    return inputs[name].tolist() if hasattr(inputs, "columns") and name in inputs.columns else None


def _value(column: list[Any] | None, i: int) -> Any:
    """The column's value in row ``i``; None for a missing one (None, NaN)."""
    value = None if column is None else column[i]
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


@register("data", "image_folder")
def image_folder(
    *,
    path: str,
    size: int = 32,
    mode: Literal["RGB", "L"] = "RGB",
    crop_scale: list[float] = [0.5, 1.0],  # noqa: B006 (a signature default is read, never mutated)
    flip: bool = True,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> DataSets:
    """Images in one folder per class (or train/val/test folders of those): random resized crop + flip, size 32."""
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise PluginError(f"image folder {root} does not exist", field="path")
    if size < 1:
        raise PluginError(f"size must be at least 1, got {size}", field="size")
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise PluginError(f"crop_scale must be [low, high] with 0 < low <= high <= 1, got {crop_scale}",
                          field="crop_scale")
    channels = 3 if mode == "RGB" else 1
    for key, value in (("mean", mean), ("std", std)):
        if value is not None and len(value) != channels:
            raise PluginError(f"{key} needs {channels} value(s) for mode {mode}, got {value}", field=key)
    split_folders = os.path.isdir(os.path.join(root, "train"))
    train_dir = os.path.join(root, "train") if split_folders else root
    files, labels, classes = _scan(train_dir, None)
    if len(classes) < 2 or not files:
        found = f"class folders {', '.join(classes)}" if classes else "no class folders"
        raise PluginError(f"image folder {train_dir} has {found} with {len(files)} images; expected one folder "
                          f"per class (at least 2) holding images ({', '.join(EXTENSIONS)})", field="path")
    empty = [c for k, c in enumerate(classes) if k not in set(labels)]
    if empty:
        raise PluginError(f"class folder(s) {', '.join(empty)} of {train_dir} hold no images", field="path")
    parts = {"train": (files, labels)}
    if split_folders:
        for name in ("val", "test"):
            if os.path.isdir(os.path.join(root, name)):
                parts[name] = _scan(os.path.join(root, name), classes)[:2]
    digest = _check_and_digest([f for fs, _ in parts.values() for f in fs], root, mode)
    options = {"size": size, "mode": mode, "crop_scale": tuple(crop_scale), "flip": flip}
    if mean is None or std is None:
        plain = ImageFiles(files, labels, mean=[0.0] * channels, std=[1.0] * channels, **options)
        measured = _statistics(plain)
        mean, std = mean or measured[0], std or measured[1]
    made = {k: ImageFiles(fs, ls, mean=mean, std=std, augment=k == "train", **options) for k, (fs, ls) in parts.items()}
    preprocess = ImagePreprocess(size, mode, mean, std, [files[labels.index(0)], files[labels.index(1)]])
    return DataSets(made["train"], made.get("val"), made.get("test"), task="multiclass", n_outputs=len(classes),
                    class_names=classes, name=os.path.basename(root.rstrip(os.sep)), source=root, digest=digest,
                    targets=labels, preprocess=preprocess)
