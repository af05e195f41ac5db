"""Schedules made of schedules: ParameterSchedulers.jl's Sequence, Loop, Shifted, Shortened, reverse,
symmetric and ComposedSchedule, and retort's warmup.

Sequence, Loop and warmup run real schedulers one after another on the optimizer, restarting each from
the state it had when built. The others need a schedule's value at any step: :class:`Values` runs the
schedule on a stand-in optimizer whose groups start at the real ones' base values and keeps what it
has computed, and :class:`Driven` sets the real groups from it at each step. As everywhere in retort,
``t`` starts at 0 and a schedule's values are relative to the group's base value.
"""

from __future__ import annotations

import bisect
import copy
import typing
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from retort import plugins
from retort.plugins import PluginError, register
from retort.plugins.schedulers.formulas import ORIGIN, _bases, _check, _period, _reset_lrs, _unit


def _nested(spec: Any, name: str, field: str) -> None:
    if spec is None:
        raise PluginError(f"scheduler {name!r} needs {field}, the schedule spec it is made of "
                          "({name: ..., field: value})", field=field)


class _Fresh(typing.NamedTuple):
    """A scheduler and its state right after construction, to start it again from t = 0."""

    scheduler: LRScheduler
    state: dict[str, Any]
    lrs: list[float]


def _snapshot(optimizer: Optimizer, scheduler: LRScheduler, field: str) -> _Fresh:
    if isinstance(scheduler, ReduceLROnPlateau):
        raise PluginError("plateau steps on a monitored metric and cannot be part of a warmup, sequence "
                          "or loop; use it on its own", field=field)
    return _Fresh(scheduler, copy.deepcopy(scheduler.state_dict()),
                  [g["lr"] for g in optimizer.param_groups])


def _build_fresh(optimizer: Optimizer, spec: Any, total: int | None, field: str) -> _Fresh:
    _reset_lrs(optimizer)
    try:
        scheduler = plugins.build("scheduler", spec, optimizer, total=total)
    except PluginError as exc:
        inner = f"{field}.{exc.field}" if exc.field else field
        raise PluginError(f"{field}: {exc}", field=inner) from None
    return _snapshot(optimizer, scheduler, field)


class _Piecewise(LRScheduler):
    """Schedulers run one after another, each from its own t = 0, starting at ``milestones``.

    With ``period``, the whole piece list repeats every ``period`` steps (ParameterSchedulers' Loop).
    A scheduler is restarted by restoring its state and lrs from just after it was built, so any
    scheduler works, torch's chainable ones included, and the values are exactly its own.
    """

    def __init__(self, optimizer: Optimizer, pieces: list[_Fresh], milestones: list[int],
                 period: int | None = None, last: str = "run", end: int | None = None) -> None:
        self._fresh = pieces
        self.milestones = list(milestones)
        self.period = period
        self.last, self.end = last, end  # past `end`, the last piece holds its value or loops
        super().__init__(optimizer)

    def step(self) -> None:  # type: ignore[override]
        self.last_epoch += 1
        t = self.last_epoch if self.period is None else self.last_epoch % self.period
        if self.end is not None and t >= self.end:
            if self.last == "hold":
                return
            start = self.milestones[-1] if self.milestones else 0
            t = start + (t - start) % (self.end - start)
        i = bisect.bisect_right(self.milestones, t)
        if t == (self.milestones[i - 1] if i else 0):
            fresh = self._fresh[i]
            fresh.scheduler.load_state_dict(copy.deepcopy(fresh.state))
            for group, lr in zip(self.optimizer.param_groups, fresh.lrs):
                group["lr"] = lr
        else:
            self._fresh[i].scheduler.step()
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_fresh")}
        state["_schedulers"] = [p.scheduler.state_dict() for p in self._fresh]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        for piece, sub in zip(self._fresh, state.pop("_schedulers")):
            piece.scheduler.load_state_dict(sub)
        self.__dict__.update(state)


@register("scheduler", "sequence", origin=ORIGIN)
def sequence(optimizer: Optimizer, *, schedules: list[dict] | None = None, steps: list[int] | None = None,
             last: Literal["run", "hold", "loop"] = "run", total: int | None = None) -> LRScheduler:
    """Sequence: schedules[i] for steps[i] steps each from its own t = 0; the last runs on, holds or loops.

    Each schedule is built with ``total`` = its length; ``steps`` may leave out the last length, which
    is then the rest of ``total``. Example: ``{schedules: [{name: linear, start_factor: 0, end_factor: 1},
    {name: cosine}], steps: [5]}`` warms up for 5 steps, then anneals over the rest of the run. After
    its length the last schedule runs on (``last: run``, as ParameterSchedulers' Sequence evaluates it),
    keeps its final value (``hold``) or starts again (``loop``), an infinite sequence either way.
    """
    if not schedules or not isinstance(schedules, list):
        raise PluginError("scheduler 'sequence' needs schedules, a non-empty list of schedule specs "
                          "({name: ..., field: value})", field="schedules")
    if steps is None or len(steps) not in (len(schedules) - 1, len(schedules)) or min(steps, default=1) < 1:
        raise PluginError(f"scheduler 'sequence': steps must list a length >= 1 for each of the "
                          f"{len(schedules)} schedules (the last may be left out), got {steps!r}",
                          field="steps")
    if last != "run" and len(steps) < len(schedules):
        raise PluginError(f"scheduler 'sequence': last: {last} needs the last schedule's length in steps "
                          f"({len(schedules)} lengths), got {steps!r}", field="steps")
    lengths: list[int | None] = list(steps)
    if len(lengths) < len(schedules):  # the last schedule gets the rest of the run
        lengths.append(None if total is None else max(1, total - sum(steps)))
    pieces = [_build_fresh(optimizer, spec, n, f"schedules.{i}")
              for i, (spec, n) in enumerate(zip(schedules, lengths))]
    milestones = [sum(steps[:i + 1]) for i in range(len(schedules) - 1)]
    return _Piecewise(optimizer, pieces, milestones, last=last, end=None if last == "run" else sum(steps))


@register("scheduler", "loop", origin=ORIGIN)
def loop(optimizer: Optimizer, *, schedule: str | dict | None = None,
         period: int | None = None) -> LRScheduler:
    """Loop: schedule restarted every period steps, lr·f(t mod period); its total is the period."""
    if schedule is None:
        raise PluginError("scheduler 'loop' needs schedule, the schedule spec to repeat", field="schedule")
    if period is None:
        raise PluginError("scheduler 'loop' needs period, the number of steps after which it restarts",
                          field="period")
    _check(period >= 1, "loop", "period", ">= 1", period)
    return _Piecewise(optimizer, [_build_fresh(optimizer, schedule, period, "schedule")], [], period=period)


def with_warmup(optimizer: Optimizer, scheduler: LRScheduler, steps: int,
                start_factor: float = 0.0) -> LRScheduler:
    """Linear warmup from lr·start_factor to lr over ``steps`` steps, then ``scheduler`` from its own t = 0.

    ``scheduler`` must be freshly built on ``optimizer`` (its lr is still its t = 0 value); build it with
    ``total`` = run length - ``steps``. Warmup factor at step t < steps: ``start + (1 - start)·t/steps``.
    """
    _check(steps >= 0, "warmup", "warmup", ">= 0", steps)
    _unit("warmup", "warmup_start", start_factor)
    if steps == 0:
        return scheduler
    main = _snapshot(optimizer, scheduler, "warmup")
    _reset_lrs(optimizer)
    ramp = LambdaLR(optimizer, lambda t: start_factor + (1.0 - start_factor) * t / steps)
    return _Piecewise(optimizer, [_snapshot(optimizer, ramp, "warmup"), main], [steps])


# --- random access to a schedule's values ----------------------------------------------------------

def _stand_in(bases: list[float]) -> Optimizer:
    opt = torch.optim.SGD([{"params": [torch.zeros(1)], "lr": b} for b in bases])
    opt._opt_called = True  # type: ignore[attr-defined]  # nothing trains on it: no step-order warning
    return opt


def _build_on(opt: Optimizer, spec: Any, total: int | None, field: str) -> LRScheduler:
    try:
        scheduler = plugins.build("scheduler", spec, opt, total=total)
    except PluginError as exc:
        raise PluginError(f"{field}: {exc}", field=f"{field}.{exc.field}" if exc.field else field) from None
    if isinstance(scheduler, ReduceLROnPlateau):
        raise PluginError("plateau steps on a monitored metric and cannot be part of another schedule",
                          field=field)
    return scheduler


class Values:
    """The values of schedule ``spec`` at any step, per group, for groups whose base values are ``bases``."""

    def __init__(self, spec: Any, bases: list[float], total: int | None, field: str) -> None:
        self._opt = _stand_in(bases)
        self._scheduler = _build_on(self._opt, spec, total, field)
        self._values = [[g["lr"] for g in self._opt.param_groups]]

    def __call__(self, t: int) -> list[float]:
        while len(self._values) <= t:
            self._scheduler.step()
            self._values.append([g["lr"] for g in self._opt.param_groups])
        return self._values[t]


def value_at(spec: Any, bases: list[float], total: int | None, t: int, field: str) -> list[float]:
    """Schedule ``spec``'s values at step ``t`` from a fresh build: closed form where it has one."""
    opt = _stand_in(bases)
    scheduler = _build_on(opt, spec, total, field)
    if type(scheduler) is LambdaLR:
        return [b * f(t) for b, f in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    if hasattr(scheduler, "_get_closed_form_lr"):
        scheduler.last_epoch = t
        return [float(v) for v in scheduler._get_closed_form_lr()]
    for _ in range(t):
        scheduler.step()
    return [g["lr"] for g in opt.param_groups]


class Driven(LRScheduler):
    """Sets each group's ``lr`` to ``values(t)`` at step t."""

    def __init__(self, optimizer: Optimizer, values: Callable[[int], list[float]]) -> None:
        self._values = values
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return list(self._values(self.last_epoch))

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_values")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)


@register("scheduler", "shifted", origin=ORIGIN)
def shifted(optimizer: Optimizer, *, schedule: str | dict | None = None, offset: int = 1,
            total: int | None = None) -> LRScheduler:
    """Shifted: schedule started at its step offset, ParameterSchedulers' s(t − 1 + offset); offset 1: unshifted."""
    _nested(schedule, "shifted", "schedule")
    _check(offset >= 1, "shifted", "offset", ">= 1", offset)
    values = Values(schedule, _bases(optimizer), None if total is None else total + offset - 1, "schedule")
    return Driven(optimizer, lambda t: values(t + offset - 1))


@register("scheduler", "shortened", origin=ORIGIN)
def shortened(optimizer: Optimizer, *, schedule: str | dict | None = None, steps: int | None = None,
              total: int | None = None) -> LRScheduler:
    """Shortened: schedule built for steps steps; a run longer than that is refused (Flux: a BoundsError)."""
    _nested(schedule, "shortened", "schedule")
    if steps is None:
        raise PluginError("scheduler 'shortened' needs steps, the schedule's length", field="steps")
    _check(steps >= 1, "shortened", "steps", ">= 1", steps)
    if total is not None and total > steps:
        raise PluginError(f"scheduler 'shortened' lasts {steps} steps but the run has {total}; "
                          "put it in a sequence or lengthen it", field="steps")
    _reset_lrs(optimizer)
    return _build_on(optimizer, schedule, steps, "schedule")


@register("scheduler", "reverse", origin=ORIGIN)
def reverse(optimizer: Optimizer, *, schedule: str | dict | None = None, period: int | None = None,
            total: int | None = None) -> LRScheduler:
    """reverse: ParameterSchedulers' reverse(s, period), s(period − t) at its step t ≥ 1, s(1) held after.

    On retort's steps (from 0) that is f(period − 2 − t); the schedule's own ``total`` is the period,
    which is the run's length if unset.
    """
    _nested(schedule, "reverse", "schedule")
    p = _period("reverse", period, total)
    values = Values(schedule, _bases(optimizer), p, "schedule")
    return Driven(optimizer, lambda t: values(max(p - 2 - t, 0)))


@register("scheduler", "symmetric", origin=ORIGIN)
def symmetric(optimizer: Optimizer, *, schedule: str | dict | None = None, period: int | None = None,
              total: int | None = None) -> LRScheduler:
    """symmetric: ParameterSchedulers' symmetric(s, period), s(t) for t < period/2, then s(period − t).

    On its steps t ≥ 1, as ``reverse``: the way up, then back down the same values, s(1) held after
    the period; the schedule's own ``total`` is the period (the run's length if unset).
    """
    _nested(schedule, "symmetric", "schedule")
    p = _period("symmetric", period, total)
    values = Values(schedule, _bases(optimizer), p, "schedule")
    return Driven(optimizer, lambda t: values(t) if t + 1 < p / 2 else values(max(p - 2 - t, 0)))


@register("scheduler", "composed", origin=ORIGIN)
def composed(optimizer: Optimizer, *, schedule: str | dict | None = None, parameters: dict[str, Any] | None = None,
             total: int | None = None) -> LRScheduler:
    """ComposedSchedule: schedule whose fields follow their own schedules, field(t) = its value × that factor.

    ``{schedule: {name: triangle, period: 10}, parameters: {min_factor: {name: exp, decay: 0.9}}}``: at
    step t the triangle is rebuilt with ``min_factor`` = its value × 0.9^t and evaluated at t (an
    integer field is rounded). Each parameter schedule is a factor (its base is 1); a number instead
    of a schedule is a constant factor (Flux's numbers are Constant schedules).
    """
    _nested(schedule, "composed", "schedule")
    if not parameters or not isinstance(parameters, dict):
        raise PluginError("scheduler 'composed' needs parameters, a mapping of the schedule's fields to "
                          "schedule specs ({min_factor: {name: exp, decay: 0.9}})", field="parameters")
    try:
        base = plugins.resolve("scheduler", schedule)
    except PluginError as exc:
        raise PluginError(f"schedule: {exc}", field=f"schedule.{exc.field}" if exc.field else "schedule") from None
    factors = {}
    for key, spec in parameters.items():
        if not isinstance(base.get(key), (int, float)) or isinstance(base.get(key), bool):
            numeric = [k for k, v in base.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            raise PluginError(f"scheduler 'composed': {key!r} is not a numeric field of {base['name']!r}; "
                              f"valid choices: {', '.join(numeric)}", field=f"parameters.{key}")
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            spec = {"name": "constant", "factor": spec}
        factors[key] = Values(spec, [1.0], total, f"parameters.{key}")
    bases = _bases(optimizer)

    def values(t: int) -> list[float]:
        spec = dict(base)
        for key, factor in factors.items():
            value = base[key] * factor(t)[0]
            spec[key] = round(value) if isinstance(base[key], int) else value
        return value_at(spec, bases, total, t, "schedule")

    values(0)  # the schedule's own checks, now
    return Driven(optimizer, values)
