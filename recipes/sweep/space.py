"""The search space: what a trial samples, and the recipe it runs."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
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


_SECTION_KINDS = {"data": "data", "model": "model", "loss": "loss", "optimizer": "optimizer",
                  "scheduler": "scheduler", "callbacks": "callback", "metrics": "metric"}


def _set(raw: dict[str, Any], path: str, value: Any) -> None:
    """``raw[a][b]... = value`` by dotted path, as ``-s a.b=value`` would: a plugin given by name becomes
    ``{name: ...}``, and an alias of the field set (``eta`` for ``lr``) is dropped."""
    from retort import plugins

    parts = path.split(".")
    node: Any = raw
    for part in parts[:-1]:
        key: Any = int(part) if isinstance(node, list) else part
        child = node[key] if isinstance(node, list) else node.get(part)
        if child is None:
            child = {}
        elif isinstance(child, str):
            child = {"name": child}
        node[key] = child
        node = child
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
        return
    node[last] = value
    kind = _SECTION_KINDS.get(parts[0])
    if kind and len(parts) >= 2 and isinstance(node.get("name"), str) and last != "name":
        try:
            aliases = plugins.get(kind, node["name"]).aliases
        except plugins.PluginError:
            return
        canon = aliases.get(last, last)
        for other in [k for k in node if k != last and aliases.get(k, k) == canon]:
            del node[other]


def trial_recipe(raw: Mapping[str, Any], values: Mapping[str, Any], source: str | None = None) -> Any:
    """The recipe a trial runs: ``raw`` (the recipe as written) with ``values`` set by dotted path, validated."""
    from retort.recipes.schema import resolve

    trial_raw = copy.deepcopy(dict(raw))
    for path in sorted(values, key=lambda p: (not p.endswith(".name"), p)):  # a plugin's name before its fields
        _set(trial_raw, path, copy.deepcopy(values[path]))
    return resolve(trial_raw, source=source, default_name=str(raw.get("name") or "recipe"))


def check_space(base: Any, raw: Mapping[str, Any]) -> None:
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
                trial_recipe(raw, applied({path: value}, base), base.source)
            except RecipeError as exc:
                what = "choice" if kind == "choices" else "value"
                raise RecipeError(f"the {what} {value!r} makes an invalid recipe: {exc.message}"
                                  + (f" (at {exc.field})" if exc.field and exc.field != path else ""),
                                  field=f"sweep.space.{path}", source=base.source) from None
