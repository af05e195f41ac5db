"""Chart axes: one "nice numbers" tick algorithm for every chart retort draws.

The run's ``loss.svg`` (:mod:`retort.tracking.plots`) and the report's charts (its script draws what
:func:`axis` decides here) share it: ticks 1, 2 or 5 times a power of ten apart, never finer than 1 on an
integer axis (epochs, steps, trial numbers), labels with 4 significant digits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def ticks(lo: float, hi: float, n: int = 6, integer: bool = False) -> list[float]:
    """About ``n`` round values between ``lo`` and ``hi``, 1, 2 or 5 times a power of ten apart (at least 1
    apart when ``integer``)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        return []
    raw = (hi - lo) / max(1, n) or abs(lo) or 1.0
    power = 10 ** math.floor(math.log10(raw))
    err = raw / power  # in [1, 10): the nearest of 1, 2, 5 and 10
    step = power * (10 if err >= 7.5 else 5 if err >= 3.5 else 2 if err >= 1.5 else 1)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9) * step
    count = int((hi - first) / step + 1e-9) + 1
    return [round(first + i * step, 12) + 0.0 for i in range(max(0, count))]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten between ``lo`` and ``hi`` (> 0); with 2 and 5 times them when the range spans few decades."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mantissas = (1,) if b - a > 3 else (1, 2, 5)
    found = [m * 10.0 ** k for k in range(a, b + 1) for m in mantissas if lo * 0.999 <= m * 10.0 ** k <= hi * 1.001]
    return found or [lo, hi]


def label(v: float) -> str:
    """A tick's text: up to 4 significant digits, exponents only for very small or large values."""
    if v == 0 or 1e-4 <= abs(v) < 1e5:
        return f"{v:.4g}"
    return f"{v:.0e}"


def axis(values: Iterable[float | None], *, n: int = 6, integer: bool = False, log: bool | None = None,
         pad: float = 0.0) -> dict[str, Any]:
    """An axis over ``values`` (non-finite ones ignored): ``{"domain": [lo, hi], "log": bool, "ticks": [...],
    "labels": [...]}``. ``log`` None: logarithmic when every value is positive and they span over 30 times;
    ``pad`` widens a linear domain by that fraction of its span on each side."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        lo, hi = (0.0, 1.0)
    else:
        lo, hi = min(finite), max(finite)
    if log is None:
        log = bool(finite) and lo > 0 and hi / lo > 30 and not integer
    if log and lo > 0:
        marks = log_ticks(lo, hi)
        return {"domain": [lo, hi], "log": True, "ticks": marks, "labels": [label(v) for v in marks]}
    if lo == hi:
        d = 1.0 if integer else (abs(lo) * 0.05 or 0.5)
        lo, hi = lo - d, hi + d
    elif pad:
        lo, hi = lo - (hi - lo) * pad, hi + (hi - lo) * pad
    marks = ticks(lo, hi, n, integer)
    return {"domain": [lo, hi], "log": False, "ticks": marks, "labels": [label(v) for v in marks]}
