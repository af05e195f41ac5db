"""Learning-rate schedules: ParameterSchedulers.jl's catalogue, relative to the optimizer's lr, on torch.

A schedule multiplies each param group's base learning rate (the recipe's ``optimizer.lr``, which
sweeps vary) by ``factor(t)``, where ``t`` counts the ``scheduler.step()`` calls so far. torch sets
the ``t = 0`` value when the scheduler is built, so ``factor(0)`` is the first lr used and
ParameterSchedulers' ``s(t)`` (which starts at ``t = 1``) is ``lr * factor(t - 1)``. Its absolute
start values become factors: ``exp: {decay: 0.9}`` is ``lr·0.9^t``, ``cosine`` anneals from ``lr`` to
``lr·min_factor``, ``triangle`` cycles between ``lr·min_factor`` and ``lr``::

    >>> import plugins, torch
    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> sched = plugins.build("scheduler", {"name": "cosine", "min_factor": 0.1}, opt, total=10)
    >>> lrs = []
    >>> for _ in range(3):
    ...     lrs.append(round(opt.param_groups[0]["lr"], 4))
    ...     opt.step()
    ...     sched.step()
    >>> lrs
    [0.1, 0.0978, 0.0914]

Schedules that need the run's length take ``total`` (scheduler steps in the run); retort fills a
None ``total`` at build time. Torch's own class is used where it is exactly the schedule for every
param group (StepLR, MultiStepLR, ExponentialLR, PolynomialLR); the rest are ``LambdaLR`` with the
closed form, since torch's cyclic and one-cycle classes take absolute lrs shared by all groups.
Every ``torch.optim.lr_scheduler`` class is also registered under its torch name with torch's
defaults.
"""

from __future__ import annotations

import bisect
import copy
import inspect
import itertools
import math
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

from torch.optim import Optimizer, lr_scheduler
from torch.optim.lr_scheduler import (
    ExponentialLR,
    LambdaLR,
    LRScheduler,
    MultiStepLR,
    PolynomialLR,
    ReduceLROnPlateau,
    StepLR,
)

from retort import plugins
from retort.plugins import PluginError, register

Factor = Callable[[int], float]


# --- checks -----------------------------------------------------------------------------------------

def _check(ok: bool, name: str, field: str, rule: str, value: Any) -> None:
    if not ok:
        raise PluginError(f"scheduler {name!r}: {field} must be {rule}, got {value!r}", field=field)


def _total(name: str, total: int | None) -> int:
    if total is None:
        raise PluginError(f"scheduler {name!r} needs total, the number of scheduler steps in the run "
                          "(retort fills it when the scheduler is built from a recipe)", field="total")
    _check(total >= 1, name, "total", ">= 1", total)
    return total


def _period(name: str, period: int | None, total: int | None) -> int:
    """``period``, or the whole run (``total``) when it is None."""
    if period is None:
        return _total(name, total)
    _check(period >= 1, name, "period", ">= 1", period)
    return period


def _unit(name: str, field: str, value: float) -> None:
    _check(0.0 <= value <= 1.0, name, field, "in [0, 1]", value)


def _bases(optimizer: Optimizer) -> list[float]:
    """Each group's base lr: what the first scheduler on this optimizer recorded, else the current lr."""
    return [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]


def _reset_lrs(optimizer: Optimizer) -> None:
    """Back to the base lrs, so that the next scheduler built starts as if it were the only one."""
    for group, base in zip(optimizer.param_groups, _bases(optimizer)):
        group["lr"] = base


# --- decay schedules --------------------------------------------------------------------------------

@register("scheduler", "step", aliases={"gamma": "decay"})
def step(optimizer: Optimizer, *, decay: float = 0.1, step_size: int | None = None,
         milestones: list[int] | None = None) -> LRScheduler:
    """Step: lr·decay^⌊t/step_size⌋ (StepLR), or lr·decay^(milestones ≤ t) (MultiStepLR); decay 0.1."""
    _check(decay > 0, "step", "decay", "> 0", decay)
    if (step_size is None) == (milestones is None):
        raise PluginError("scheduler 'step' needs exactly one of step_size (decay every step_size steps) "
                          "or milestones (decay at these steps)", field="step_size")
    if step_size is not None:
        _check(step_size >= 1, "step", "step_size", ">= 1", step_size)
        return StepLR(optimizer, step_size=step_size, gamma=decay)
    _check(bool(milestones) and milestones[0] >= 1 and all(a < b for a, b in itertools.pairwise(milestones)),
           "step", "milestones", "a non-empty increasing list of steps >= 1", milestones)
    return MultiStepLR(optimizer, milestones=milestones, gamma=decay)


@register("scheduler", "exp", aliases={"gamma": "decay"})
def exp(optimizer: Optimizer, *, decay: float = 0.9) -> LRScheduler:
    """Exp: lr·decay^t (torch ExponentialLR); decay 0.9."""
    _check(decay > 0, "exp", "decay", "> 0", decay)
    return ExponentialLR(optimizer, gamma=decay)


@register("scheduler", "poly", aliases={"power": "degree"})
def poly(optimizer: Optimizer, *, degree: float = 1.0, total: int | None = None) -> LRScheduler:
    """Poly: lr·(1 - t/total)^degree, then 0 (torch PolynomialLR); degree 1."""
    _check(degree > 0, "poly", "degree", "> 0", degree)
    return PolynomialLR(optimizer, total_iters=_total("poly", total), power=degree)


@register("scheduler", "inv", aliases={"gamma": "decay"})
def inv(optimizer: Optimizer, *, decay: float = 0.1, degree: float = 1.0) -> LRScheduler:
    """Inv: lr / (1 + decay·t)^degree; decay 0.1, degree 1."""
    _check(decay > 0, "inv", "decay", "> 0", decay)
    _check(degree > 0, "inv", "degree", "> 0", degree)
    return LambdaLR(optimizer, lambda t: 1.0 / (1.0 + decay * t) ** degree)


# --- cyclic schedules -------------------------------------------------------------------------------
# ParameterSchedulers' _cycle(l0, l1, g) = |l0 - l1|·g + min(l0, l1) with l0 = lr·min_factor, l1 = lr.

def _tri(t: int, period: int) -> float:
    return 2 / math.pi * abs(math.asin(math.sin(math.pi * t / period)))


def _sin(t: int, period: int) -> float:
    return abs(math.sin(math.pi * t / period))


def _cyclic(optimizer: Optimizer, name: str, wave: Callable[[int, int], float],
            envelope: Callable[[int, int], float], min_factor: float, period: int | None,
            total: int | None) -> LRScheduler:
    _unit(name, "min_factor", min_factor)
    p = _period(name, period, total)
    return LambdaLR(optimizer, lambda t: min_factor + (1.0 - min_factor) * wave(t, p) * envelope(t, p))


def _flat(t: int, period: int) -> float:
    return 1.0


def _halving(t: int, period: int) -> float:
    return 0.5 ** (t // period)


def _exp_envelope(name: str, decay: float) -> Callable[[int, int], float]:
    _check(decay > 0, name, "decay", "> 0", decay)
    return lambda t, period: decay**t


@register("scheduler", "triangle")
def triangle(optimizer: Optimizer, *, min_factor: float = 0.0, period: int | None = None,
             total: int | None = None) -> LRScheduler:
    """Triangle: lr·(m + (1-m)·(2/π)|asin(sin(πt/period))|), m = min_factor 0; period = total if unset."""
    return _cyclic(optimizer, "triangle", _tri, _flat, min_factor, period, total)


@register("scheduler", "triangle_decay2")
def triangle_decay2(optimizer: Optimizer, *, min_factor: float = 0.0, period: int | None = None,
                    total: int | None = None) -> LRScheduler:
    """TriangleDecay2: triangle whose amplitude halves every period: (1-m)·tri(t)/2^⌊t/period⌋ + m."""
    return _cyclic(optimizer, "triangle_decay2", _tri, _halving, min_factor, period, total)


@register("scheduler", "triangle_exp", aliases={"gamma": "decay"})
def triangle_exp(optimizer: Optimizer, *, min_factor: float = 0.0, decay: float = 0.9,
                 period: int | None = None, total: int | None = None) -> LRScheduler:
    """TriangleExp: triangle with amplitude decaying as decay^t: (1-m)·tri(t)·decay^t + m; decay 0.9."""
    envelope = _exp_envelope("triangle_exp", decay)
    return _cyclic(optimizer, "triangle_exp", _tri, envelope, min_factor, period, total)


@register("scheduler", "sin")
def sin(optimizer: Optimizer, *, min_factor: float = 0.0, period: int | None = None,
        total: int | None = None) -> LRScheduler:
    """Sin: lr·(m + (1-m)·|sin(πt/period)|), m = min_factor 0; period = total if unset."""
    return _cyclic(optimizer, "sin", _sin, _flat, min_factor, period, total)


@register("scheduler", "sin_decay2")
def sin_decay2(optimizer: Optimizer, *, min_factor: float = 0.0, period: int | None = None,
               total: int | None = None) -> LRScheduler:
    """SinDecay2: sine whose amplitude halves every period: (1-m)·|sin(πt/period)|/2^⌊t/period⌋ + m."""
    return _cyclic(optimizer, "sin_decay2", _sin, _halving, min_factor, period, total)


@register("scheduler", "sin_exp", aliases={"gamma": "decay"})
def sin_exp(optimizer: Optimizer, *, min_factor: float = 0.0, decay: float = 0.9,
            period: int | None = None, total: int | None = None) -> LRScheduler:
    """SinExp: sine with amplitude decaying as decay^t: (1-m)·|sin(πt/period)|·decay^t + m; decay 0.9."""
    return _cyclic(optimizer, "sin_exp", _sin, _exp_envelope("sin_exp", decay), min_factor, period, total)


@register("scheduler", "cosine")
def cosine(optimizer: Optimizer, *, min_factor: float = 0.0, period: int | None = None,
           restart: bool = False, total: int | None = None) -> LRScheduler:
    """CosAnneal: lr·(m + (1-m)·(1 + cos(π·t̂/period))/2), t̂ = t (mod period if restart); period = total."""
    _unit("cosine", "min_factor", min_factor)
    p = _period("cosine", period, total)

    def factor(t: int) -> float:
        t_hat = t % p if restart else t
        return min_factor + (1.0 - min_factor) * (1.0 + math.cos(math.pi * t_hat / p)) / 2.0

    return LambdaLR(optimizer, factor)


@register("scheduler", "onecycle", aliases={"pct_start": "percent_start"})
def onecycle(optimizer: Optimizer, *, start_factor: float = 1 / 25, end_factor: float = 1e-5,
             percent_start: float = 0.25, total: int | None = None) -> LRScheduler:
    """OneCycle: cos lr·start_factor→lr over ⌈percent_start·total⌉ steps, →lr·end_factor; 0.04, 1e-5, 0.25.

    ParameterSchedulers' defaults and phase boundary; torch OneCycleLR differs: pct_start 0.3, final lr
    lr/2.5e5, boundary at pct_start·total - 1, and it cycles momentum (this does not).
    """
    _unit("onecycle", "start_factor", start_factor)
    _unit("onecycle", "end_factor", end_factor)
    _check(0 < percent_start < 1, "onecycle", "percent_start", "in (0, 1)", percent_start)
    n = _total("onecycle", total)
    up = math.ceil(percent_start * n)
    down = n - up

    def factor(t: int) -> float:
        if t < up:
            return start_factor + (1.0 - start_factor) * (1.0 - math.cos(math.pi * t / up)) / 2.0
        if t < n:
            return end_factor + (1.0 - end_factor) * (1.0 + math.cos(math.pi * (t - up) / down)) / 2.0
        return end_factor  # past the cycle ParameterSchedulers raises; a run may step once more

    return LambdaLR(optimizer, factor)


# --- simple and composite schedules -----------------------------------------------------------------

@register("scheduler", "constant")
def constant(optimizer: Optimizer, *, factor: float = 1.0) -> LRScheduler:
    """Constant: lr·factor at every step; factor 1."""
    _check(factor >= 0, "constant", "factor", ">= 0", factor)
    return LambdaLR(optimizer, lambda t: factor)


@register("scheduler", "linear")
def linear(optimizer: Optimizer, *, start_factor: float = 1.0, end_factor: float = 0.0,
           total: int | None = None) -> LRScheduler:
    """Linear: lr·(start + (end - start)·min(t, total)/total), like LinearLR but start may be 0; 1 → 0."""
    _check(start_factor >= 0, "linear", "start_factor", ">= 0", start_factor)
    _check(end_factor >= 0, "linear", "end_factor", ">= 0", end_factor)
    n = _total("linear", total)
    return LambdaLR(optimizer, lambda t: start_factor + (end_factor - start_factor) * min(t, n) / n)


@register("scheduler", "plateau")
def plateau(optimizer: Optimizer, *, monitor: str = "val/loss", mode: Literal["min", "max"] = "min",
            factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
            threshold_mode: Literal["rel", "abs"] = "rel", cooldown: int = 0, min_factor: float = 0.0,
            eps: float = 1e-8) -> ReduceLROnPlateau:
    """ReduceLROnPlateau on monitor (val/loss): lr·factor (0.1) after patience (10) epochs without gain."""
    # `monitor` is read by retort's loop, which passes that metric to step().
    _check(0 < factor < 1, "plateau", "factor", "in (0, 1)", factor)
    _check(patience >= 0, "plateau", "patience", ">= 0", patience)
    _check(cooldown >= 0, "plateau", "cooldown", ">= 0", cooldown)
    _unit("plateau", "min_factor", min_factor)
    return ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience, threshold=threshold,
                             threshold_mode=threshold_mode, cooldown=cooldown,
                             min_lr=[b * min_factor for b in _bases(optimizer)], eps=eps)


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
                 period: int | None = None) -> None:
        self._fresh = pieces
        self.milestones = list(milestones)
        self.period = period
        super().__init__(optimizer)

    def step(self) -> None:  # type: ignore[override]
        self.last_epoch += 1
        t = self.last_epoch if self.period is None else self.last_epoch % self.period
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


@register("scheduler", "sequence")
def sequence(optimizer: Optimizer, *, schedules: list[dict] | None = None, steps: list[int] | None = None,
             total: int | None = None) -> LRScheduler:
    """Sequence: schedules[i] for steps[i] steps each from its own t = 0; the last runs on (SequentialLR).

    Each schedule is built with ``total`` = its length; ``steps`` may leave out the last length, which
    is then the rest of ``total``. Example: ``{schedules: [{name: linear, start_factor: 0, end_factor: 1},
    {name: cosine}], steps: [5]}`` warms up for 5 steps, then anneals over the rest of the run.
    """
    if not schedules or not isinstance(schedules, list):
        raise PluginError("scheduler 'sequence' needs schedules, a non-empty list of schedule specs "
                          "({name: ..., field: value})", field="schedules")
    if steps is None or len(steps) not in (len(schedules) - 1, len(schedules)) or min(steps, default=1) < 1:
        raise PluginError(f"scheduler 'sequence': steps must list a length >= 1 for each of the "
                          f"{len(schedules)} schedules (the last may be left out), got {steps!r}",
                          field="steps")
    lengths: list[int | None] = list(steps)
    if len(lengths) < len(schedules):  # the last schedule gets the rest of the run
        lengths.append(None if total is None else max(1, total - sum(steps)))
    pieces = [_build_fresh(optimizer, spec, n, f"schedules.{i}")
              for i, (spec, n) in enumerate(zip(schedules, lengths))]
    milestones = [sum(steps[:i + 1]) for i in range(len(schedules) - 1)]
    return _Piecewise(optimizer, pieces, milestones)


@register("scheduler", "loop")
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


# --- every torch.optim.lr_scheduler class, with torch's defaults ------------------------------------

# Resume bookkeeping and deprecated switches, not schedule settings.
_NOT_FIELDS = {"self", "optimizer", "last_epoch", "verbose"}
# torch writes its hints as strings naming typing aliases that its module does not import at run time.
_HINT_NAMES = {"Callable": Callable, "Iterable": list, "Sequence": list}


def torch_schedulers() -> dict[str, type[LRScheduler]]:
    """Every scheduler class that ``torch.optim.lr_scheduler`` exports, by class name."""
    found = {name: getattr(lr_scheduler, name) for name in lr_scheduler.__all__}
    return {name: cls for name, cls in sorted(found.items())
            if inspect.isclass(cls) and issubclass(cls, LRScheduler) and cls is not LRScheduler}


def _field_type(hint: Any) -> Any:
    """torch's hint where recipes can hold it (numbers, strings, lists); objects and callables stay Any."""
    return hint if plugins._simple(hint) else Any


def _torch_factory(name: str, cls: type[LRScheduler]) -> Callable[..., LRScheduler]:
    hints = typing.get_type_hints(cls.__init__, {**vars(lr_scheduler), **_HINT_NAMES})
    fields = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY,
                        annotation=_field_type(hints.get(p.name, Any)))
              for p in inspect.signature(cls.__init__).parameters.values() if p.name not in _NOT_FIELDS]
    if cls is ReduceLROnPlateau:
        fields.insert(0, inspect.Parameter("monitor", inspect.Parameter.KEYWORD_ONLY, default="val/loss",
                                           annotation=str))

    def factory(optimizer: Optimizer, **config: Any) -> LRScheduler:
        config.pop("monitor", None)
        if "schedulers" in config:  # SequentialLR, ChainedScheduler: specs are built here
            config["schedulers"] = [plugins.build("scheduler", s, optimizer)
                                    if isinstance(s, (str, Mapping)) else s for s in config["schedulers"]]
        try:
            return cls(optimizer=optimizer, **config)
        except ValueError as exc:
            raise PluginError(f"scheduler torch.optim.lr_scheduler.{name}: {exc}") from None

    optimizer_param = inspect.Parameter("optimizer", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    factory.__signature__ = inspect.Signature([optimizer_param, *fields])  # type: ignore[attr-defined]
    factory.__annotations__ = {p.name: p.annotation for p in fields}
    factory.__name__ = factory.__qualname__ = name
    return factory


def _torch_doc(name: str, factory: Callable[..., Any]) -> str:
    params = list(inspect.signature(factory).parameters.values())[1:]
    required = ", ".join(p.name for p in params if p.default is p.empty)
    shown = ", ".join(f"{p.name}={p.default!r}" for p in params
                      if p.default is not p.empty and p.name != "monitor")
    return f"torch's {name}" + (f", needs {required}" if required else "") + (
        f"; torch defaults: {shown}" if shown else "") + (
        "; monitor='val/loss' (retort)" if "monitor" in [p.name for p in params] else "")


for _name, _cls in torch_schedulers().items():
    _factory = _torch_factory(_name, _cls)
    plugins.add("scheduler", f"torch.optim.lr_scheduler.{_name}", _factory, doc=_torch_doc(_name, _factory),
                origin="torch.optim.lr_scheduler")


__all__ = ["torch_schedulers", "with_warmup"]
