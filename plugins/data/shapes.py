"""A generated image folder every machine can make offline: shapes drawn with Pillow, the same on every machine.

On first use the images are drawn into a cache folder (``$RETORT_CACHE``, else ``$XDG_CACHE_HOME/retort``, else
``~/.cache/retort``), named by the generator's version and settings, through a temporary folder renamed into
place, so that concurrent first uses never see half a folder. Later uses read the folder as it is.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Literal

import numpy as np

from retort.plugins import PluginError, register
from retort.plugins.data.datasets import DataSets
from retort.plugins.data.images import image_folder

SHAPES = ("circle", "square", "triangle", "cross")
VERSION = 2  # bump when the drawing changes: the cache folder's name changes with it


def cache_dir() -> str:
    base = os.environ.get("RETORT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "retort")
    os.makedirs(base, exist_ok=True)
    return base


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners = [math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [(cx + r * math.cos(a + angle), cy + r * math.sin(a + angle)) for a in corners]
    if kind == "triangle":
        return [(cx + r * math.cos(a + angle), cy + r * math.sin(a + angle))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    w = r / 3  # a cross: twelve corners
    arm = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in arm]


def draw(kind: str, size: int, rng: np.random.RandomState):
    """One image of ``kind``: random position, radius, rotation, a light shape on a dark ground or the other way
    round (random tints), and noise on every pixel."""
    from PIL import Image, ImageDraw

    dark, light = tuple(int(v) for v in rng.randint(0, 100, 3)), tuple(int(v) for v in rng.randint(156, 256, 3))
    background, colour = (dark, light) if rng.rand() < 0.5 else (light, dark)  # always a clear edge
    img = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(img)
    r = size * rng.uniform(0.18, 0.36)
    cx, cy = rng.uniform(r, size - r, 2)
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        pen.polygon(_polygon(kind, cx, cy, r, angle), fill=colour)
    pixels = np.asarray(img).copy()
    noise = rng.randint(-24, 25, pixels.shape)
    return Image.fromarray(np.clip(pixels.astype(int) + noise, 0, 255).astype(np.uint8))


def generate(folder: str, per_class: int, size: int, seed: int) -> None:
    """Draw ``per_class`` images of each shape into ``folder/SHAPE/NNNN.png``."""
    rng = np.random.RandomState(seed)
    for kind in SHAPES:
        os.makedirs(os.path.join(folder, kind))
    for i in range(per_class):
        for kind in SHAPES:
            draw(kind, size, rng).save(os.path.join(folder, kind, f"{i:04d}.png"), optimize=False)


def shapes_folder(per_class: int, size: int, seed: int) -> str:
    """The cache folder of these settings, generated on first use."""
    folder = os.path.join(cache_dir(), f"shapes-v{VERSION}-{per_class}x{size}px-seed{seed}")
    if not os.path.isdir(folder):
        tmp = tempfile.mkdtemp(prefix=".shapes-", dir=os.path.dirname(folder))
        try:
            generate(tmp, per_class, size, seed)
            os.rename(tmp, folder)
        except OSError:
            if not os.path.isdir(folder):  # not a concurrent first use that won the rename
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@register("data", "shapes")
def shapes(
    *,
    per_class: int = 500,
    size: int = 16,
    seed: int = 0,
    crop_scale: list[float] = [0.8, 1.0],  # noqa: B006 (a signature default is read, never mutated)
    flip: bool = True,
    mode: Literal["RGB", "L"] = "RGB",
) -> DataSets:
    """Circles, squares, triangles and crosses drawn with Pillow (500 each, 16x16), made in a cache on first use."""
    if per_class < 2 or size < 8:
        raise PluginError(f"per_class must be at least 2 and size at least 8, got {per_class} and {size}",
                          field="per_class" if per_class < 2 else "size")
    data = image_folder(path=shapes_folder(per_class, size, seed), size=size, mode=mode, crop_scale=crop_scale,
                        flip=flip)
    data.name, data.source = "shapes", f"generated:shapes-v{VERSION} per_class={per_class} size={size} seed={seed}"
    return data
