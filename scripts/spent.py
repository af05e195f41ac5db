"""How long a fit spends inside some methods (used by ``bench.py`` and ``bench_tracking.py``): the share of
training a feature's own code takes, which two fits' times cannot resolve on a machine whose speed drifts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Spent:
    """Seconds spent inside the methods :func:`inside` timed, since the last :meth:`reset`."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def reset(self) -> None:
        self.seconds = 0.0


@contextmanager
def inside(methods: list[tuple[type, str]]) -> Iterator[Spent]:
    """Time every call of ``cls.name`` for each (cls, name) while the block runs; put them back after."""
    spent = Spent()
    original = [(cls, name, getattr(cls, name)) for cls, name in methods]

    def timed(method: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent.seconds += time.perf_counter() - start
        return run

    try:
        for cls, name, method in original:
            setattr(cls, name, timed(method))
        yield spent
    finally:
        for cls, name, method in original:
            setattr(cls, name, method)
