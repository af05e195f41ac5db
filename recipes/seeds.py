"""``retort run RECIPE --seeds N``: one recipe over N seeds, as N sibling runs under one parent run.

The seeds are the recipe's ``seed`` and the N - 1 after it. Each seed is an ordinary run (the same record
as ``retort run -s seed=S``) with three tags that group it: ``mlflow.parentRunId`` and
``retort.seed_group`` (both the parent's id) and ``retort.seed``. The parent run holds the recipe's
params but ``seed``, the tag ``retort.seeds`` (``0,1,2``), and per final metric the mean over the seeds
that finished (``test/accuracy``) and their standard deviation (``test/accuracy_std``). A failing seed is
recorded FAILED and the others still run; the parent is then FAILED, naming it.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from retort.plugins.errors import Interrupted, RecipeError, RunFailed
from retort.tracking.vocabulary import Tag


@dataclass
class SeedsResult:
    parent_run_id: str
    seeds: list[int]
    run_ids: dict[int, str | None] = field(default_factory=dict)  # seed -> its run (None: failed unrecorded)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # seed -> final metrics, finished seeds
    failed: dict[int, str] = field(default_factory=dict)  # seed -> why

    def summary(self) -> dict[str, tuple[float, float]]:
        """Per final metric, (mean, standard deviation) over the seeds that finished (std 0 for one)."""
        keys = [k for m in self.metrics.values() for k in m]
        out = {}
        for key in dict.fromkeys(keys):
            values = [m[key] for m in self.metrics.values() if key in m]
            out[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        return out


def run_seeds(recipe: Any, n: int, *, tracking_uri: str | None = None, quiet: bool = False,
              command: str | None = None) -> SeedsResult:
    """Run ``recipe`` with seeds ``recipe.seed .. recipe.seed + n - 1`` under one parent MLflow run."""
    from retort.recipes.runner import build, run
    from retort.tracking import RunRecord, resolve_uri
    from retort.tracking.context import run_tags

    if not 1 <= n <= 1000:
        raise RecipeError(f"must be between 1 and 1000, got {n}", field="--seeds")
    build(recipe)  # bad input stops here, before the parent exists
    seeds = [recipe.seed + i for i in range(n)]
    uri = resolve_uri(tracking_uri, recipe.tracking["uri"])
    tags = {k: v for k, v in {**run_tags(recipe, command), **recipe.tracking["tags"]}.items() if k != Tag.SEED}
    name = recipe.tracking["run_name"] or recipe.name
    params = {k: v for k, v in recipe.flat().items() if k != "seed"}
    parent = RunRecord.start(uri, recipe.tracking["experiment"] or recipe.name, params=params,
                             tags={**tags, Tag.SEEDS: ",".join(map(str, seeds)),
                                   Tag.RUN_NAME: f"{name} seeds {seeds[0]}-{seeds[-1]}"})
    result = SeedsResult(parent.run_id, seeds)
    try:
        for i, seed in enumerate(seeds):
            if not quiet:
                print(f"seed {seed} ({i + 1} of {n})", file=sys.stderr, flush=True)
            child_tags = {Tag.SEED_GROUP: parent.run_id, Tag.RUN_NAME: f"{name} seed {seed}"}
            try:
                done = run(replace(recipe, seed=seed), tracking_uri=uri, quiet=quiet, command=command,
                           tags=child_tags, parent_run_id=parent.run_id)
            except RunFailed as exc:
                result.run_ids[seed], result.failed[seed] = exc.run_id, str(exc)
                print(f"error: seed {seed} failed: {exc}", file=sys.stderr)
                continue
            result.run_ids[seed], result.metrics[seed] = done.run_id, done.metrics
            if not quiet and i < n - 1:
                print(f"seed {seed}: run {done.run_id}", file=sys.stderr, flush=True)
    except Interrupted as exc:
        parent.finish("KILLED", f"interrupted by {exc} at seed {seed}; the seeds after it did not run")
        raise
    except BaseException as exc:
        parent.finish("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    summary = result.summary()
    parent.log({k: mean for k, (mean, _) in summary.items()} | {f"{k}_std": std for k, (_, std) in summary.items()},
               step=0)
    parent.set_tags({Tag.SEED_RUNS: ",".join(str(result.run_ids.get(s)) for s in seeds)})
    if result.failed:
        parent.finish("FAILED", "; ".join(f"seed {s}: {why}" for s, why in result.failed.items()))
    else:
        parent.finish("FINISHED")
    return result
