"""Byte-level language modelling: blocks of text bytes, each with the same bytes shifted by one as targets.

A sample is ``x``, ``block_size`` bytes as token ids (0 to 255), and ``y``, the byte after each of them; the
model predicts every next byte of the block at once (a causal model: logits (B, T, 256)). Blocks are cut at
multiples of ``block_size``; a training sample starts at a random offset within its block (drawn from the
generator retort seeds per sample), evaluation samples at the block's start. ``python_docs`` is a corpus every
machine has offline: the docstrings of Python's standard library, parsed (never imported) from its sources and
split by module, so that no module's text is in two splits.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
import tempfile

import numpy as np
import torch
from torch.utils.data import Dataset

from retort.plugins import PluginError, register
from retort.plugins.data.datasets import DataSets
from retort.plugins.data.shapes import cache_dir

VOCAB = 256


class ByteBlocks(Dataset):
    """Blocks of ``block_size`` bytes and their next bytes; ``jitter`` shifts training samples within a block."""

    def __init__(self, data: np.ndarray, block_size: int, jitter: bool = True):
        self.data, self.block_size, self.jitter = data, block_size, jitter
        self.n = (len(data) - 1) // block_size

    def __len__(self) -> int:
        return self.n

    def _at(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = torch.from_numpy(self.data[start:start + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._at(i * self.block_size)

    def sample(self, i: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.jitter:
            return self[i]
        room = len(self.data) - 1 - self.block_size - i * self.block_size  # the last start that fits
        shift = int(torch.randint(0, min(self.block_size, room + 1), (), generator=generator))
        return self._at(i * self.block_size + shift)


def _read(path: str, field: str) -> np.ndarray:
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(full):
        files = sorted(os.path.join(r, f) for r, _, fs in os.walk(full) for f in fs if f.endswith((".txt", ".md")))
        if not files:
            raise PluginError(f"text folder {full} holds no .txt or .md files", field=field)
    elif os.path.isfile(full):
        files = [full]
    else:
        raise PluginError(f"text file {full} does not exist", field=field)
    chunks = []
    for f in files:
        with open(f, "rb") as fh:
            chunks.append(fh.read())
    return np.frombuffer(b"\n".join(chunks), dtype=np.uint8)


def _blocks(data: np.ndarray, block_size: int, where: str, field: str, jitter: bool) -> ByteBlocks:
    if len(data) < block_size + 1:
        raise PluginError(f"{where} has {len(data)} bytes; one block of block_size {block_size} needs "
                          f"{block_size + 1} (a byte more for the last target)", field=field)
    return ByteBlocks(data, block_size, jitter)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(len(a).to_bytes(8, "little"))
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@register("data", "text")
def text(*, path: str, block_size: int = 64, val_path: str | None = None, test_path: str | None = None,
         jitter: bool = True) -> DataSets:
    """Byte-level language modelling on a text file or a folder of .txt files, in blocks of 64 bytes."""
    if block_size < 1:
        raise PluginError(f"block_size must be at least 1, got {block_size}", field="block_size")
    parts = {"train": path, "val": val_path, "test": test_path}
    blocks = {}
    for key, where in parts.items():
        if where is not None:
            field = "path" if key == "train" else f"{key}_path"
            data = _read(where, field)
            blocks[key] = _blocks(data, block_size, os.path.abspath(where), "block_size", jitter and key == "train")
    return DataSets(blocks["train"], blocks.get("val"), blocks.get("test"), task="multiclass", n_outputs=VOCAB,
                    name=os.path.basename(os.path.abspath(path).rstrip(os.sep)), source=os.path.abspath(path),
                    digest=_digest(*(b.data for b in blocks.values())))


# --- the standard library's docstrings ---------------------------------------------------------------------

def _module_docs(path: str) -> str:
    """A source file's docstrings (module, classes, functions), in the order they appear."""
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 40:
                docs.append(doc.strip())
    return "\n\n".join(docs)


def _split_of(module: str) -> str:
    """test for 10 % of modules, val for 10 %, train for the rest: by a hash of the name, on every machine."""
    bucket = hashlib.sha256(module.encode()).digest()[0] % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def python_docs_corpus() -> str:
    """The cache folder holding train.txt, val.txt and test.txt of this Python's standard library's docstrings."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    folder = os.path.join(cache_dir(), f"python-docs-v1-py{version}")
    if os.path.isdir(folder):
        return folder
    stdlib = sysconfig.get_paths()["stdlib"]
    texts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "test", "tests", "idle_test", "__pycache__"))
        for f in sorted(files):
            if f.endswith(".py"):
                module = os.path.relpath(os.path.join(root, f), stdlib)[:-3].replace(os.sep, ".")
                doc = _module_docs(os.path.join(root, f))
                if doc:
                    texts[_split_of(module.split(".")[0])].append(doc)
    tmp = tempfile.mkdtemp(prefix=".python-docs-", dir=os.path.dirname(folder))
    for key, docs in texts.items():
        with open(os.path.join(tmp, f"{key}.txt"), "w", encoding="utf-8") as fh:
            fh.write("\n\n".join(docs))
    try:
        os.rename(tmp, folder)
    except OSError:  # a concurrent first use won the rename
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


@register("data", "python_docs")
def python_docs(*, block_size: int = 64, max_train_bytes: int | None = None, jitter: bool = True) -> DataSets:
    """Docstrings of Python's standard library (parsed offline, split by module), byte-level, blocks of 64."""
    folder = python_docs_corpus()
    data = text(path=os.path.join(folder, "train.txt"), block_size=block_size,
                val_path=os.path.join(folder, "val.txt"), test_path=os.path.join(folder, "test.txt"), jitter=jitter)
    if max_train_bytes is not None:
        if max_train_bytes < block_size + 1:
            raise PluginError(f"max_train_bytes must be at least block_size + 1 ({block_size + 1})",
                              field="max_train_bytes")
        data.train = ByteBlocks(data.train.data[:max_train_bytes], block_size, jitter)
        data.digest = _digest(data.train.data, data.val.data, data.test.data)
    data.name, data.source = "python_docs", f"python {sys.version.split()[0]} standard library docstrings"
    return data


def unigram_bits(data: np.ndarray, reference: np.ndarray) -> float:
    """Bits per byte of ``data`` under the byte frequencies of ``reference`` (add-one smoothed): the baseline
    a language model must beat."""
    counts = np.bincount(reference, minlength=VOCAB).astype(np.float64) + 1
    p = counts / counts.sum()
    return float(-np.log2(p[data]).mean())
