"""The closed-form schedules of ParameterSchedulers.jl, as factors of each group's base value (see the package).

Decay (Step, Exp, Poly, Inv), cyclic (Triangle, Sin and their decaying forms, CosAnneal, OneCycle) and
simple ones (Constant, Linear, ReduceLROnPlateau); the combinators that build on them are in
``combinators``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ExponentialLR,
    LambdaLR,
    LRScheduler,
    MultiStepLR,
    PolynomialLR,
    ReduceLROnPlateau,
    StepLR,
)

from retort.plugins import PluginError, register

ORIGIN = "retort.plugins.schedulers"  # one origin for the package's schedules

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

@register("scheduler", "step", origin=ORIGIN, aliases={"gamma": "decay"})
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


@register("scheduler", "exp", origin=ORIGIN, aliases={"gamma": "decay"})
def exp(optimizer: Optimizer, *, decay: float = 0.9) -> LRScheduler:
    """Exp: lr·decay^t (torch ExponentialLR); decay 0.9."""
    _check(decay > 0, "exp", "decay", "> 0", decay)
    return ExponentialLR(optimizer, gamma=decay)


@register("scheduler", "poly", origin=ORIGIN, aliases={"power": "degree"})
def poly(optimizer: Optimizer, *, degree: float = 1.0, total: int | None = None) -> LRScheduler:
    """Poly: lr·(1 - t/total)^degree, then 0 (torch PolynomialLR); degree 1."""
    _check(degree > 0, "poly", "degree", "> 0", degree)
    return PolynomialLR(optimizer, total_iters=_total("poly", total), power=degree)


@register("scheduler", "inv", origin=ORIGIN, aliases={"gamma": "decay"})
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


@register("scheduler", "triangle", origin=ORIGIN)
def triangle(optimizer: Optimizer, *, min_factor: float = 0.0, period: int | None = None,
             total: int | None = None) -> LRScheduler:
    """Triangle: lr·(m + (1-m)·(2/π)|asin(sin(πt/period))|), m = min_factor 0; period = total if unset."""
    return _cyclic(optimizer, "triangle", _tri, _flat, min_factor, period, total)


@register("scheduler", "triangle_decay2", origin=ORIGIN)
def triangle_decay2(optimizer: Optimizer, *, min_factor: float = 0.0, period: int | None = None,
                    total: int | None = None) -> LRScheduler:
    """TriangleDecay2: triangle whose amplitude halves every period: (1-m)·tri(t)/2^⌊t/period⌋ + m."""
    return _cyclic(optimizer, "triangle_decay2", _tri, _halving, min_factor, period, total)


@register("scheduler", "triangle_exp", origin=ORIGIN, aliases={"gamma": "decay"})
def triangle_exp(optimizer: Optimizer, *, min_factor: float = 0.0, decay: float = 0.9,
                 period: int | None = None, total: int | None = None) -> LRScheduler:
    """TriangleExp: triangle with amplitude decaying as decay^t: (1-m)·tri(t)·decay^t + m; decay 0.9."""
    envelope = _exp_envelope("triangle_exp", decay)
    return _cyclic(optimizer, "triangle_exp", _tri, envelope, min_factor, period, total)


@register("scheduler", "sin", origin=ORIGIN)
def sin(optimizer: Optimizer, *, min_factor: float = 0.0, period: int | None = None,
        total: int | None = None) -> LRScheduler:
    """Sin: lr·(m + (1-m)·|sin(πt/period)|), m = min_factor 0; period = total if unset."""
    return _cyclic(optimizer, "sin", _sin, _flat, min_factor, period, total)


@register("scheduler", "sin_decay2", origin=ORIGIN)
def sin_decay2(optimizer: Optimizer, *, min_factor: float = 0.0, period: int | None = None,
               total: int | None = None) -> LRScheduler:
    """SinDecay2: sine whose amplitude halves every period: (1-m)·|sin(πt/period)|/2^⌊t/period⌋ + m."""
    return _cyclic(optimizer, "sin_decay2", _sin, _halving, min_factor, period, total)


@register("scheduler", "sin_exp", origin=ORIGIN, aliases={"gamma": "decay"})
def sin_exp(optimizer: Optimizer, *, min_factor: float = 0.0, decay: float = 0.9,
            period: int | None = None, total: int | None = None) -> LRScheduler:
    """SinExp: sine with amplitude decaying as decay^t: (1-m)·|sin(πt/period)|·decay^t + m; decay 0.9."""
    return _cyclic(optimizer, "sin_exp", _sin, _exp_envelope("sin_exp", decay), min_factor, period, total)


def _cosine(optimizer: Optimizer, name: str, min_factor: float, period: int | None, restart: bool,
            total: int | None) -> LRScheduler:
    _unit(name, "min_factor", min_factor)
    p = _period(name, period, total)

    def factor(t: int) -> float:
        t_hat = t % p if restart else t
        return min_factor + (1.0 - min_factor) * (1.0 + math.cos(math.pi * t_hat / p)) / 2.0

    return LambdaLR(optimizer, factor)


@register("scheduler", "cosine", origin=ORIGIN)
def cosine(optimizer: Optimizer, *, min_factor: float = 0.0, period: int | None = None,
           restart: bool = False, total: int | None = None) -> LRScheduler:
    """Cosine annealing: lr·(m + (1-m)·(1 + cos(π·t̂/period))/2), t̂ = t (mod period if restart); no restart."""
    return _cosine(optimizer, "cosine", min_factor, period, restart, total)


@register("scheduler", "cosanneal", origin=ORIGIN)
def cosanneal(optimizer: Optimizer, *, min_factor: float = 0.0, period: int | None = None,
              restart: bool = True, total: int | None = None) -> LRScheduler:
    """ParameterSchedulers' CosAnneal: cosine with its default restart=True (retort's cosine: False)."""
    return _cosine(optimizer, "cosanneal", min_factor, period, restart, total)


@register("scheduler", "onecycle", origin=ORIGIN, aliases={"pct_start": "percent_start"})
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

@register("scheduler", "constant", origin=ORIGIN)
def constant(optimizer: Optimizer, *, factor: float = 1.0) -> LRScheduler:
    """Constant: lr·factor at every step; factor 1."""
    _check(factor >= 0, "constant", "factor", ">= 0", factor)
    return LambdaLR(optimizer, lambda t: factor)


@register("scheduler", "linear", origin=ORIGIN)
def linear(optimizer: Optimizer, *, start_factor: float = 1.0, end_factor: float = 0.0,
           total: int | None = None) -> LRScheduler:
    """Linear: lr·(start + (end - start)·min(t, total)/total), like LinearLR but start may be 0; 1 → 0."""
    _check(start_factor >= 0, "linear", "start_factor", ">= 0", start_factor)
    _check(end_factor >= 0, "linear", "end_factor", ">= 0", end_factor)
    n = _total("linear", total)
    return LambdaLR(optimizer, lambda t: start_factor + (end_factor - start_factor) * min(t, n) / n)


@register("scheduler", "plateau", origin=ORIGIN)
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
