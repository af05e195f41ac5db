"""Recipes: load a YAML recipe (a file or a shipped name), apply ``--set`` overrides, validate, run.

Config flows one way: file -> overrides -> validation (:mod:`recipes.schema`) -> build and run
(:mod:`recipes.runner`, the loop in :mod:`recipes.module`) -> record (:mod:`tracking`)::

    >>> import recipes
    >>> r = recipes.load("digits-mlp", overrides=["optimizer.lr=0.01"])
    >>> r.optimizer["lr"]
    0.01
    >>> result = recipes.run(r)  # trains, tests, records one MLflow run   # doctest: +SKIP

Importing this package is cheap; torch, Lightning and MLflow load only when a recipe is built or run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from retort.plugins.errors import RecipeError

if TYPE_CHECKING:
    from retort.recipes.runner import RunResult
    from retort.recipes.schema import Recipe

SHIPPED = Path(__file__).parent / "shipped"


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


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``dotted.path=value`` in ``raw`` (in place); a plugin given by name becomes a mapping."""
    from retort.recipes.schema import SECTIONS

    for text in overrides:
        path, value = parse_override(text)
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
            elif child is None:
                child = node[part] = {}
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
    return raw


def _index(part: str, node: list[Any], where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"{where!r}: list index {part!r} out of range (the list has {len(node)} items)",
                          field="--set")
    return int(part)


def load(path_or_name: str | Path, overrides: list[str] | None = None) -> Recipe:
    """A validated :class:`~recipes.schema.Recipe` from a file or shipped name, with overrides applied."""
    from retort.recipes.schema import resolve
    from retort.recipes.yamlio import load_file

    path = find(path_or_name)
    raw = load_file(path)
    if raw is None:  # an empty file is more likely a mistake than a wish for every default
        raise RecipeError("the recipe file is empty; write {} to train every default", source=str(path))
    if not isinstance(raw, dict):
        raise RecipeError(f"a recipe is a mapping of sections, got {type(raw).__name__}", source=str(path))
    overrides = list(overrides or [])
    apply_overrides(raw, overrides)
    recipe = resolve(raw, source=str(path), default_name=path.stem,
                     base=str(Path.cwd()) if path.parent == SHIPPED else None)
    touched = [".".join(parse_override(text)[0]) for text in overrides]
    for key in recipe.paths:  # a path typed on the command line is the shell's
        if any(key == t or key.startswith(f"{t}.") for t in touched):
            given = recipe.flat()[key]
            recipe.paths[key] = str((Path.cwd() / Path(given).expanduser()).resolve())
    return recipe


def run(recipe: Recipe, **kwargs: Any) -> RunResult:
    """Train, test and record ``recipe``; see :func:`recipes.runner.run`."""
    from retort.recipes.runner import run as _run

    return _run(recipe, **kwargs)


__all__ = ["RecipeError", "apply_overrides", "find", "load", "parse_override", "run", "shipped"]
