"""A recipe's own code: ``imports: [models.py, mylab.data]`` loads local files and importable modules whose
plugin registrations the recipe uses.

This is the user's own code, run as ``python train.py`` would run it: a local file (a path relative to the
recipe file's folder) is executed with its folder first on ``sys.path``, so it may import its neighbours;
a dotted name is imported as ``import mylab.data``. Each file's text and sha256 are kept, so the run's
record holds the exact code it ran (``code/`` artifacts); ``retort rerun`` runs a recorded copy instead of
a missing local file only when told to (:func:`substitute`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import re
import sys
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retort import plugins
from retort.plugins.errors import RecipeError

_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass
class Code:
    """One entry of ``imports``: what it named, what ran, and what it registered."""

    given: str
    kind: str  # "file" or "module"
    path: str | None  # the file that ran (absolute); a module's file where it has one
    sha256: str | None  # of a local file's bytes
    text: str | None  # a local file's text, recorded with the run
    registered: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)


_loaded: dict[str, Code] = {}  # absolute path or module name -> what it registered, once per process
_substitutes: dict[str, Path] = {}  # absolute path of a missing local file -> the recorded copy to run


def is_file(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or "\\" in entry


@contextlib.contextmanager
def substitute(copies: Mapping[str, Path]) -> Iterator[None]:
    """Run ``copies[absolute_path]`` (a recorded copy) where the recipe's local file is missing."""
    _substitutes.update(copies)
    try:
        yield
    finally:
        for key in copies:
            _substitutes.pop(key, None)


def load(entries: Any, base: Path) -> list[Code]:
    """Import every entry (files relative to ``base``); bad entries are :class:`RecipeError` on ``imports.i``."""
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, str) and e.strip() for e in entries):
        raise RecipeError(f"must be a list of local .py files and module names, got {entries!r}", field="imports")
    return [_load_file(e, base, f"imports.{i}") if is_file(e) else _load_module(e, f"imports.{i}")
            for i, e in enumerate(entries)]


def _load_file(given: str, base: Path, where: str) -> Code:
    path = (base / Path(given).expanduser()).resolve()
    source = _substitutes.get(str(path), path)
    if not source.is_file():
        what = "is a directory, not a file" if source.is_dir() else "does not exist"
        raise RecipeError(f"{path} {what} (paths are relative to the recipe file's folder, {base})", field=where)
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    key = f"{path}@{digest}"
    if key in _loaded:
        return _loaded[key]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{path} is not UTF-8 Python source", field=where) from None
    name = path.stem
    taken = sys.modules.get(name)
    if not _MODULE.match(name) or (taken is not None and getattr(taken, "__file__", None) != str(path)):
        safe = re.sub(r"\W", "_", name)
        name = f"retort_imports_{safe}_{digest[:8]}"  # never shadow a module already loaded
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # as `python train.py` puts the script's folder first
    spec = importlib.util.spec_from_loader(name, loader=None, origin=str(path))
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    sys.modules[name] = module
    try:
        code = compile(text, str(source), "exec")
        with plugins.recording(given) as made:
            exec(code, module.__dict__)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise RecipeError(_where(exc, str(source)), field=where) from None
    loaded = Code(given, "file", str(path), digest, text, [(e.kind, e.name) for e in made])
    _loaded[key] = loaded
    return loaded


def _load_module(given: str, where: str) -> Code:
    if not _MODULE.match(given):
        raise RecipeError(f"{given!r} is neither a local .py file nor a module name (like mylab.data)", field=where)
    if given in _loaded:
        return _loaded[given]
    try:
        with plugins.recording(given) as made:
            module = importlib.import_module(given)
    except ModuleNotFoundError as exc:
        if exc.name and given.startswith(exc.name):
            raise RecipeError(f"no module named {exc.name!r} on the Python path (a local file needs its .py "
                              "suffix)", field=where) from None
        raise RecipeError(_where(exc, None), field=where) from None
    except Exception as exc:
        raise RecipeError(_where(exc, None), field=where) from None
    registered = [(e.kind, e.name) for e in made]
    if not registered:  # imported before (by the user's own script): find its registrations by their module
        registered = [(e.kind, e.name) for kind in plugins.KINDS for e in plugins.entries(kind)
                      if getattr(e.factory, "__module__", None) == given]
    loaded = Code(given, "module", getattr(module, "__file__", None), None, None, registered)
    _loaded[given] = loaded
    return loaded


def _where(exc: BaseException, path: str | None) -> str:
    """``file, line N: SyntaxError: ...``: the place in the user's code where it broke."""
    if isinstance(exc, SyntaxError):
        return f"{exc.filename}, line {exc.lineno}: SyntaxError: {exc.msg}"
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if f.filename == path] if path else []
    frame = (mine or frames or [None])[-1]
    place = f"{frame.filename}, line {frame.lineno}: " if frame is not None else ""
    return f"{place}{type(exc).__name__}: {exc}"


def check_used(code: list[Code], used: set[tuple[str, str]]) -> None:
    """Each entry must register a plugin the recipe uses (else it is a mistake: a wrong file or name)."""
    for i, c in enumerate(code):
        if not any(r in used for r in c.registered):
            made = ", ".join(f"{k} {n!r}" for k, n in c.registered) or "nothing"
            raise RecipeError(f"{c.given} registers no plugin this recipe uses (it registers {made}); name its "
                              f"plugins in the recipe, or drop it from imports", field=f"imports.{i}")
