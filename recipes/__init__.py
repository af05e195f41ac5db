"""Recipes: load a YAML recipe (a file or a shipped name), apply ``--set`` overrides, validate, run.

Config flows one way: file -> overrides -> validation (:mod:`recipes.schema`) -> build and run
(:mod:`recipes.runner`, the loop in :mod:`recipes.module`) -> record (:mod:`tracking`)::

    >>> import recipes
    >>> r = recipes.load("digits-mlp", overrides=["optimizer.lr=0.01"])
    >>> r.optimizer["lr"]
    0.01
    >>> result = recipes.run(r)  # trains, tests, records one MLflow run   # doctest: +SKIP

:func:`load` is the one way a recipe is made from a file and overrides: the CLI, the Python API and every
sweep trial go through it (a trial is exactly ``retort run RECIPE -s <your -s> -s <sampled path=value>...``).
An override sets a field however the file spelled it: with ``optimizer: {name: adam, eta: 0.01}``,
``-s optimizer.lr=0.1`` replaces ``eta`` (a plugin field's aliases name one field); two aliases of one field
in the file itself stay an error.

Importing this package is cheap; torch, Lightning and MLflow load only when a recipe is built or run.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retort.plugins.errors import RecipeError

if TYPE_CHECKING:
    from retort.recipes.runner import RunResult
    from retort.recipes.schema import Recipe

SHIPPED = Path(__file__).parent / "shipped"

Override = str | tuple[str, Any]  # "dotted.path=yaml value", or (dotted path, a value already parsed)


@dataclass(frozen=True)
class Draft:
    """A recipe as written, read once and not yet validated: what :func:`load` builds from."""

    raw: Mapping[str, Any]
    source: str | None
    name: str  # the name when the recipe gives none (its file's stem)
    base: str | None = None  # the folder relative paths resolve against (default: the recipe file's)


def shipped() -> list[tuple[str, str]]:
    """``(name, description)`` of every shipped recipe, sorted by name."""
    from retort.recipes.yamlio import load_file

    out = []
    for path in sorted(SHIPPED.glob("*.yaml")):
        description = str((load_file(path) or {}).get("description") or "").strip()
        out.append((path.stem, description.splitlines()[0] if description else ""))
    return out


def find(path_or_name: str | Path) -> Path:
    """A recipe file: an existing path, else a shipped recipe's name."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    candidate = SHIPPED / f"{path_or_name}.yaml"
    if candidate.is_file() and path.parent == Path("."):
        return candidate
    names = [p.stem for p in sorted(SHIPPED.glob("*.yaml"))]
    from retort.plugins import did_you_mean

    text = str(path_or_name)
    raise RecipeError(f"no recipe file or shipped recipe {text!r}{did_you_mean(text, names)}; "
                      f"shipped recipes: {', '.join(names)}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optimizer.lr=0.01"`` -> ``(["optimizer", "lr"], 0.01)``; the value is read as YAML."""
    from retort.recipes.yamlio import loads

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"an override is dotted.path=value, got {text!r}", field="--set")
    try:
        parsed = loads(value) if value.strip() else None
    except RecipeError as exc:
        raise RecipeError(f"cannot read the value of {key!r}: {exc.message}", field="--set") from None
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: Sequence[Override]) -> dict[str, Any]:
    """Set each override in ``raw`` (in place): ``"dotted.path=value"`` (the value read as YAML) or
    ``(dotted path, value)``. A plugin given by name becomes a mapping, and a plugin field set by an override
    replaces its aliases (``lr`` replaces ``eta``)."""
    from retort.recipes.schema import SECTIONS, default_plugin

    for item in overrides:
        if isinstance(item, str):
            path, value = parse_override(item)
        else:
            path, value = item[0].split("."), copy.deepcopy(item[1])
        if path[0] not in SECTIONS:
            from retort.plugins import did_you_mean

            raise RecipeError(f"unknown override path {'.'.join(path)!r}{did_you_mean(path[0], SECTIONS)}; "
                              f"top-level fields: {', '.join(SECTIONS)}", field="--set")
        node: Any = raw
        for i, part in enumerate(path[:-1]):
            where = ".".join(path[: i + 1])
            if isinstance(node, list):
                node = node[_index(part, node, where)]
                continue
            child = node.get(part)
            if child is None and path[i + 1].isdigit():
                child = []
            elif child is None:  # a plugin section left out gets its default plugin, named
                child = node[part] = {"name": default_plugin(part)} if i == 0 and default_plugin(part) else {}
            elif isinstance(child, str) and i + 1 == len(path) - 1:
                child = node[part] = {"name": child}  # `loss: mse` + `loss.agg=sum`
            elif not isinstance(child, (dict, list)):
                raise RecipeError(f"{where!r} is {child!r}, not a section; cannot set {'.'.join(path)!r}",
                                  field="--set")
            node = child
        last = path[-1]
        if isinstance(node, list):
            node[_index(last, node, ".".join(path))] = value
        else:
            node[last] = value
            _drop_aliases(node, path)
    return raw


_PLUGIN_SECTIONS = {"data": "data", "model": "model", "loss": "loss", "optimizer": "optimizer",
                    "scheduler": "scheduler", "callbacks": "callback", "metrics": "metric"}


def _drop_aliases(node: dict[str, Any], path: list[str]) -> None:
    """After ``node[path[-1]] = value`` in a plugin's mapping: remove the other spellings of that field."""
    from retort import plugins
    from retort.recipes.schema import default_plugin

    kind = _PLUGIN_SECTIONS.get(path[0])
    in_list = path[0] in ("callbacks", "metrics")
    if kind is None or path[-1] == "name" or len(path) != (3 if in_list else 2):
        return
    name = node.get("name") or (None if in_list else default_plugin(path[0]))
    if not isinstance(name, str):
        return
    try:
        aliases = plugins.get(kind, name).aliases
    except plugins.PluginError:
        return  # an unknown plugin: validation names it
    canon = aliases.get(path[-1], path[-1])
    for other in [k for k in node if k != path[-1] and aliases.get(k, k) == canon]:
        del node[other]


def _index(part: str, node: list[Any], where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"{where!r}: list index {part!r} out of range (the list has {len(node)} items)",
                          field="--set")
    return int(part)


def read(path_or_name: str | Path) -> Draft:
    """The recipe file (or shipped recipe) as written, checked to be a mapping; :func:`load` validates it."""
    from retort.recipes.yamlio import load_file

    path = find(path_or_name)
    raw = load_file(path)
    if raw is None:  # an empty file is more likely a mistake than a wish for every default
        raise RecipeError("the recipe file is empty; write {} to train every default", source=str(path))
    if not isinstance(raw, dict):
        raise RecipeError(f"a recipe is a mapping of sections, got {type(raw).__name__}", source=str(path))
    return Draft(raw, str(path), path.stem, str(Path.cwd()) if path.parent == SHIPPED else None)


def load(recipe: str | Path | Draft | Recipe, overrides: Sequence[Override] | None = None) -> Recipe:
    """A validated :class:`~recipes.schema.Recipe` from a file or shipped name (or a :class:`Draft` read
    before, or a Recipe), with ``overrides`` applied in order."""
    from retort.recipes.schema import Recipe, resolve

    if isinstance(recipe, Recipe):
        recipe = Draft(recipe.to_dict(), recipe.source, recipe.name, recipe.base)
    elif not isinstance(recipe, Draft):
        recipe = read(recipe)
    overrides = list(overrides or [])
    raw = copy.deepcopy(dict(recipe.raw))
    apply_overrides(raw, overrides)
    out = resolve(raw, source=recipe.source, default_name=recipe.name, base=recipe.base)
    touched = [".".join(parse_override(o)[0]) if isinstance(o, str) else o[0] for o in overrides]
    for key in out.paths:  # a path typed on the command line is the shell's
        if any(key == t or key.startswith(f"{t}.") for t in touched):
            given = out.flat()[key]
            out.paths[key] = str((Path.cwd() / Path(given).expanduser()).resolve())
    return out


def run(recipe: Recipe, **kwargs: Any) -> RunResult:
    """Train, test and record ``recipe``; see :func:`recipes.runner.run`."""
    from retort.recipes.runner import run as _run

    return _run(recipe, **kwargs)


__all__ = ["Draft", "RecipeError", "apply_overrides", "find", "load", "parse_override", "read", "run", "shipped"]
