"""Which runs to compare: named runs, an experiment's runs, a sweep's trials, read from the store in pages.

One ``search_runs`` page (1000 runs) gives every run's params, tags and *last* metric values.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from retort.plugins.errors import RecipeError
from retort.tracking.compare.values import lower_is_better
from retort.tracking.vocabulary import Metric, Param, Tag

PAGE = 1000  # search_runs page size (a tracking server's default maximum)


@dataclass
class Run:
    run_id: str
    name: str
    experiment_id: str
    status: str
    state: str  # the status, or the sweep's trial state (PRUNED) when the run is tagged with one
    start_time: int
    params: dict[str, str]
    tags: dict[str, str]
    last: dict[str, float]

    @property
    def seed(self) -> str | None:
        return self.params.get(Param.SEED, self.tags.get(Tag.SEED))

    @property
    def parent(self) -> str | None:
        return self.tags.get(Tag.PARENT_RUN_ID)


@dataclass
class Sweep:
    run: Run
    metric: str
    direction: str  # minimize | maximize


@dataclass
class Selection:
    uri: str
    client: Any
    runs: list[Run]
    experiments: dict[str, str]  # id -> name, of the selected runs
    sweep: Sweep | None = None


def _to_run(r: Any) -> Run:
    tags = dict(r.data.tags)
    status = r.info.status
    trial = tags.get(Tag.TRIAL_STATE, "").upper()
    state = trial if trial in ("PRUNED", "FAIL", "FAILED") and status != "RUNNING" else status
    if state == "FAIL":
        state = "FAILED"
    return Run(run_id=r.info.run_id, name=r.info.run_name or tags.get(Tag.RUN_NAME, ""),
               experiment_id=r.info.experiment_id, status=status, state=state, start_time=r.info.start_time or 0,
               params=dict(r.data.params), tags=tags, last=dict(r.data.metrics))


def _all_experiments(client: Any) -> list[Any]:
    from mlflow.entities import ViewType

    out, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ALL, max_results=PAGE, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def search(client: Any, experiment_ids: Sequence[str], filter_string: str = "", deleted: bool = False) -> list[Run]:
    """Every run matching ``filter_string``, read in pages of :data:`PAGE`."""
    from mlflow.entities import ViewType

    view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
    runs, token = [], None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string, run_view_type=view, max_results=PAGE,
                                  page_token=token)
        runs += [_to_run(r) for r in page]
        token = page.token
        if not token:
            return runs


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _find_experiment(client: Any, name_or_id: str, experiments: list[Any], uri: str) -> Any:
    for exp in experiments:
        if exp.name == name_or_id:
            return exp
    for exp in experiments:
        if exp.experiment_id == name_or_id:
            return exp
    names = ", ".join(sorted(e.name for e in experiments)) or "none"
    raise RecipeError(f"no experiment {name_or_id!r} in {uri}; experiments: {names}", field="--experiment")


def select(uri: str, run_ids: Sequence[str] = (), experiments: Sequence[str] = (), sweeps: Sequence[str] = (),
           quiet: bool = True) -> Selection:
    """The runs named by ids, experiments and sweeps (their union, in that order), read from ``uri``.

    A sweep's parent run (a parent of other runs, or tagged ``retort.sweep=parent``) is left out of an
    experiment's runs (its trials are there); so is a trial's run that is the parent of its seeds' runs
    (``sweep.seeds``), which stand for it, in a sweep's runs too. With nothing named, the runs of the
    experiment holding the most recent run.
    """
    from retort.tracking.store import open_store

    client = open_store(uri)
    all_exps = _all_experiments(client)
    exp_ids = [e.experiment_id for e in all_exps]
    names = {e.experiment_id: e.name for e in all_exps}
    runs: list[Run] = []
    sweep: Sweep | None = None

    wanted = list(dict.fromkeys(run_ids))
    if wanted:
        found: dict[str, Run] = {}
        for i in range(0, len(wanted), 100):
            chunk = [r for r in wanted[i: i + 100] if re.fullmatch(r"[\w-]+", r)]
            if chunk:
                where = f"attributes.run_id IN ({', '.join(_quote(r) for r in chunk)})"
                found.update((r.run_id, r) for r in search(client, exp_ids, where, deleted=True))
        missing = [r for r in wanted if r not in found]
        if missing:
            raise RecipeError(f"no run {', '.join(repr(m) for m in missing)} in {uri}", field="RUN_ID")
        runs += [found[r] for r in wanted]

    for parent_id in sweeps:
        parent = search(client, exp_ids, f"attributes.run_id = {_quote(parent_id)}", deleted=True) \
            if re.fullmatch(r"[\w-]+", parent_id) else []
        if not parent:
            raise RecipeError(f"no run {parent_id!r} in {uri} (a sweep is named by its parent run id, which "
                              f"`retort sweep` prints as parent_run_id)", field="--sweep")
        children = search(client, exp_ids, f"tags.mlflow.parentRunId = {_quote(parent_id)}")
        if not children:
            raise RecipeError(f"run {parent_id!r} has no child runs: it is not a sweep's parent run, or the "
                              f"sweep has no trials yet", field="--sweep")
        seeded = search(client, exp_ids, f"tags.`{Tag.SWEEP_PARENT}` = {_quote(parent_id)}")
        if seeded:  # sweep.seeds > 1: each trial's run is the parent of its seeds' runs, which compare groups
            trials = {r.parent for r in seeded}
            children = [r for r in children if r.run_id not in trials] + seeded
        runs += sorted(children, key=lambda r: r.start_time)
        sweep = sweep or sweep_of(parent[0])

    for name in experiments:
        exp = _find_experiment(client, name, all_exps, uri)
        found_runs = search(client, [exp.experiment_id])
        parents = {r.parent for r in found_runs if r.parent}
        found_runs = [r for r in found_runs if r.run_id not in parents and r.tags.get(Tag.SWEEP) != "parent"]
        if not found_runs:
            raise RecipeError(f"experiment {exp.name!r} has no runs in {uri}", field="--experiment")
        runs += sorted(found_runs, key=lambda r: r.start_time)

    if not (wanted or sweeps or experiments):
        latest = client.search_runs(exp_ids, "", max_results=1, order_by=["attributes.start_time DESC"]) \
            if exp_ids else []
        if not latest:
            raise RecipeError(f"the store {uri} has no runs; run something first", field="--tracking-uri")
        exp_id = latest[0].info.experiment_id
        if not quiet:
            print(f"comparing experiment {names.get(exp_id)!r}, which holds the latest run "
                  f"(name others with --experiment, --sweep or run ids)", file=sys.stderr)
        return select(uri, experiments=[exp_id])

    runs = list({r.run_id: r for r in runs}.values())
    used = {r.experiment_id: names.get(r.experiment_id, r.experiment_id) for r in runs}
    return Selection(uri=uri, client=client, runs=runs, experiments=used, sweep=sweep)


def sweep_of(parent: Run) -> Sweep:
    """The sweep's metric and direction: the parent's tags, else its params, else val/loss minimized."""
    metric = parent.tags.get(Tag.SWEEP_METRIC) or parent.params.get("sweep.metric") or Metric.VAL_LOSS
    direction = parent.tags.get(Tag.SWEEP_DIRECTION) or parent.params.get("sweep.direction")
    if direction not in ("minimize", "maximize"):
        direction = "minimize" if lower_is_better(metric) or metric == Metric.VAL_LOSS else "maximize"
    return Sweep(run=parent, metric=metric, direction=direction)

