"""``retort run RECIPE --seeds N``: one recipe over N seeds, as N sibling runs under one parent run.

The seeds are the recipe's ``seed`` and the N - 1 after it. Each seed is an ordinary run (the same record
as ``retort run -s seed=S``) with three tags that group it: ``mlflow.parentRunId`` and
``retort.seed_group`` (both the parent's id) and ``retort.seed``. The parent run holds the recipe's
params but ``seed``, the tag ``retort.seeds`` (``0,1,2``), and per final metric the mean over the seeds
that finished (``test/accuracy``) and their standard deviation (``test/accuracy_std``). A failing seed is
recorded FAILED and the others still run; the parent is then FAILED, naming it.

A sweep with ``sweep.seeds`` runs each trial through :func:`run_seeds`: the parent is then the trial's run (a
child of the sweep's parent, with the trial's tags), and ``proceed`` stops the seeds after a pruned or failed
one.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
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
    errors: dict[int, RunFailed] = field(default_factory=dict, repr=False)  # seed -> the failure itself
    fit_seconds: float = 0.0  # training, over the seeds that finished

    def summary(self) -> dict[str, tuple[float, float]]:
        """Per final metric, (mean, standard deviation) over the seeds that finished (std 0 for one)."""
        keys = [k for m in self.metrics.values() for k in m]
        out = {}
        for key in dict.fromkeys(keys):
            values = [m[key] for m in self.metrics.values() if key in m]
            out[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        return out


def run_seeds(recipe: Any, n: int, *, tracking_uri: str | None = None, quiet: bool = False,
              command: str | None = None, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None,
              child_tags: Mapping[str, str] | None = None, callbacks: Sequence[Any] = (),
              started: Callable[[str], None] | None = None,
              proceed: Callable[[SeedsResult], bool] | None = None) -> SeedsResult:
    """Run ``recipe`` with seeds ``recipe.seed .. recipe.seed + n - 1`` under one parent MLflow run.

    ``parent_run_id`` nests that parent under another run; ``tags`` go on the parent (their run name replaces
    its own), ``child_tags`` and ``callbacks`` on every seed's run; ``started`` gets the parent's id once it
    exists; ``proceed``, asked after each seed, may stop the seeds after it (the parent then ends as usual)."""
    from retort.plugins.errors import failure, out_of_memory
    from retort.recipes.runner import build, run
    from retort.tracking import RunRecord, resolve_uri
    from retort.tracking.context import run_tags

    if not 1 <= n <= 1000:
        raise RecipeError(f"must be between 1 and 1000, got {n}", field="--seeds")
    try:
        build(recipe)  # bad input stops here, before the parent exists
    except Exception as exc:
        if out_of_memory(exc) and not isinstance(exc, RecipeError):  # as runner.run says it
            raise RunFailed(f"{failure(exc)} (building the model and data, before anything was recorded)",
                            None) from exc
        raise
    seeds = [recipe.seed + i for i in range(n)]
    uri = resolve_uri(tracking_uri, recipe.tracking["uri"])
    given = dict(tags or {})
    base_tags = {k: v for k, v in {**run_tags(recipe, command), **recipe.tracking["tags"]}.items() if k != Tag.SEED}
    name = given.get(Tag.RUN_NAME) or recipe.tracking["run_name"] or recipe.name
    params = {k: v for k, v in recipe.flat().items() if k != "seed"}
    if parent_run_id:
        given[Tag.PARENT_RUN_ID] = parent_run_id
    parent = RunRecord.start(uri, recipe.tracking["experiment"] or recipe.name, params=params,
                             tags={**base_tags, Tag.SEEDS: ",".join(map(str, seeds)),
                                   Tag.RUN_NAME: f"{name} seeds {seeds[0]}-{seeds[-1]}", **given})
    if started is not None:
        started(parent.run_id)
    result = SeedsResult(parent.run_id, seeds)
    seed = seeds[0]
    try:
        for i, seed in enumerate(seeds):
            if not quiet:
                print(f"seed {seed} ({i + 1} of {n})", file=sys.stderr, flush=True)
            each = {**(child_tags or {}), Tag.SEED_GROUP: parent.run_id, Tag.RUN_NAME: f"{name} seed {seed}"}
            try:
                done = run(replace(recipe, seed=seed), tracking_uri=uri, quiet=quiet, command=command,
                           tags=each, parent_run_id=parent.run_id, callbacks=callbacks)
            except RunFailed as exc:
                result.run_ids[seed], result.failed[seed], result.errors[seed] = exc.run_id, str(exc), exc
            else:
                result.run_ids[seed], result.metrics[seed] = done.run_id, done.metrics
                result.fit_seconds += done.fit_seconds
                if not quiet and i < n - 1:
                    print(f"seed {seed}: run {done.run_id}", file=sys.stderr, flush=True)
            if proceed is not None and i < n - 1 and not proceed(result):
                break
    except Interrupted as exc:
        parent.finish("KILLED", f"interrupted by {exc} at seed {seed}; the seeds after it did not run")
        raise
    except BaseException as exc:
        parent.finish("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    summary = result.summary()
    parent.log({k: mean for k, (mean, _) in summary.items()} | {f"{k}_std": std for k, (_, std) in summary.items()},
               step=0)
    parent.set_tags({Tag.SEED_RUNS: ",".join(str(result.run_ids.get(s)) for s in seeds if s in result.run_ids)})
    if result.failed:
        parent.finish("FAILED", "; ".join(f"seed {s}: {why}" for s, why in result.failed.items()))
    else:
        parent.finish("FINISHED")
    return result
