"""Samplers and pruners by name, built from the recipe's sweep section."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

from retort.plugins.errors import RecipeError
from retort.recipes.sweep.space import encode, space_of


def grid_of(base: Any) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for path, (p, kind) in space_of(base).items():
        if kind == "choices":
            grid[path] = [encode(c) for c in p.choices]
        elif kind == "int":
            grid[path] = list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
        else:
            n = math.floor((p.high - p.low) / p.step + 1e-9)
            grid[path] = [p.low + i * p.step for i in range(n + 1)]
    return grid


def make_sampler(base: Any, seed: int) -> Any:
    """The recipe's sampler by name, with ``sweep.sampler_args``; bad arguments are :class:`RecipeError`."""
    import importlib.util

    import optuna

    sweep_spec = base.sweep
    name, args = sweep_spec["sampler"], dict(sweep_spec["sampler_args"])
    S = optuna.samplers
    if name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise RecipeError("the cmaes sampler needs the Python package 'cmaes', which is not installed "
                          "(pip install cmaes); valid choices without it: tpe, random, gp, qmc, grid",
                          field="sweep.sampler", source=base.source)
    factories: dict[str, Any] = {
        "tpe": S.TPESampler, "random": S.RandomSampler, "gp": S.GPSampler, "cmaes": S.CmaEsSampler,
        "qmc": lambda **kw: S.QMCSampler(**{"scramble": True, **kw}),
        "grid": lambda **kw: _grid_sampler(grid_of(base), **kw),
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return factories[name](seed=seed, **args)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"the {name} sampler does not take these arguments: {exc}", field="sweep.sampler_args",
                          source=base.source) from None


def _max_epochs(base: Any) -> int:
    space = space_of(base)
    if "trainer.max_epochs" in space:
        p, kind = space["trainer.max_epochs"]
        return int(max(p.choices) if kind == "choices" else p.high)
    return int(base.trainer["max_epochs"])


def make_pruner(base: Any, name: str | None = None, args: Mapping[str, Any] | None = None) -> Any:
    """The recipe's pruner by name, with ``sweep.pruner_args``. Steps are epochs trained (1-based, over a
    trial's seeds one after another: :mod:`.pruning`); hyperband's resources run from 1 to the recipe's
    max_epochs times ``sweep.seeds``. ``patient`` wraps ``pruner_args.wrapped`` (median)."""
    import optuna

    from retort.recipes.schema import PRUNERS

    name = name or base.sweep["pruner"]
    args = dict(base.sweep["pruner_args"] if args is None else args)
    P = optuna.pruners
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name == "patient":
                wrapped = args.pop("wrapped", "median")
                if wrapped not in PRUNERS or wrapped == "patient":
                    raise ValueError(f"wrapped must be one of {', '.join(p for p in PRUNERS if p != 'patient')}, "
                                     f"got {wrapped!r}")
                patience, min_delta = args.pop("patience", 3), args.pop("min_delta", 0.0)
                inner = None if wrapped == "none" else make_pruner(base, wrapped, args)
                return P.PatientPruner(inner, patience=patience, min_delta=min_delta)
            factories: dict[str, Any] = {
                "none": P.NopPruner, "median": P.MedianPruner,
                "percentile": lambda **kw: P.PercentilePruner(**{"percentile": 25.0, **kw}),
                "successive_halving": P.SuccessiveHalvingPruner,
                "hyperband": lambda **kw: P.HyperbandPruner(
                    **{"min_resource": 1, "max_resource": _max_epochs(base) * base.sweep["seeds"],
                       "reduction_factor": 3, **kw}),
            }
            return factories[name](**args)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"the {name} pruner does not take these arguments: {exc}", field="sweep.pruner_args",
                          source=base.source) from None


def _grid_sampler_class() -> type:
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler, less its ``study.stop()`` (which only works inside ``optimize``): the
        worker loop asks :meth:`is_exhausted` itself."""

        def after_trial(self, *args: Any, **kwargs: Any) -> None:
            pass

    return GridSampler


def _grid_sampler(grid: dict[str, list[Any]], **kwargs: Any) -> Any:
    return _grid_sampler_class()(grid, **kwargs)
