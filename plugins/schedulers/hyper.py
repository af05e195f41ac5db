"""Schedules of any optimizer hyperparameter: ParameterSchedulers.jl's ``Scheduler(rule; field = schedule)``.

``{name: hyperparams, schedules: {lr: cosine, momentum: {name: linear, end_factor: 0.5}}}`` gives each
named hyperparameter its own schedule, relative to the value the optimizer was built with (retort's
convention: ``momentum`` falls from the recipe's value to half of it). Names are the param-group keys
(``lr``, ``rho``, ``betas``, ``eps``, ``weight_decay``, torch's ``momentum``, ...), Flux's keywords
(``eta``, ``lambda``, ``beta``, ``epsilon``), ``momentum`` for a Flux rule's ``rho``, and ``beta1`` /
``beta2`` for one entry of ``betas`` (``betas`` scales both). In a chain, as Optimisers.jl's ``adjust!``,
a name reaches every rule that has it, each relative to its own value (``weight_decay`` of a
``weight_decay`` link and of the main rule; ``omega`` of a ``clip_norm``), except ``lr``: the main rule's.
"""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from retort.plugins import PluginError, register
from retort.plugins.schedulers.combinators import Values
from retort.plugins.schedulers.formulas import ORIGIN

_FLUX_NAMES = {"eta": "lr", "lambda": "weight_decay", "decay": "weight_decay", "beta": "betas", "epsilon": "eps"}
_ENTRIES = {"beta1": ("betas", 0), "beta2": ("betas", 1)}


def _groups(optimizer: Optimizer, field: str) -> list[list[dict[str, Any]]]:
    """The param groups holding ``field``: one list per rule of a chain that has it."""
    find = getattr(optimizer, "groups_with", None)
    if find is not None:
        return find(field)
    groups = optimizer.param_groups
    return [groups] if groups and field in groups[0] else []


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choices(optimizer: Optimizer) -> list[str]:
    keys: list[str] = []
    for group_list in [optimizer.param_groups, *(r.param_groups for r in getattr(optimizer, "rules", []))]:
        for key, value in group_list[0].items():
            if key not in keys and not key.startswith("initial_") and (
                    _numeric(value) or (isinstance(value, (tuple, list)) and all(map(_numeric, value)))):
                keys.append(key)
    if "betas" in keys:
        keys += ["beta1", "beta2"]
    return keys


def _targets(optimizer: Optimizer, key: str) -> list[tuple[list[dict[str, Any]], str, int | None]]:
    """(groups, field, index in a pair or None) for hyperparameter ``key``."""
    field, index = _ENTRIES.get(key, (_FLUX_NAMES.get(key, key), None))
    if field == "momentum" and not _groups(optimizer, "momentum"):
        field = "rho"  # Flux's Momentum and Nesterov call it rho
    out: list[tuple[list[dict[str, Any]], str, int | None]] = []
    for groups in _groups(optimizer, field):
        value = groups[0][field]
        pair = isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_numeric, value))
        if not (_numeric(value) or pair) or (index is not None and not pair):
            continue
        out += [(groups, field, 0), (groups, field, 1)] if pair and index is None else [(groups, field, index)]
    if not out:
        raise PluginError(f"scheduler 'hyperparams': the optimizer has no numeric hyperparameter {key!r}; "
                          f"valid choices: {', '.join(_choices(optimizer))}", field=f"schedules.{key}")
    return out


class _Hyperparams(LRScheduler):
    """Sets each target hyperparameter from its schedule's values at every step."""

    def __init__(self, optimizer: Optimizer, targets: list[tuple[list[dict[str, Any]], str, int | None, Values]]):
        self._targets = targets
        super().__init__(optimizer)

    def step(self) -> None:  # type: ignore[override]
        self.last_epoch += 1
        for groups, field, index, values in self._targets:
            for group, value in zip(groups, values(self.last_epoch)):
                if index is None:
                    group[field] = value
                else:
                    pair = list(group[field])
                    pair[index] = value
                    group[field] = tuple(pair)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_targets")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)


@register("scheduler", "hyperparams", origin=ORIGIN)
def hyperparams(optimizer: Optimizer, *, schedules: dict[str, Any] | None = None,
                total: int | None = None) -> LRScheduler:
    """Scheduler: a schedule per hyperparameter (lr, momentum, betas, beta1, weight_decay, ...), × its value."""
    if not schedules or not isinstance(schedules, dict):
        raise PluginError("scheduler 'hyperparams' needs schedules, a mapping of hyperparameter names to "
                          "schedule specs ({momentum: {name: linear, end_factor: 0.5}})", field="schedules")
    targets = []
    for key, spec in schedules.items():
        for groups, field, index in _targets(optimizer, str(key)):
            for group in groups:  # the value the optimizer was built with, kept as torch keeps initial_lr
                group.setdefault(f"initial_{field}", group[field])
            bases = [g[f"initial_{field}"] if index is None else g[f"initial_{field}"][index] for g in groups]
            targets.append((groups, field, index, Values(spec, bases, total, f"schedules.{key}")))
    return _Hyperparams(optimizer, targets)
