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
import math
import os
import sys
import sysconfig
import tempfile
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from retort.plugins import PluginError, register
from retort.plugins.data.datasets import DataSets
from retort.plugins.data.shapes import cache_dir
from retort.plugins.preprocess import Preprocess

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
    chunks = []
    for f in _files(path, field):
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


class TextPreprocess(Preprocess):
    """Text to the byte-level model: what it says about a text is how well it predicts it, so a prediction is
    one row per text: ``bytes`` (the bytes predicted: all but the first), ``loss`` (the mean next-byte
    cross-entropy in nats, the run's ``test/loss``), ``bits_per_byte`` (the same in bits), ``perplexity`` and
    ``accuracy`` (the share of next bytes that are the model's most likely byte).

    Each text is scored as the run was evaluated, in blocks of ``block_size`` bytes from its start, each byte
    predicted from the bytes before it in its block; the bytes after the last whole block are scored once
    each, from the ``block_size`` bytes before them. Raw inputs: a ``pandas.DataFrame`` with ``text`` (a
    string, as UTF-8 bytes; ``read`` keeps a file's bytes exactly) and optionally ``path``, which comes back as
    the first column. A text of fewer than ``block_size + 1`` bytes is refused, as in training."""

    def __init__(self, block_size: int, example_text: str):
        self.block_size, self.example_text = block_size, example_text

    def example(self) -> Any:
        import pandas as pd

        half = len(self.example_text) // 2
        return pd.DataFrame({"path": [None, "example.txt"],
                             "text": [self.example_text, self.example_text[half:] + self.example_text[:half]]})

    def read(self, path: str) -> Any:
        """A text file, or every .txt and .md file in a folder (one row each), with its path."""
        import pandas as pd

        files = _files(path, "path")
        texts = []
        for f in files:
            with open(f, "rb") as fh:
                data = fh.read()
            self._check(f, len(data))
            texts.append(data.decode("utf-8", errors="surrogateescape"))  # encoded back to the same bytes
        return pd.DataFrame({"path": files, "text": texts})

    def _check(self, where: str, n: int) -> None:
        if n < self.block_size + 1:
            raise PluginError(f"{where} has {n} bytes; the model predicts from blocks of block_size "
                              f"{self.block_size} and needs {self.block_size + 1} (a byte more for the last target)")

    def _bytes(self, inputs: Any) -> list[np.ndarray]:
        if not hasattr(inputs, "columns") or "text" not in inputs.columns:
            raise PluginError("text inputs need a column 'text'")
        paths = inputs["path"].tolist() if "path" in inputs.columns else [None] * len(inputs)
        out = []
        for i, (text, path) in enumerate(zip(inputs["text"].tolist(), paths)):
            raw = text if isinstance(text, bytes) else str(text).encode("utf-8", errors="surrogateescape")
            self._check(path if isinstance(path, str) else f"the text of input row {i}", len(raw))
            out.append(np.frombuffer(raw, dtype=np.uint8))
        return out

    def starts(self, n_bytes: int) -> tuple[np.ndarray, int]:
        """Where a text's evaluation blocks start, and how many first positions of the last block the block
        before it scored already (it covers the bytes after the last whole block)."""
        b = self.block_size
        n = (n_bytes - 1) // b
        rest = n_bytes - 1 - n * b
        starts = np.arange(0, n * b, b)
        return (np.append(starts, n_bytes - 1 - b), b - rest) if rest else (starts, 0)

    def cut(self, data: np.ndarray, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks at ``starts`` (token ids) and their next bytes."""
        chunk = torch.from_numpy(data[starts[:, None] + np.arange(self.block_size + 1)].astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]

    def transform(self, inputs: Any) -> torch.Tensor:
        """Every text's evaluation blocks, one after the other (what the model reads)."""
        return torch.cat([self.cut(d, self.starts(len(d))[0])[0] for d in self._bytes(inputs)])

    def predict(self, net: torch.nn.Module, inputs: Any, batch_size: int = 1024) -> Any:
        import pandas as pd

        first = next(net.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        rows = []
        with torch.no_grad():
            for data in self._bytes(inputs):
                starts, skip = self.starts(len(data))
                nll, hits = [], []
                step = max(1, min(batch_size, 2**16 // self.block_size))  # 65,536 positions' logits at most
                for i in range(0, len(starts), step):  # a long text is never in memory as blocks at once
                    x, y = self.cut(data, starts[i:i + step])
                    out = net(x.to(device)).float().cpu()
                    logp = out.log_softmax(-1) if self.outputs == "logits" else out.clamp_min(1e-30).log()
                    nll.append(-logp.gather(-1, y.unsqueeze(-1)).squeeze(-1))
                    hits.append(out.argmax(-1) == y)
                nll_all, hit_all = torch.cat(nll), torch.cat(hits)
                if skip:  # the last block's first positions were scored by the block before
                    keep = torch.ones_like(hit_all)
                    keep[-1, :skip] = False
                    nll_all, hit_all = nll_all[keep], hit_all[keep]
                loss = float(nll_all.double().mean())
                rows.append({"bytes": int(nll_all.numel()), "loss": loss, "bits_per_byte": loss / math.log(2),
                             "perplexity": math.exp(loss), "accuracy": float(hit_all.double().mean())})
        frame = pd.DataFrame(rows, columns=["bytes", "loss", "bits_per_byte", "perplexity", "accuracy"])
        if hasattr(inputs, "columns") and "path" in inputs.columns:
            frame.insert(0, "path", inputs["path"].tolist())
        return frame


def _files(path: str, field: str) -> list[str]:
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(full):
        files = sorted(os.path.join(r, f) for r, _, fs in os.walk(full) for f in fs if f.endswith((".txt", ".md")))
        if not files:
            raise PluginError(f"text folder {full} holds no .txt or .md files", field=field)
        return files
    if os.path.isfile(full):
        return [full]
    raise PluginError(f"text file {full} does not exist", field=field)


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
    opening = blocks["train"].data[:2 * block_size + 1].tobytes()
    return DataSets(blocks["train"], blocks.get("val"), blocks.get("test"), task="multiclass", n_outputs=VOCAB,
                    name=os.path.basename(os.path.abspath(path).rstrip(os.sep)), source=os.path.abspath(path),
                    digest=_digest(*(b.data for b in blocks.values())),
                    preprocess=TextPreprocess(block_size, opening.decode("utf-8", errors="replace")))


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
