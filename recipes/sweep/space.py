"""The search space: what a trial samples, and the recipe it runs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from retort.plugins.errors import RecipeError


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def encode(choice: Any) -> Any:
    """Optuna's categorical values are scalars; a list or mapping choice is searched as its JSON text."""
    return choice if _scalar(choice) else json.dumps(choice, sort_keys=True)


def space_of(base: Any) -> dict[str, tuple[Any, str]]:
    """``path -> (SpaceParam, kind)`` of the base recipe's sweep space."""
    from retort.recipes.schema import SpaceParam

    flat = base.flat()
    out = {}
    for path, spec in base.sweep["space"].items():
        param = SpaceParam(**spec)
        out[path] = (param, param.kind(flat.get(path)))
    return out


def suggest(trial: Any, base: Any) -> dict[str, Any]:
    """Sample every field of the space on an Optuna trial: ``path -> the recipe value``."""
    values: dict[str, Any] = {}
    for path, (p, kind) in space_of(base).items():
        if kind == "choices":
            encoded = [encode(c) for c in p.choices]
            values[path] = p.choices[encoded.index(trial.suggest_categorical(path, encoded))]
        elif kind == "int":
            values[path] = trial.suggest_int(path, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[path] = trial.suggest_float(path, float(p.low), float(p.high), step=p.step, log=p.log)
    return values


def decode(params: Mapping[str, Any], base: Any) -> dict[str, Any]:
    """Optuna's params of a trial -> recipe values (JSON text of list choices read back)."""
    space = space_of(base)
    out = {}
    for path, value in params.items():
        p, kind = space.get(path, (None, None))
        if kind == "choices":
            encoded = [encode(c) for c in p.choices]
            value = p.choices[encoded.index(value)] if value in encoded else value
        out[path] = value
    return out


def applied(values: Mapping[str, Any], base: Any) -> dict[str, Any]:
    """The sampled values with the sweep's lr/batch-size rule applied: what the trial's recipe gets."""
    out = dict(values)
    scaling = base.sweep["lr_scaling"]
    if scaling is not None and scaling["batch_size"] in values:
        lr = float(values.get(scaling["lr"], base.flat()[scaling["lr"]]))
        ratio = float(values[scaling["batch_size"]]) / scaling["reference"]
        out[scaling["lr"]] = lr * (ratio if scaling["rule"] == "linear" else math.sqrt(ratio))
    return out


def trial_recipe(draft: Any, overrides: Sequence[Any], values: Mapping[str, Any]) -> Any:
    """The recipe a trial runs: exactly ``retort run RECIPE -s <overrides> -s <path=value>...`` for the sampled
    ``values`` (a plugin's name before its fields), through :func:`recipes.load`."""
    from retort import recipes

    ordered = sorted(values, key=lambda p: (not p.endswith(".name"), p))
    return recipes.load(draft, [*overrides, *((path, values[path]) for path in ordered)])


def canonical(path: str, base: Any) -> str:
    """``optimizer.eta`` -> ``optimizer.lr``: a plugin field's path by its canonical name in ``base``."""
    from retort import plugins
    from retort.recipes import _PLUGIN_SECTIONS

    parts = path.split(".")
    kind = _PLUGIN_SECTIONS.get(parts[0])
    try:
        if kind in ("callback", "metric") and len(parts) == 3 and parts[1].isdigit():
            name = getattr(base, parts[0])[int(parts[1])]["name"]
        elif kind is not None and len(parts) == 2 and getattr(base, parts[0]) is not None:
            name = getattr(base, parts[0])["name"]
        else:
            return path
        aliases = plugins.get(kind, name).aliases
    except (IndexError, plugins.PluginError):
        return path
    return ".".join([*parts[:-1], aliases.get(parts[-1], parts[-1])])


def check_space(base: Any, draft: Any, overrides: Sequence[Any]) -> None:
    """Every value the space can sample makes a valid recipe (each field at its ends and choices, the
    others as in the recipe); raises :class:`RecipeError` naming the field and the value."""
    flat = base.flat()
    scaling = base.sweep["lr_scaling"]
    if scaling is not None and (isinstance(flat[scaling["lr"]], bool)
                                or not isinstance(flat[scaling["lr"]], (int, float))):
        raise RecipeError(f"{scaling['lr']!r} is {flat[scaling['lr']]!r}, not a learning rate",
                          field="sweep.lr_scaling.lr", source=base.source)
    for path, (p, kind) in space_of(base).items():
        if kind == "choices":
            candidates = list(p.choices)
        elif kind == "int":
            candidates = [int(p.low), int(p.low) + (int(p.high) - int(p.low)) // int(p.step or 1) * int(p.step or 1)]
        else:
            candidates = [float(p.low), float(p.high)]
        for value in candidates:
            try:
                trial_recipe(draft, overrides, applied({path: value}, base))
            except RecipeError as exc:
                what = "choice" if kind == "choices" else "value"
                raise RecipeError(f"the {what} {value!r} makes an invalid recipe: {exc.message}"
                                  + (f" (at {exc.field})" if exc.field and exc.field != path else ""),
                                  field=f"sweep.space.{path}", source=base.source) from None
