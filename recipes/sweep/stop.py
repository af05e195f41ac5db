"""When a sweep stops before its N trials: a time budget (``--timeout``), a target value reached
(``--target``), or no improvement on the best value in K finished trials (``--patience``).

Every worker asks :func:`why_stop` under the study lock before it claims a trial (a running trial is never cut
short), and the parent records the rule that fired and what it saved on the parent run. The rules read the
study itself, so workers on other machines agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from retort.plugins.errors import RecipeError
from retort.tracking.vocabulary import StudyAttr


@dataclass
class StopRules:
    timeout: float | None = None   # seconds from the sweep's start
    target: float | None = None    # a value of sweep.metric that is good enough
    patience: int | None = None    # finished trials without improving on the best
    deadline: float | None = None  # time.time() at which the timeout ends

    def check(self) -> None:
        if self.timeout is not None and not self.timeout > 0:
            raise RecipeError(f"must be above 0 seconds, got {self.timeout}", field="--timeout")
        if self.target is not None and not math.isfinite(self.target):
            raise RecipeError(f"must be a finite number, got {self.target}", field="--target")
        if self.patience is not None and self.patience < 1:
            raise RecipeError(f"must be at least 1, got {self.patience}", field="--patience")


def _finished(trials: Sequence[Any]) -> list[Any]:
    done = [t for t in trials if t.state.is_finished() and StudyAttr.RETRIED not in t.system_attrs]
    return sorted(done, key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))


def why_stop(rules: StopRules, trials: Sequence[Any], maximize: bool, now: float) -> str | None:
    """The reason the sweep should claim no more trials, or None."""
    if rules.deadline is not None and now >= rules.deadline:
        return f"timeout: {rules.timeout:g} s spent"
    done = _finished(trials)
    complete = [t for t in done if t.state.name == "COMPLETE" and t.value is not None]
    if not complete:
        return None
    best = max(complete, key=lambda t: t.value) if maximize else min(complete, key=lambda t: t.value)
    if rules.target is not None and (best.value >= rules.target if maximize else best.value <= rules.target):
        return f"target: trial {best.number} reached {best.value:.6g} ({'>=' if maximize else '<='} {rules.target:g})"
    if rules.patience is not None:
        after = len(done) - 1 - done.index(best)
        if after >= rules.patience:
            return f"patience: no improvement in {after} trials after trial {best.number} ({best.value:.6g})"
    return None


def saved(trials: Sequence[Any], wanted: int) -> tuple[int, float]:
    """Trials not run because the sweep stopped, and their estimated compute in seconds (the mean run time
    of the finished trials, times their number)."""
    done = _finished(trials)
    left = max(0, wanted - len(done))
    spans = [float(t.user_attrs["run_seconds"]) for t in done if "run_seconds" in t.user_attrs]
    return left, (left * sum(spans) / len(spans) if spans else 0.0)
