"""The plan of a sweep: everything a worker needs, checked before anything is recorded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from retort.plugins.errors import RecipeError
from retort.recipes.sweep.search import make_pruner, make_sampler
from retort.recipes.sweep.space import check_space
from retort.recipes.sweep.stop import StopRules
from retort.recipes.sweep.storage import PATIENCE, storage_target


@dataclass
class Plan:
    draft: Any                   # the recipe as written (recipes.Draft), read once
    overrides: list[Any]         # the command line's -s, then the space's fields fixed by them left out
    study: str
    storage: str                 # a journal file (absolute path) or a database URL
    tracking_uri: str
    experiment: str
    trials: int
    seed: int
    heartbeat: float
    command: str
    quiet: bool = False
    board: bool = False          # a live table on the terminal shows the trials: workers print no lines of their own
    parent_run_id: str = ""
    patience: float = PATIENCE   # seconds to wait out an unreachable study storage

    fixed: list[str] = field(default_factory=list)  # swept fields that a -s set: left out of the space
    stop: StopRules = field(default_factory=StopRules)  # when to stop before `trials`
    resume_changed: bool = False  # continue a study made for another base recipe
    base_changed: list[str] = field(default_factory=list)  # the fields that differ, when continued anyway

    def base(self) -> Any:
        from retort import recipes

        return recipes.load(self.draft, self.overrides)


@dataclass
class SweepResult:
    study: str
    storage: str                 # for people: passwords masked
    dashboard: str               # the optuna-dashboard command for this study
    parent_run_id: str
    trials: int
    counts: dict[str, int]       # COMPLETE, PRUNED, FAIL (re-queued trials left out), RUNNING, WAITING
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_trial: int | None = None
    best_run_id: str | None = None
    problems: list[str] = field(default_factory=list)   # what makes the command exit 1
    warnings: list[str] = field(default_factory=list)   # worth saying, the study is complete all the same
    wall_seconds: float = 0.0
    stopped: str | None = None   # the stop rule that ended the sweep before its trials

    @property
    def ok(self) -> bool:
        return self.best_value is not None and not self.problems


def make_plan(recipe: Any, overrides: Sequence[str], *, trials: int | None, workers: int, storage: str | None,
          study: str | None, seed: int | None, heartbeat: float, tracking_uri: str | None, command: str | None,
          quiet: bool, patience: float = PATIENCE) -> tuple[Plan, Any]:
    from retort import recipes
    from retort.recipes.schema import Recipe
    from retort.tracking.store import resolve_uri

    draft = recipes.Draft(recipe.to_dict(), recipe.source, recipe.name) if isinstance(recipe, Recipe) \
        else recipes.read(recipe)
    sets = list(overrides)
    base = recipes.load(draft, sets)
    sets, fixed = _fix(base, sets)
    if fixed:
        base = recipes.load(draft, sets)
    source = base.source
    sweep_spec = base.sweep
    if sweep_spec is None:
        raise RecipeError("the recipe has no sweep section; add one, e.g. sweep: {space: {optimizer.lr: "
                          "{low: 1.0e-4, high: 1.0e-1, log: true}}}", field="sweep", source=source)
    if not sweep_spec["space"] and fixed:
        raise RecipeError(f"every field of sweep.space is set by -s ({', '.join(fixed)}): nothing is left to search; "
                          "drop one of those -s", field="sweep.space", source=source)
    if not sweep_spec["space"]:
        raise RecipeError("sweep.space is empty: name at least one field to search, e.g. optimizer.lr: "
                          "{low: 1.0e-4, high: 1.0e-1, log: true}", field="sweep.space", source=source)
    for name, value, low in (("--trials", trials, 1), ("--workers", workers, 1)):
        if value is not None and value < low:
            raise RecipeError(f"must be at least {low}, got {value}", field=name)
    if not heartbeat > 0:
        raise RecipeError(f"must be above 0 seconds, got {heartbeat}", field="--heartbeat")
    if not patience >= 0:
        raise RecipeError(f"must be 0 seconds or more, got {patience}", field="--storage-patience")
    study_name = study if study is not None else base.name
    if not study_name.strip():
        raise RecipeError("the study name is empty", field="--study")
    check_space(base, draft, sets)
    sampler_seed = seed if seed is not None else (sweep_spec["seed"] if sweep_spec["seed"] is not None else base.seed)
    make_sampler(base, sampler_seed)  # unknown sampler_args and missing packages are input errors
    make_pruner(base)
    uri = resolve_uri(tracking_uri, base.tracking["uri"])
    target = storage_target(storage, uri, study_name, workers)
    plan = Plan(draft=draft, overrides=sets, fixed=fixed, study=study_name, storage=target, tracking_uri=uri,
                experiment=base.tracking["experiment"] or base.name,
                trials=trials if trials is not None else sweep_spec["trials"], seed=sampler_seed,
                heartbeat=float(heartbeat), command=command or "", quiet=quiet, patience=float(patience))
    return plan, base


def _fix(base: Any, overrides: list[Any]) -> tuple[list[Any], list[str]]:
    """A ``-s`` on a swept field fixes it: the field leaves the space (said, and tagged on the parent run)
    rather than being silently overridden by the sampled value. Returns the overrides, with the reduced
    space appended when any field was fixed, and the fixed paths."""
    from retort.recipes import parse_override
    from retort.recipes.sweep.space import canonical

    space = (base.sweep or {}).get("space") or {}
    swept = {canonical(path, base): path for path in space}
    fixed = []
    for text in overrides:
        path = ".".join(parse_override(text)[0]) if isinstance(text, str) else text[0]
        if not path.startswith("sweep.") and canonical(path, base) in swept:
            fixed.append(swept[canonical(path, base)])
    if not fixed:
        return overrides, []
    reduced = {k: v for k, v in space.items() if k not in fixed}
    return [*overrides, ("sweep.space", reduced)], sorted(set(fixed))
