"""Out of memory as a constraint the sampler learns from, so that a study stops proposing what cannot fit.

A trial whose run runs out of memory is recorded FAILED in MLflow with that reason. To Optuna it is a
finished trial with the worst value and the constraint ``out_of_memory`` violated: samplers learn only from
finished trials (a FAIL gives them nothing), and TPE, GP and NSGA-II rank an infeasible trial below every
feasible one, so the parameters that did not fit are proposed less. ``study.best_trial`` skips it.
"""

from __future__ import annotations

import math
from typing import Any

KEY = "out_of_memory"


def infeasible(trial: Any, maximize: bool) -> float:
    """Mark ``trial`` as not fitting in memory; the value to finish it with (the worst there is)."""
    trial.set_constraint(KEY, 1.0)
    return -math.inf if maximize else math.inf


def did_not_fit(trial: Any) -> bool:
    """Whether a finished trial ran out of memory (its constraint is violated)."""
    return trial.constraints.get(KEY, 0.0) > 0
