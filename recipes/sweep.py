"""``retort sweep``: Optuna searches any recipe field; every trial is a full recipe run, recorded as an MLflow
child run of the sweep's parent run.

The engine, as a reader should see it::

    parent   check the recipe's sweep section and every value it can sample (bad input stops here)
             open the study: a journal file next to the MLflow store, or PostgreSQL for many machines
             under the study lock: create or load the study, create or reopen the parent MLflow run
             run K workers: this process is worker 0, K - 1 spawned Pythons the others (started first, so
             that they import torch while this process prepares); forward SIGINT/SIGTERM to them
             retry the trials of workers that died; record the best trial's recipe, importances and plots
    worker   until the study holds N trials:
                 under the study lock: retry lost trials, count, ask     (exactly N over all workers)
                 sample -> the trial's recipe -> recipes.run(pruning callback, child-run tags) -> tell
             a heartbeat thread stamps the running trial every few seconds

A trial's recipe is what ``retort run RECIPE -s <your -s> -s <sampled path=value>...`` would run (the
overrides applied to the recipe as written, then validated), so sweeping ``optimizer.name`` or ``loss.name``
behaves as it does on the command line.

A trial's value is the best epoch's value of ``sweep.metric`` (lowest when minimizing): the runner keeps and
tests the best epoch's weights, and the running best, reported each epoch, is a curve on which a pruner
ranks trials early much as they finally rank (scripts/bench_sweep.py: with hyperband the pruned sweep found
the unpruned sweep's best in 5 of 5 seeds; with last-epoch values, in 1 of 5).

Trial states: COMPLETE; PRUNED (stopped by the pruner; its MLflow run ends FINISHED, tagged
``retort.trial_state=PRUNED``); FAIL (an exception, a non-finite value, an invalid recipe; its MLflow run
ends FAILED with ``retort.failure``). A trial whose worker died (SIGKILL, lost machine) or was interrupted
is failed, marked ``retort:retried`` and queued again with the same params; its MLflow run is closed as
KILLED. ``--trials N`` counts every trial but those re-queued ones.

Why ask/tell rather than ``study.optimize``: exactly N trials over independent workers need the count
and the ask under one lock, and Optuna's own heartbeat does not cover journal storage; retort's heartbeat
(system attrs ``retort:owner``, ``retort:heartbeat``) works for both, and finds a dead worker on the same
machine at once by its process id.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import json
import math
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retort.plugins.errors import Interrupted, RecipeError, RunFailed, failure
from retort.recipes.cli import leave
from retort.tracking.vocabulary import StudyAttr, Tag

HELP = "Optuna sweep of a recipe's sweep section: one MLflow child run per trial, crash-safe, one machine or many"
EXAMPLES = """examples:
  retort sweep digits-mlp                        # the recipe's sweep section: 20 trials, tpe, hyperband
  retort sweep digits-mlp --trials 40 --workers 2           # two worker processes on this machine
  retort sweep digits-mlp -s sweep.sampler=random -s sweep.pruner=median --seed 7
  retort sweep digits-mlp -s 'sweep.space={optimizer.lr: {low: 1.0e-4, high: 0.1, log: true}}'
  retort sweep digits-mlp --study lr-bs          # run again to resume: only the missing trials run
  retort sweep digits-mlp --storage postgresql://me@db-host/optuna --tracking-uri http://mlflow:5000
                                                 # the same command on every machine shares one study
  optuna-dashboard optuna/digits-mlp.journal     # watch the study (the path is printed at the end)

The study: a journal file <folder of mlflow.db>/optuna/<study>.journal by default (safe for many
workers on one machine); --storage postgresql://... for many machines. Prints best_value, best_params
and parent_run_id last; the parent run holds best_recipe.yaml (retort run runs it), importances.json
and plots/."""

OWNER, BEAT, RETRIED = StudyAttr.OWNER, StudyAttr.BEAT, StudyAttr.RETRIED
RUN_ID, RETRY_OF, FAILURE = StudyAttr.RUN_ID, StudyAttr.RETRY_OF, StudyAttr.FAILURE
GRACE_BEATS = 6                 # a trial is lost after this many missed heartbeats
PATIENCE = 120.0                # seconds a sweep waits for its study storage to come back before it stops


# --- command line -----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE",
                        help="a recipe file or a shipped recipe's name, with a sweep section")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override a field by dotted path (repeatable), e.g. -s sweep.trials=10")
    parser.add_argument("--trials", type=int, metavar="N",
                        help="trials the study should hold, over all workers (default: sweep.trials)")
    parser.add_argument("--workers", type=int, default=1, metavar="K",
                        help="worker processes on this machine, each with a fair share of the CPU threads (default 1)")
    parser.add_argument("--storage", metavar="URL",
                        help="the study: a journal file path, postgresql://... (many machines) or sqlite:///... "
                             "(one worker); default: <folder of mlflow.db>/optuna/<study>.journal")
    parser.add_argument("--study", metavar="NAME",
                        help="study name (default: the recipe's name); the same name resumes")
    parser.add_argument("--seed", type=int, metavar="S",
                        help="sampler seed (default: sweep.seed, else the recipe's seed); worker i uses S + i")
    parser.add_argument("--heartbeat", type=float, default=10.0, metavar="SECONDS",
                        help=f"heartbeat of a running trial; a trial silent for {GRACE_BEATS} beats is retried "
                             "(a dead worker on this machine is seen at once; default 10)")
    parser.add_argument("--storage-patience", type=float, default=PATIENCE, metavar="SECONDS",
                        help="how long to wait out an unreachable study storage (database restarting, network or "
                             f"disk trouble) before stopping; the same command resumes (default {PATIENCE:g})")


def main(args: argparse.Namespace) -> int:
    from retort.tracking.context import command_line

    try:
        result = sweep(args.recipe, overrides=args.overrides, trials=args.trials, workers=args.workers,
                       storage=args.storage, study=args.study, seed=args.seed, heartbeat=args.heartbeat,
                       patience=args.storage_patience, tracking_uri=args.tracking_uri, quiet=args.quiet,
                       command=command_line())
    except StorageUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        c = result.counts
        print(f"trials: {c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed of {result.trials} "
              f"(study {result.study!r} in {result.storage})")
        print(f"dashboard: {result.dashboard}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in result.problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"best_value: {result.best_value if result.best_value is not None else math.nan!r}")
    print(f"best_params: {json.dumps(result.best_params)}")
    print(f"parent_run_id: {result.parent_run_id}")
    return 0 if result.ok else 1


# --- the plan: everything a worker needs, checked before anything is recorded ----------------------

@dataclass
class Plan:
    raw: dict[str, Any]          # the recipe as written, with the command line's overrides
    source: str | None
    study: str
    storage: str                 # a journal file (absolute path) or a database URL
    tracking_uri: str
    experiment: str
    trials: int
    seed: int
    heartbeat: float
    command: str
    quiet: bool = False
    parent_run_id: str = ""
    patience: float = PATIENCE   # seconds to wait out an unreachable study storage

    def base(self) -> Any:
        from retort.recipes.schema import resolve

        return resolve(copy.deepcopy(self.raw), source=self.source, default_name=self.raw["name"])


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

    @property
    def ok(self) -> bool:
        return self.best_value is not None and not self.problems


def _plan(recipe: Any, overrides: Sequence[str], *, trials: int | None, workers: int, storage: str | None,
          study: str | None, seed: int | None, heartbeat: float, tracking_uri: str | None, command: str | None,
          quiet: bool, patience: float = PATIENCE) -> tuple[Plan, Any]:
    from retort import recipes
    from retort.recipes.schema import Recipe, resolve
    from retort.recipes.yamlio import load_file
    from retort.tracking.store import resolve_uri

    if isinstance(recipe, Recipe):
        raw, source = recipe.to_dict(), recipe.source
        recipes.apply_overrides(raw, list(overrides))
    else:
        path = recipes.find(recipe)
        raw, source = load_file(path) or {}, str(path)
        if not isinstance(raw, dict):
            raise RecipeError(f"a recipe is a mapping of sections, got {type(raw).__name__}", source=source)
        recipes.apply_overrides(raw, list(overrides))
        raw.setdefault("name", path.stem)
    base = resolve(copy.deepcopy(raw), source=source, default_name=str(raw.get("name") or "recipe"))
    raw["name"] = base.name
    for section in ("data", "model", "loss", "optimizer"):  # sections left to their defaults, named
        if raw.get(section) is None:
            raw[section] = {"name": getattr(base, section)["name"]}
    sweep_spec = base.sweep
    if sweep_spec is None:
        raise RecipeError("the recipe has no sweep section; add one, e.g. sweep: {space: {optimizer.lr: "
                          "{low: 1.0e-4, high: 1.0e-1, log: true}}}", field="sweep", source=source)
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
    check_space(base, raw)
    sampler_seed = seed if seed is not None else (sweep_spec["seed"] if sweep_spec["seed"] is not None else base.seed)
    make_sampler(base, sampler_seed)  # unknown sampler_args and missing packages are input errors
    make_pruner(base)
    uri = resolve_uri(tracking_uri, base.tracking["uri"])
    target = _storage_target(storage, uri, study_name, workers)
    plan = Plan(raw=raw, source=source, study=study_name, storage=target, tracking_uri=uri,
                experiment=base.tracking["experiment"] or base.name,
                trials=trials if trials is not None else sweep_spec["trials"], seed=sampler_seed,
                heartbeat=float(heartbeat), command=command or "", quiet=quiet, patience=float(patience))
    return plan, base


# --- the search space ------------------------------------------------------------------------------

def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _encode(choice: Any) -> Any:
    """Optuna's categorical values are scalars; a list or mapping choice is searched as its JSON text."""
    return choice if _scalar(choice) else json.dumps(choice, sort_keys=True)


def _params(base: Any) -> dict[str, tuple[Any, str]]:
    """``path -> (SpaceParam, kind)`` of the base recipe's sweep space."""
    from retort.recipes.schema import SpaceParam

    flat = base.flat()
    out = {}
    for path, spec in base.sweep["space"].items():
        param = SpaceParam(**spec)
        out[path] = (param, param.kind(flat.get(path)))
    return out


def suggest(trial: Any, base: Any) -> dict[str, Any]:
    """Sample every field of the space on an Optuna trial: ``path -> the recipe value``."""
    values: dict[str, Any] = {}
    for path, (p, kind) in _params(base).items():
        if kind == "choices":
            encoded = [_encode(c) for c in p.choices]
            values[path] = p.choices[encoded.index(trial.suggest_categorical(path, encoded))]
        elif kind == "int":
            values[path] = trial.suggest_int(path, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[path] = trial.suggest_float(path, float(p.low), float(p.high), step=p.step, log=p.log)
    return values


def decode(params: Mapping[str, Any], base: Any) -> dict[str, Any]:
    """Optuna's params of a trial -> recipe values (JSON text of list choices read back)."""
    space = _params(base)
    out = {}
    for path, value in params.items():
        p, kind = space.get(path, (None, None))
        if kind == "choices":
            encoded = [_encode(c) for c in p.choices]
            value = p.choices[encoded.index(value)] if value in encoded else value
        out[path] = value
    return out


def applied(values: Mapping[str, Any], base: Any) -> dict[str, Any]:
    """The sampled values with the sweep's lr/batch-size rule applied: what the trial's recipe gets."""
    out = dict(values)
    scaling = base.sweep["lr_scaling"]
    if scaling is not None and scaling["batch_size"] in values:
        lr = float(values.get(scaling["lr"], base.flat()[scaling["lr"]]))
        ratio = float(values[scaling["batch_size"]]) / scaling["reference"]
        out[scaling["lr"]] = lr * (ratio if scaling["rule"] == "linear" else math.sqrt(ratio))
    return out


_SECTION_KINDS = {"data": "data", "model": "model", "loss": "loss", "optimizer": "optimizer",
                  "scheduler": "scheduler", "callbacks": "callback", "metrics": "metric"}


def _set(raw: dict[str, Any], path: str, value: Any) -> None:
    """``raw[a][b]... = value`` by dotted path, as ``-s a.b=value`` would: a plugin given by name becomes
    ``{name: ...}``, and an alias of the field set (``eta`` for ``lr``) is dropped."""
    from retort import plugins

    parts = path.split(".")
    node: Any = raw
    for part in parts[:-1]:
        key: Any = int(part) if isinstance(node, list) else part
        child = node[key] if isinstance(node, list) else node.get(part)
        if child is None:
            child = {}
        elif isinstance(child, str):
            child = {"name": child}
        node[key] = child
        node = child
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
        return
    node[last] = value
    kind = _SECTION_KINDS.get(parts[0])
    if kind and len(parts) >= 2 and isinstance(node.get("name"), str) and last != "name":
        try:
            aliases = plugins.get(kind, node["name"]).aliases
        except plugins.PluginError:
            return
        canon = aliases.get(last, last)
        for other in [k for k in node if k != last and aliases.get(k, k) == canon]:
            del node[other]


def trial_recipe(raw: Mapping[str, Any], values: Mapping[str, Any], source: str | None = None) -> Any:
    """The recipe a trial runs: ``raw`` (the recipe as written) with ``values`` set by dotted path, validated."""
    from retort.recipes.schema import resolve

    trial_raw = copy.deepcopy(dict(raw))
    for path in sorted(values, key=lambda p: (not p.endswith(".name"), p)):  # a plugin's name before its fields
        _set(trial_raw, path, copy.deepcopy(values[path]))
    return resolve(trial_raw, source=source, default_name=str(raw.get("name") or "recipe"))


def check_space(base: Any, raw: Mapping[str, Any]) -> None:
    """Every value the space can sample makes a valid recipe (each field at its ends and choices, the
    others as in the recipe); raises :class:`RecipeError` naming the field and the value."""
    flat = base.flat()
    scaling = base.sweep["lr_scaling"]
    if scaling is not None and (isinstance(flat[scaling["lr"]], bool)
                                or not isinstance(flat[scaling["lr"]], (int, float))):
        raise RecipeError(f"{scaling['lr']!r} is {flat[scaling['lr']]!r}, not a learning rate",
                          field="sweep.lr_scaling.lr", source=base.source)
    for path, (p, kind) in _params(base).items():
        if kind == "choices":
            candidates = list(p.choices)
        elif kind == "int":
            candidates = [int(p.low), int(p.low) + (int(p.high) - int(p.low)) // int(p.step or 1) * int(p.step or 1)]
        else:
            candidates = [float(p.low), float(p.high)]
        for value in candidates:
            try:
                trial_recipe(raw, applied({path: value}, base), base.source)
            except RecipeError as exc:
                what = "choice" if kind == "choices" else "value"
                raise RecipeError(f"the {what} {value!r} makes an invalid recipe: {exc.message}"
                                  + (f" (at {exc.field})" if exc.field and exc.field != path else ""),
                                  field=f"sweep.space.{path}", source=base.source) from None


# --- samplers and pruners ---------------------------------------------------------------------------

def _grid(base: Any) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for path, (p, kind) in _params(base).items():
        if kind == "choices":
            grid[path] = [_encode(c) for c in p.choices]
        elif kind == "int":
            grid[path] = list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
        else:
            n = math.floor((p.high - p.low) / p.step + 1e-9)
            grid[path] = [p.low + i * p.step for i in range(n + 1)]
    return grid


def make_sampler(base: Any, seed: int) -> Any:
    """The recipe's sampler by name, with ``sweep.sampler_args``; bad arguments are :class:`RecipeError`."""
    import importlib.util

    import optuna

    sweep_spec = base.sweep
    name, args = sweep_spec["sampler"], dict(sweep_spec["sampler_args"])
    S = optuna.samplers
    if name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise RecipeError("the cmaes sampler needs the Python package 'cmaes', which is not installed "
                          "(pip install cmaes); valid choices without it: tpe, random, gp, qmc, grid",
                          field="sweep.sampler", source=base.source)
    factories: dict[str, Any] = {
        "tpe": S.TPESampler, "random": S.RandomSampler, "gp": S.GPSampler, "cmaes": S.CmaEsSampler,
        "qmc": lambda **kw: S.QMCSampler(**{"scramble": True, **kw}),
        "grid": lambda **kw: _grid_sampler(_grid(base), **kw),
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return factories[name](seed=seed, **args)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"the {name} sampler does not take these arguments: {exc}", field="sweep.sampler_args",
                          source=base.source) from None


def _max_epochs(base: Any) -> int:
    space = _params(base)
    if "trainer.max_epochs" in space:
        p, kind = space["trainer.max_epochs"]
        return int(max(p.choices) if kind == "choices" else p.high)
    return int(base.trainer["max_epochs"])


def make_pruner(base: Any, name: str | None = None, args: Mapping[str, Any] | None = None) -> Any:
    """The recipe's pruner by name, with ``sweep.pruner_args``. Steps are epochs (1-based); hyperband's
    resources run from 1 to the recipe's max_epochs. ``patient`` wraps ``pruner_args.wrapped`` (median)."""
    import optuna

    from retort.recipes.schema import PRUNERS

    name = name or base.sweep["pruner"]
    args = dict(base.sweep["pruner_args"] if args is None else args)
    P = optuna.pruners
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name == "patient":
                wrapped = args.pop("wrapped", "median")
                if wrapped not in PRUNERS or wrapped == "patient":
                    raise ValueError(f"wrapped must be one of {', '.join(p for p in PRUNERS if p != 'patient')}, "
                                     f"got {wrapped!r}")
                patience, min_delta = args.pop("patience", 3), args.pop("min_delta", 0.0)
                inner = None if wrapped == "none" else make_pruner(base, wrapped, args)
                return P.PatientPruner(inner, patience=patience, min_delta=min_delta)
            factories: dict[str, Any] = {
                "none": P.NopPruner, "median": P.MedianPruner,
                "percentile": lambda **kw: P.PercentilePruner(**{"percentile": 25.0, **kw}),
                "successive_halving": P.SuccessiveHalvingPruner,
                "hyperband": lambda **kw: P.HyperbandPruner(
                    **{"min_resource": 1, "max_resource": _max_epochs(base), "reduction_factor": 3, **kw}),
            }
            return factories[name](**args)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"the {name} pruner does not take these arguments: {exc}", field="sweep.pruner_args",
                          source=base.source) from None


def _grid_sampler_class() -> type:
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler, less its ``study.stop()`` (which only works inside ``optimize``): the
        worker loop asks :meth:`is_exhausted` itself."""

        def after_trial(self, *args: Any, **kwargs: Any) -> None:
            pass

    return GridSampler


def _grid_sampler(grid: dict[str, list[Any]], **kwargs: Any) -> Any:
    return _grid_sampler_class()(grid, **kwargs)


# --- storage and the study lock ---------------------------------------------------------------------

def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "study"


def default_journal(tracking_uri: str, study: str) -> Path:
    """``<folder of mlflow.db>/optuna/<study>.journal``; ``./optuna/<study>.journal`` for other stores."""
    from retort.tracking.store import sqlite_path

    db = sqlite_path(tracking_uri)
    folder = (db.parent if db is not None else Path(".")) / "optuna"
    return (folder / f"{_safe_name(study)}.journal").resolve()


def _kind(target: str) -> str:
    scheme = target.split("://", 1)[0].lower() if "://" in target else ""
    if not scheme:
        return "journal"
    if scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        return "postgresql"
    if scheme.split("+", 1)[0] == "sqlite":
        return "sqlite"
    raise RecipeError(f"unsupported study storage {scheme}://...; valid: a journal file path (one machine), "
                      "postgresql://USER@HOST/DB (many machines), sqlite:///FILE (one worker)", field="--storage")


def _storage_target(storage: str | None, tracking_uri: str, study: str, workers: int) -> str:
    if storage is None:
        return str(default_journal(tracking_uri, study))
    kind = _kind(storage)
    if kind == "journal":
        path = Path(storage).expanduser()
        if path.is_dir():
            raise RecipeError(f"{storage!r} is a folder; give a journal file path, e.g. {path / 'study.journal'}",
                              field="--storage")
        return str(path.resolve())
    if kind == "sqlite" and workers > 1:
        raise RecipeError("a SQLite study cannot take parallel workers (\"database is locked\"); leave --storage "
                          "out for a journal file, or use postgresql://...", field="--storage")
    if kind == "postgresql" and storage.lower().startswith("postgres://"):
        storage = "postgresql://" + storage.split("://", 1)[1]
    return storage


def _display(target: str) -> str:
    from retort.tracking.context import mask

    return mask(target)


def open_storage(target: str, patience: float = PATIENCE) -> Any:
    """An Optuna storage for ``target``: a journal file, or an RDB whose connections are checked before use
    (PostgreSQL closes idle ones; Optuna pre-pings only MySQL). Once open, every call on it rides out an
    outage (database restarting, network down, disk full) of up to ``patience`` seconds; see
    :func:`patiently`. A storage that cannot be opened at all is bad input."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if _kind(target) == "journal":
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        return _patient(optuna.storages.JournalStorage(JournalFileBackend(target)), target, patience)
    try:
        if _kind(target) == "postgresql":
            with _PostgresLock(target, ""):  # processes creating Optuna's tables at once would collide
                storage = optuna.storages.RDBStorage(target, engine_kwargs={"pool_pre_ping": True})
        else:
            storage = optuna.storages.RDBStorage(target, engine_kwargs={"pool_pre_ping": True})
    except Exception as exc:
        raise RecipeError(f"cannot open the study storage {_display(target)}: {type(exc).__name__}: {exc}",
                          field="--storage") from None
    return _patient(storage, target, patience)


class StorageUnavailable(RuntimeError):
    """The study storage stayed unreachable for the whole patience: the sweep stops (exit 1); every finished
    trial is recorded, and the same command resumes."""


def _transient(exc: BaseException) -> bool:
    """An outage worth waiting out: a database connection lost or refused, a full or failing disk."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        return True
    names = {c.__module__.split(".", 1)[0] + "." + c.__name__ for c in type(exc).__mro__}
    return bool(names & {"sqlalchemy.OperationalError", "sqlalchemy.InterfaceError", "psycopg.OperationalError",
                         "psycopg2.OperationalError", "optuna.StorageInternalError"})


def patiently(call: Any, target: str, patience: float = PATIENCE) -> Any:
    """``call()``, retried with growing pauses (0.5 s to 5 s) while it fails with an outage
    (:func:`_transient`), for up to ``patience`` seconds; then :class:`StorageUnavailable`."""
    deadline, pause = None, 0.5
    while True:
        try:
            return call()
        except Exception as exc:
            if not _transient(exc):
                raise
            what = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            now = time.monotonic()
            if deadline is None:
                deadline = now + patience
                print(f"warning: the study storage {_display(target)} is unreachable ({what}); retrying for up to "
                      f"{patience:g} s", file=sys.stderr, flush=True)
            if now >= deadline:
                raise StorageUnavailable(f"the study storage {_display(target)} was unreachable for {patience:g} s "
                                         f"({what}); every finished trial is recorded: run the same command again "
                                         "to resume") from None
            time.sleep(min(pause, max(0.0, deadline - now)))
            pause = min(pause * 2, 5.0)


def _patient(storage: Any, target: str, patience: float) -> Any:
    """``storage`` with each of Optuna's storage methods made :func:`patiently` (same object, same class)."""
    import functools

    import optuna

    for name in dir(optuna.storages.BaseStorage):
        if name.startswith("_") or not callable(getattr(storage, name, None)):
            continue
        method = getattr(storage, name)

        @functools.wraps(method)
        def wrapper(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            return patiently(lambda: _method(*args, **kwargs), target, patience)

        setattr(storage, name, wrapper)
    return storage


class _FileLock:
    """An exclusive ``flock`` on a file; the kernel releases it when the process dies."""

    def __init__(self, path: Path):
        self.path = path
        self._file: Any = None

    def __enter__(self) -> _FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")  # held until __exit__
        fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


class _PostgresLock:
    """A PostgreSQL advisory lock per study (the server releases it if the holder's connection drops)."""

    def __init__(self, url: str, study: str, patience: float = PATIENCE):
        self.dsn = "postgresql://" + url.split("://", 1)[1]  # libpq reads SQLAlchemy's URL without the driver
        self.patience = patience
        self.key = int.from_bytes(hashlib.sha1(f"retort:{study}".encode()).digest()[:8], "big", signed=True)
        self._conn: Any = None

    def _execute(self, sql: str) -> None:
        import psycopg

        for attempt in (1, 2):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.dsn, autocommit=True)
                self._conn.execute(sql, (self.key,))
                return
            except psycopg.OperationalError:
                self._conn = None  # dropped while idle: reconnect once
                if attempt == 2:
                    raise

    def __enter__(self) -> _PostgresLock:
        patiently(lambda: self._execute("SELECT pg_advisory_lock(%s)"), self.dsn, self.patience)
        return self

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(Exception):
            self._execute("SELECT pg_advisory_unlock(%s)")


def study_lock(target: str, study: str, patience: float = PATIENCE) -> Any:
    """The lock under which workers count and ask, so that a study gets exactly N trials."""
    kind = _kind(target)
    if kind == "postgresql":
        return _PostgresLock(target, study, patience)
    if kind == "sqlite":
        db = Path(target.split("://", 1)[1][1:].split("?", 1)[0])  # sqlite:///rel.db, sqlite:////abs.db
        return _FileLock(db.with_name(f"{db.name}.{_safe_name(study)}.retort-lock"))
    return _FileLock(Path(f"{target}.retort-lock"))


def dashboard_command(target: str) -> str:
    import shlex

    return f"optuna-dashboard {shlex.quote(_display(target))}"


# --- which trials count, and the ones whose worker was lost -----------------------------------------

def _void(trial: Any) -> bool:
    return RETRIED in trial.system_attrs


def tally(trials: Sequence[Any]) -> dict[str, int]:
    """Trials by state, re-queued ones left out (their repeats count instead)."""
    counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for t in trials:
        if not _void(t):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def _identity() -> dict[str, Any]:
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "ctime": psutil.Process().create_time()}


def _gone(owner: Mapping[str, Any]) -> bool:
    """The owner ran on this machine and its process has ended (or its pid now names another process)."""
    import psutil

    if owner.get("host") != socket.gethostname() or "pid" not in owner:
        return False
    try:
        proc = psutil.Process(int(owner["pid"]))
        return proc.status() == psutil.STATUS_ZOMBIE or abs(proc.create_time() - float(owner["ctime"])) > 1.0
    except psutil.NoSuchProcess:
        return True


def _lost(trial: Any, now: float) -> str | None:
    owner = trial.system_attrs.get(OWNER)
    if not owner:
        return None  # not run by retort: leave it alone
    who = f"worker {owner.get('worker', '?')} (pid {owner.get('pid')} on {owner.get('host')})"
    if _gone(owner):
        return f"{who} ended while running the trial"
    beat = trial.system_attrs.get(BEAT)
    limit = GRACE_BEATS * float(owner.get("heartbeat", 10.0))
    if beat is not None and now - float(beat) > limit:
        return f"no heartbeat from {who} for {now - float(beat):.0f} s"
    return None


def requeue(study: Any, trial: Any, reason: str, tracking_uri: str | None, experiment: str | None) -> None:
    """Fail ``trial`` as lost, queue a repeat with the same params (once), close its MLflow run as KILLED.
    Call under the study lock."""
    import optuna

    storage, tid = study._storage, trial._trial_id
    if storage.get_trial(tid).state != optuna.trial.TrialState.RUNNING:
        return  # its worker finished it after all
    if not any(t.user_attrs.get(RETRY_OF) == trial.number for t in study.get_trials(deepcopy=False)):
        study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF: trial.number}, skip_if_exists=False)
    try:
        storage.set_trial_system_attr(tid, RETRIED, reason)
        storage.set_trial_user_attr(tid, FAILURE, reason)
        storage.set_trial_system_attr(tid, StudyAttr.FAIL_REASON, reason)
        storage.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    if tracking_uri:
        _close_runs(tracking_uri, experiment, study.study_name, trial, "KILLED", reason)


def _close_runs(uri: str, experiment: str | None, study: str, trial: Any, status: str, reason: str) -> None:
    """End the trial's MLflow run(s) still RUNNING: by the run id the trial recorded, else by its tags."""
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        run_ids = [trial.user_attrs[RUN_ID]] if trial.user_attrs.get(RUN_ID) else []
        if not run_ids and experiment:
            exp = client.get_experiment_by_name(experiment)
            quoted = study.replace("'", "\\'")
            if exp is not None:
                run_ids = [r.info.run_id for r in client.search_runs(
                    [exp.experiment_id], f"tags.`retort.study` = '{quoted}' and tags.`retort.trial` = "
                    f"'{trial.number}' and attributes.status = 'RUNNING'")]
        for run_id in run_ids:
            if client.get_run(run_id).info.status != "RUNNING":
                continue
            client.set_tag(run_id, Tag.FAILURE, reason[:5000])
            client.set_tag(run_id, Tag.TRIAL_STATE, "FAIL")
            client.set_terminated(run_id, status=status)
    except Exception as exc:  # the record is secondary to the study: say so and go on
        print(f"warning: could not close the MLflow run of trial {trial.number}: {exc}", file=sys.stderr)


def reap(study: Any, tracking_uri: str | None, experiment: str | None, ending: int | None = None) -> list[int]:
    """Re-queue every RUNNING trial whose worker is gone or silent (or is this process, ``ending``); returns
    their numbers. Call under the study lock."""
    import optuna

    now = time.time()
    lost = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = t.system_attrs.get(OWNER) or {}
        if ending is not None and owner.get("pid") == ending and owner.get("host") == socket.gethostname():
            reason: str | None = "interrupted before it started"
        else:
            reason = _lost(t, now)
        if reason is not None:
            requeue(study, t, reason, tracking_uri, experiment)
            lost.append(t.number)
    return lost


# --- the worker ------------------------------------------------------------------------------------

_PRUNING: type | None = None


def _pruning_class() -> type:
    """retort's pruning callback (Lightning's ``optuna-integration`` one needs ``lightning.pytorch``): reports
    the metric each epoch and, when the pruner says so, stops the trainer; the run then ends normally."""
    global _PRUNING
    if _PRUNING is not None:
        return _PRUNING
    import pytorch_lightning as pl

    from retort.recipes.hooks import RunId

    class Pruning(pl.Callback):
        def __init__(self, trial: Any, metric: str, maximize: bool):
            self.trial, self.metric, self.maximize = trial, metric, maximize
            self.pruned_at: int | None = None
            self.best: float | None = None  # the best epoch's value so far: the trial's value
            self.bad: float | None = None   # a non-finite value at the last epoch
            self.run_id: str | None = None

        def on_fit_start(self, trainer: pl.Trainer, m: Any) -> None:
            for cb in trainer.callbacks:
                if isinstance(cb, RunId) and cb.run_id:  # the Optuna trial records its MLflow run at once
                    self.run_id = cb.run_id
                    self.trial.set_user_attr(RUN_ID, cb.run_id)

        def on_train_epoch_end(self, trainer: pl.Trainer, m: Any) -> None:
            value = m.epoch_summary().get(self.metric)
            if value is None:
                return
            if not math.isfinite(value):
                self.bad = float(value)  # the loop fails a non-finite training loss; the pruner never sees it
                return
            value, self.bad = float(value), None
            if self.best is None or (value > self.best if self.maximize else value < self.best):
                self.best = value
            epoch = trainer.current_epoch + 1
            self.trial.report(self.best, epoch)  # the running best: a curve the pruner can rank early
            if self.trial.should_prune():
                # never raise inside fit: Lightning would close the run as failed (PITFALLS)
                self.pruned_at = epoch
                trainer.should_stop = True

    _PRUNING = Pruning
    return Pruning


def _fmt(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={json.dumps(v)}" for k, v in values.items())


class Worker:
    """Runs trials of one study in this process until the study holds ``plan.trials`` of them."""

    def __init__(self, plan: Plan, index: int, seed: int, study: Any = None, parent_pid: int | None = None):
        import optuna

        self.plan, self.index, self.seed, self.parent_pid = plan, index, seed, parent_pid
        self.base = plan.base()
        self.metric = self.base.sweep["metric"]
        if study is None:
            study = optuna.load_study(study_name=plan.study, storage=open_storage(plan.storage, plan.patience),
                                      sampler=make_sampler(self.base, seed), pruner=make_pruner(self.base))
        self.study = study
        self.lock = study_lock(plan.storage, plan.study, plan.patience)
        self.owner = {**_identity(), "worker": index, "seed": seed, "heartbeat": plan.heartbeat}
        self.current: Any = None
        self.ran = 0
        self._stop = threading.Event()

    def say(self, text: str) -> None:
        if not self.plan.quiet:
            print(text, flush=True)

    def run(self) -> int:
        """Claim and run trials until none is left; returns how many ran here."""
        beat = threading.Thread(target=self._beat, name="retort-heartbeat", daemon=True)
        beat.start()
        try:
            while (trial := self._claim()) is not None:
                self._run_trial(trial)
        finally:
            self._stop.set()
        return self.ran

    def _beat(self) -> None:
        while not self._stop.wait(self.plan.heartbeat):
            trial = self.current
            if trial is not None:
                with contextlib.suppress(Exception):  # a finished trial refuses attributes; that is fine
                    self.study._storage.set_trial_system_attr(trial._trial_id, BEAT, time.time())
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                self.parent_pid = None  # the sweep command is gone: stop as if interrupted (the trial is re-queued)
                os.kill(os.getpid(), signal.SIGTERM)

    def _claim(self) -> Any:
        import optuna

        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            return None
        with self.lock:
            reap(self.study, self.plan.tracking_uri, self.plan.experiment)
            trials = self.study.get_trials(deepcopy=False)
            counts = tally(trials)
            if not counts["WAITING"]:
                if sum(counts.values()) >= self.plan.trials:
                    return None
                sampler = self.study.sampler
                if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(self.study):
                    return None
            trial = self.study.ask()
            storage = self.study._storage
            storage.set_trial_system_attr(trial._trial_id, OWNER, self.owner)
            storage.set_trial_system_attr(trial._trial_id, BEAT, time.time())
            self.current = trial
            return trial

    def _tags(self, trial: Any) -> dict[str, str]:
        tags = {Tag.STUDY: self.plan.study, Tag.TRIAL: str(trial.number),
                Tag.WORKER: str(self.index), Tag.SAMPLER_SEED: str(self.seed),
                Tag.RUN_NAME: f"{self.plan.study} trial {trial.number}"}
        retry_of = trial.user_attrs.get(RETRY_OF)
        if retry_of is not None:
            tags[Tag.RETRY_OF] = str(retry_of)
        return tags

    def _run_trial(self, trial: Any) -> None:
        from retort import recipes

        tags = self._tags(trial)
        values: dict[str, Any] = {}
        pruning: Any = None
        try:
            values = suggest(trial, self.base)
            setting = applied(values, self.base)
            if setting != values:  # the lr/batch-size rule: record what the run got besides what was sampled
                trial.set_user_attr("applied", {k: v for k, v in setting.items() if values.get(k) != v})
            recipe = trial_recipe(self.plan.raw, setting, self.plan.source)
            pruning = _pruning_class()(trial, self.metric, self.base.sweep["direction"] == "maximize")
            started = time.perf_counter()
            result = recipes.run(recipe, tracking_uri=self.plan.tracking_uri, quiet=True, command=self.plan.command,
                                 callbacks=[pruning], tags=tags, parent_run_id=self.plan.parent_run_id)
        except Interrupted as exc:  # the run is KILLED; the trial runs again when the sweep resumes
            self.current = None
            with self.lock:
                requeue(self.study, self.study._storage.get_trial(trial._trial_id), f"interrupted by {exc}",
                        self.plan.tracking_uri, self.plan.experiment)
            if pruning is not None and pruning.run_id:
                self._tag(pruning.run_id, {Tag.TRIAL_STATE: "FAIL"})
            self.say(f"trial {trial.number}: interrupted ({exc}); it runs again when the sweep resumes")
            raise
        except RecipeError as exc:  # the sampled values make an invalid recipe: nothing ran
            reason = f"invalid recipe: {exc}"
            self._finish(trial, "FAIL", None, reason, self._failed_run(trial, values, tags, reason), values)
            return
        except RunFailed as exc:  # exception, non-finite loss, out of memory: recorded FAILED by the runner
            if isinstance(exc.__cause__, StorageUnavailable):  # the study is out of reach: stop, resume later
                raise exc.__cause__ from None
            run_id = exc.run_id or (pruning.run_id if pruning else None)
            reason = str(exc)  # no run when it failed before recording (out of memory building the model)
            self._finish(trial, "FAIL", None, reason, run_id or self._failed_run(trial, values, tags, reason), values)
            return
        except Exception as exc:  # an error outside training (storage, record): fail the trial, go on
            run_id, reason = (pruning.run_id if pruning else None), failure(exc)
            self._finish(trial, "FAIL", None, reason, run_id or self._failed_run(trial, values, tags, reason), values,
                         close=run_id is not None)
            return
        finally:
            self._after_trial()
        trial.set_user_attr("fit_seconds", round(result.fit_seconds, 4))  # training only
        trial.set_user_attr("run_seconds", round(time.perf_counter() - started, 4))  # the whole recorded run
        trial.set_user_attr("epochs", result.epochs)
        if pruning.pruned_at is not None:
            self._finish(trial, "PRUNED", pruning.best, f"pruned at epoch {pruning.pruned_at}", result.run_id, values)
            return
        value = pruning.best
        if value is None or pruning.bad is not None:
            reason = f"{self.metric} is {pruning.bad if pruning.bad is not None else 'not recorded'} at the last epoch"
            self._finish(trial, "FAIL", None, reason, result.run_id, values, close=True)
            return
        self._finish(trial, "COMPLETE", float(value), None, result.run_id, values)

    def _tag(self, run_id: str, tags: Mapping[str, str], status: str | None = None) -> None:
        try:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.plan.tracking_uri)
            for k, v in tags.items():
                client.set_tag(run_id, k, v)
            if status:
                client.set_terminated(run_id, status=status)
        except Exception as exc:
            print(f"warning: could not tag MLflow run {run_id}: {exc}", file=sys.stderr)

    def _after_trial(self) -> None:
        # hand cached GPU memory back, so that an out-of-memory trial does not starve the next one (no full
        # gc.collect() here: it costs about 0.5 s per trial in a process holding torch, Lightning and MLflow)
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _failed_run(self, trial: Any, values: Mapping[str, Any], tags: Mapping[str, str], reason: str) -> str | None:
        """A FAILED child run for a trial that never started, so every trial has its run."""
        from retort.tracking.record import RunRecord

        try:
            record = RunRecord.start(self.plan.tracking_uri, self.plan.experiment, params=dict(values),
                                     tags={**tags, Tag.PARENT_RUN_ID: self.plan.parent_run_id,
                                           Tag.COMMAND: self.plan.command})
            record.finish("FAILED", reason)
            return record.run_id
        except Exception as exc:
            print(f"warning: could not record trial {trial.number}'s failure in MLflow: {exc}", file=sys.stderr)
            return None

    def _finish(self, trial: Any, state: str, value: float | None, reason: str | None, run_id: str | None,
                values: Mapping[str, Any], close: bool = False) -> None:
        """Tell Optuna, then tag the MLflow run with the trial's final state."""
        import optuna

        TrialState = optuna.trial.TrialState
        self.current = None
        try:
            if run_id:
                trial.set_user_attr(RUN_ID, run_id)
            if reason and state == "FAIL":
                trial.set_user_attr(FAILURE, reason[:2000])
                self.study._storage.set_trial_system_attr(trial._trial_id, StudyAttr.FAIL_REASON, reason[:2000])
            if state == "COMPLETE":
                self.study.tell(trial, value)
            else:
                self.study.tell(trial, state=TrialState[state])
        except optuna.exceptions.UpdateFinishedTrialError:
            reason = "the trial was re-queued as lost while it ran (heartbeat too slow?); its result is dropped"
            state = "FAIL"
        if run_id:
            tags = {Tag.TRIAL_STATE: state}
            if state == "PRUNED":
                tags[Tag.PRUNED] = reason or ""
            if close and reason:
                tags[Tag.FAILURE] = reason[:5000]
            self._tag(run_id, tags, "FAILED" if close and reason else None)
        self.ran += 1
        done = tally(self.study.get_trials(deepcopy=False))
        finished = done["COMPLETE"] + done["PRUNED"] + done["FAIL"]
        what = f"{self.metric} {value:.5g}" if value is not None else (reason or "")
        self.say(f"trial {trial.number} {state.lower()}: {what}  {_fmt(values)}  "
                 f"[{finished}/{self.plan.trials} finished, worker {self.index}]")


# --- worker processes ------------------------------------------------------------------------------

@dataclass
class _WorkerArgs:
    plan: Plan
    index: int
    seed: int
    threads: int
    parent_pid: int


def _worker_main() -> None:
    """Entry point of a spawned worker. It imports the heavy libraries first, while the parent prepares the
    study and the parent run, then reads its arguments, pickled, on stdin (nothing there: not needed)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, interrupt)
    index = "?"
    try:
        import mlflow  # noqa: F401
        import optuna  # noqa: F401
        import pytorch_lightning  # noqa: F401
        import torch

        import retort.recipes.runner  # noqa: F401

        _prewarm()
        try:
            args: _WorkerArgs = pickle.load(sys.stdin.buffer)
        except EOFError:
            leave(0)
        index = str(args.index)
        torch.set_num_threads(args.threads)
        _quiet_optuna()
        Worker(args.plan, args.index, args.seed, parent_pid=args.parent_pid).run()
    except Interrupted as exc:
        leave(128 + exc.signum)
    except RecipeError as exc:
        print(f"error: worker {index}: {exc}", file=sys.stderr)
        leave(2)
    except StorageUnavailable as exc:
        print(f"error: worker {index}: {exc}", file=sys.stderr)
        leave(1)
    leave(0)


def _prewarm() -> None:
    """Load what a worker's first trial would otherwise load on its clock (about 2 s on 2 cores): MLflow's SQL
    store and its ORM mappers, the built-in plugins, scikit-learn's data sets, the environment record.
    A spawned worker does this while the parent checks the input and opens the study."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import sklearn.datasets  # noqa: F401
    from sqlalchemy.orm import configure_mappers

    from retort import plugins
    from retort.tracking.context import environment

    configure_mappers()
    for kind in plugins.KINDS:
        plugins.available(kind)
    environment()


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _spawn(n: int, total: int) -> list[subprocess.Popen]:
    """Start ``n`` worker processes (of ``total`` workers, this process being one), each with a fair share of
    the CPU threads; :func:`_send` gives them work."""
    threads = max(1, _cpus() // total)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    env.pop("RETORT_RUN_ID", None)
    # each in a session of its own: Ctrl-C reaches the parent only, which forwards exactly one signal
    return [subprocess.Popen([sys.executable, "-c", "from retort.recipes.sweep import _worker_main; _worker_main()"],
                             stdin=subprocess.PIPE, env=env, start_new_session=True) for _ in range(n)]


def _send(procs: list[subprocess.Popen], plan: Plan | None, seeds: list[int]) -> list[subprocess.Popen]:
    """Hand spawned worker i (worker number i + 1; this process is worker 0) its arguments and seed
    ``seeds[i]``; stop those not needed (they have done nothing but import). Returns the workers at work."""
    threads = max(1, _cpus() // (len(seeds) + 1))
    used = procs[:len(seeds)] if plan is not None else []
    for i, proc in enumerate(used):
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(pickle.dumps(_WorkerArgs(plan, i + 1, seeds[i], threads, os.getpid())))
            proc.stdin.close()
    for proc in procs[len(used):]:
        proc.kill()
        proc.wait()
    return used


class _Supervisor(threading.Thread):
    """Watches the spawned workers from a thread of the parent (whose main thread is worker 0): re-queues
    the trials of any worker that dies; :meth:`forward` passes SIGINT/SIGTERM on to them."""

    def __init__(self, procs: list[subprocess.Popen], plan: Plan):
        super().__init__(name="retort-supervisor", daemon=True)
        self.procs, self.plan = procs, plan
        self.problems: list[str] = []
        self.signum: int | None = None
        self._since: float | None = None

    def forward(self, signum: int) -> None:
        if self.signum is None:
            self.signum, self._since = signum, time.monotonic()
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

    def wait(self) -> None:
        while self.is_alive():  # a join that signals can interrupt
            self.join(0.2)

    def run(self) -> None:
        if not self.procs:
            return
        import optuna

        plan = self.plan
        study = optuna.load_study(study_name=plan.study, storage=open_storage(plan.storage, plan.patience))
        lock = study_lock(plan.storage, plan.study, plan.patience)  # its own: a lock is not shared between threads
        pending = set(range(len(self.procs)))
        while pending:
            time.sleep(0.2)
            if self._since is not None and time.monotonic() - self._since > 60:
                for i in pending:  # a worker that ignores the signal for a minute is stopped hard
                    with contextlib.suppress(ProcessLookupError):
                        self.procs[i].kill()
            for i in sorted(pending):
                rc = self.procs[i].poll()
                if rc is None:
                    continue
                pending.discard(i)
                if rc == 0 or (self.signum is not None and rc in (128 + self.signum, -self.signum)):
                    continue
                how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
                problem = f"worker {i + 1} {how}"
                with lock:
                    for n in reap(study, plan.tracking_uri, plan.experiment):
                        problem += f"; its trial {n} is queued to run again"
                self.problems.append(problem)


def _prefetch_analysis() -> None:
    """Import what :func:`_log_analysis` needs (about 1.5 s), while the last workers finish."""
    with contextlib.suppress(Exception):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot
        import optuna.importance._fanova  # scikit-learn's forests
        import optuna.visualization.matplotlib  # noqa: F401


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGINT/SIGTERM raise :class:`Interrupted` (a run in progress stops at its next batch first)."""
    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --- the parent --------------------------------------------------------------------------------------

def sweep(recipe: Any, *, overrides: Sequence[str] = (), trials: int | None = None, workers: int = 1,
          storage: str | None = None, study: str | None = None, seed: int | None = None, heartbeat: float = 10.0,
          tracking_uri: str | None = None, quiet: bool = False, command: str | None = None,
          patience: float = PATIENCE) -> SweepResult:
    """Run (or resume) the Optuna sweep of ``recipe`` (a path, a shipped name or a Recipe) with ``overrides``.

    Raises :class:`RecipeError` on bad input before anything is recorded, :class:`Interrupted` on
    SIGINT/SIGTERM (the parent run is then KILLED and interrupted trials are queued to run again).
    """
    start = time.perf_counter()
    # workers start first: they import torch and Lightning (seconds) while this process checks the input and
    # prepares; they touch nothing before _send hands them their arguments, and are killed on bad input
    procs = _spawn(workers - 1, workers) if workers > 1 else []
    try:
        plan, base = _plan(recipe, overrides, trials=trials, workers=workers, storage=storage, study=study,
                           seed=seed, heartbeat=heartbeat, tracking_uri=tracking_uri, command=command, quiet=quiet,
                           patience=patience)
    except BaseException:
        _send(procs, None, [])
        raise
    from retort.tracking.store import prepare_store

    _quiet_optuna()
    lock = study_lock(plan.storage, plan.study, plan.patience)
    try:
        opened = open_storage(plan.storage, plan.patience)
        prepare_store(plan.tracking_uri)  # create/migrate the MLflow store once, before any worker writes to it
        with lock:
            study_obj, existing = _open_study(opened, plan, base)
            record = _open_parent(study_obj, plan, base)
    except BaseException:
        _send(procs, None, [])
        raise
    plan.parent_run_id = record.run_id
    counts = tally(existing)
    missing = max(0, plan.trials - sum(counts.values())) + counts["WAITING"]
    k = max(1, min(workers, missing))
    offset = len(existing)  # a resumed study's workers do not replay the seeds (and first points) of before
    seeds = [plan.seed + offset + i for i in range(k)] if missing else []
    record.set_tags({Tag.TRIALS: plan.trials, Tag.WORKERS: len(seeds),
                     Tag.SAMPLER_SEEDS: ",".join(map(str, seeds)), Tag.COMMAND: plan.command,
                     Tag.STORAGE: _display(plan.storage), Tag.DASHBOARD: dashboard_command(plan.storage)})
    if not quiet:
        verb = "resuming" if existing else "starting"
        print(f"sweep {plan.study!r}: {verb}, {sum(counts.values())} of {plan.trials} trials in the study, "
              f"{len(seeds)} worker{'s' * (len(seeds) != 1)}; storage {_display(plan.storage)}; "
              f"parent run {record.run_id}", flush=True)
    supervisor = _Supervisor(_send(procs, plan, seeds[1:]), plan)  # workers 1..k-1; this process is worker 0
    supervisor.start()
    try:
        with _interruptible():
            if seeds:
                if len(seeds) > 1:
                    import torch

                    torch.set_num_threads(max(1, _cpus() // len(seeds)))
                study_obj.sampler = make_sampler(base, seeds[0])
                Worker(plan, 0, seeds[0], study=study_obj).run()
            if supervisor.is_alive():  # a core is free from now on: load what the end needs
                threading.Thread(target=_prefetch_analysis, daemon=True).start()
            supervisor.wait()
    except Interrupted as exc:
        supervisor.forward(exc.signum)
        supervisor.wait()
        for problem in supervisor.problems:
            print(f"error: {problem}", file=sys.stderr)
        with lock:
            reap(study_obj, plan.tracking_uri, plan.experiment, ending=os.getpid())
        record.finish("KILLED", f"interrupted by {exc}")
        raise
    except BaseException as exc:
        _send(procs, None, [])
        record.finish("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    problems = supervisor.problems
    with lock:
        reap(study_obj, plan.tracking_uri, plan.experiment)
    result = _conclude(study_obj, plan, base, record, problems)
    result.wall_seconds = time.perf_counter() - start
    return result


def _open_study(storage: Any, plan: Plan, base: Any) -> tuple[Any, list[Any]]:
    """Create the study, or load it and check that it is the same search (direction, metric)."""
    import optuna

    direction = base.sweep["direction"]
    study = optuna.create_study(study_name=plan.study, storage=storage, direction=direction, load_if_exists=True,
                                sampler=make_sampler(base, plan.seed), pruner=make_pruner(base))
    if study.direction.name.lower() != direction:
        raise RecipeError(f"study {plan.study!r} in {_display(plan.storage)} is to {study.direction.name.lower()}, "
                          f"this recipe's sweep is to {direction}; use another --study", field="sweep.direction")
    metric = study.user_attrs.get(StudyAttr.METRIC)
    if metric is not None and metric != base.sweep["metric"]:
        raise RecipeError(f"study {plan.study!r} optimizes {metric!r}, not {base.sweep['metric']!r}; use another "
                          "--study", field="sweep.metric")
    if metric is None:
        study.set_user_attr(StudyAttr.METRIC, base.sweep["metric"])
        study.set_user_attr(Tag.RECIPE, base.name)
    return study, study.get_trials(deepcopy=False)


def _open_parent(study: Any, plan: Plan, base: Any) -> Any:
    """The sweep's parent MLflow run: the study's own when it is in this store (a resumed sweep keeps one
    parent), else a new one."""
    from mlflow import MlflowClient

    from retort.recipes.yamlio import dumps
    from retort.tracking.context import mask_tree, version
    from retort.tracking.record import RunRecord

    client = MlflowClient(tracking_uri=plan.tracking_uri)
    run_id = study.user_attrs.get(StudyAttr.PARENT_RUN_ID)
    if run_id:
        try:
            run = client.get_run(run_id)
        except Exception:
            run = None
        if run is not None and run.info.lifecycle_stage == "active":
            client.update_run(run_id, status="RUNNING")
            if Tag.FAILURE in run.data.tags:  # from an interrupted invocation: no longer true
                client.delete_tag(run_id, Tag.FAILURE)
            return RunRecord(client, run_id, run.info.experiment_id)
    import platform

    tags = {Tag.VERSION: version("retort"), Tag.RECIPE: base.name, Tag.RECIPE_SOURCE: base.source or "",
            Tag.STUDY: plan.study, Tag.SWEEP: "parent", Tag.SOURCE_NAME: "retort",
            Tag.SWEEP_METRIC: base.sweep["metric"], Tag.SWEEP_DIRECTION: base.sweep["direction"],
            "host.name": socket.gethostname(), "python.version": platform.python_version(),
            "optuna.version": version("optuna"), Tag.RUN_NAME: f"sweep {plan.study}"}
    params = {k: v for k, v in base.flat().items() if k.startswith("sweep.")}
    record = RunRecord.start(plan.tracking_uri, plan.experiment, params=params, tags=tags)
    record.log_text(dumps(mask_tree(base.to_dict())), "base_recipe.yaml")
    study.set_user_attr(StudyAttr.PARENT_RUN_ID, record.run_id)
    return record


def _conclude(study: Any, plan: Plan, base: Any, record: Any, problems: list[str]) -> SweepResult:
    """Best trial, counts, the best recipe, importances and plots on the parent run; its final status."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    counts = tally(trials)
    result = SweepResult(study=plan.study, storage=_display(plan.storage), dashboard=dashboard_command(plan.storage),
                         parent_run_id=record.run_id, trials=plan.trials, counts=counts, problems=problems)
    finished = counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"]
    if finished < plan.trials and problems:
        problems.append(f"the study holds {finished} of {plan.trials} finished trials: run the same command again "
                        "to run the rest")
    elif problems:  # workers died, but the others finished the study
        result.warnings, result.problems = list(problems), []
    if base.sweep["sampler"] == "grid" and finished < plan.trials:
        points = math.prod(len(v) for v in _grid(base).values())
        result.warnings.append(f"the grid has {points} points, fewer than the {plan.trials} trials asked for")
    record.log({"trials_complete": counts["COMPLETE"], "trials_pruned": counts["PRUNED"],
                "trials_failed": counts["FAIL"]}, step=finished)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        result.best_value, result.best_trial = float(best.value), best.number
        result.best_params = decode(best.params, base)
        result.best_run_id = best.user_attrs.get(RUN_ID)
        record.log({"best_value": result.best_value}, step=finished)
        record.set_tags({Tag.BEST_TRIAL: best.number, Tag.BEST_RUN_ID: result.best_run_id or "",
                         Tag.BEST_PARAMS: json.dumps(result.best_params)})
        with tempfile.TemporaryDirectory(prefix="retort-sweep-") as tmp:
            _log_best_recipe(record, plan, base, best, Path(tmp))
            _log_analysis(record, study, plan, Path(tmp))
    if result.best_value is None:
        reasons = sorted({t.user_attrs.get(FAILURE, "") for t in trials if t.state.name == "FAIL" and not _void(t)})
        problems.append("no trial completed" + (f"; failures: {'; '.join(r for r in reasons if r)[:500]}"
                                                if any(reasons) else ""))
    record.finish("FAILED" if result.best_value is None else "FINISHED",
                  "; ".join(problems) if result.best_value is None else None)
    return result


def _log_best_recipe(record: Any, plan: Plan, base: Any, best: Any, tmp: Path) -> None:
    """``best_recipe.yaml``: the recipe the best trial ran (its run's own artifact when this store has it)."""
    from retort.recipes.yamlio import dumps
    from retort.tracking.context import mask_tree

    text = None
    run_id = best.user_attrs.get(RUN_ID)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if run_id:
        with contextlib.suppress(Exception):
            text = Path(record.client.download_artifacts(run_id, "recipe.yaml", str(tmp))).read_text()
    if text is None:
        text = dumps(mask_tree(trial_recipe(plan.raw, applied(decode(best.params, base), base), plan.source).to_dict()))
    record.log_text(text, "best_recipe.yaml")


def _log_analysis(record: Any, study: Any, plan: Plan, tmp: Path) -> None:
    """Parameter importances (JSON and metrics) and the optimization-history, parallel-coordinate and
    intermediate-value plots (matplotlib); what cannot be computed yet is noted in a tag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=plan.seed)
            importances = {k: float(v) for k, v in optuna.importance.get_param_importances(
                study, evaluator=evaluator).items()}
            record.log_text(json.dumps(importances, indent=2), "importances.json")
            record.log({f"importance/{k}": v for k, v in importances.items()}, step=0)
        except Exception as exc:
            notes.append(f"importances: {exc}")
        for name, plot in (("optimization_history", ovm.plot_optimization_history),
                           ("parallel_coordinate", ovm.plot_parallel_coordinate),
                           ("intermediate_values", ovm.plot_intermediate_values)):
            try:
                ax = plot(study)
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                path = tmp / f"{name}.png"
                fig.savefig(path, dpi=110, bbox_inches="tight")
                plt.close(fig)
                record.log_artifact(path, "plots")
            except Exception as exc:
                notes.append(f"{name}: {exc}")
    if notes:
        record.set_tags({Tag.ANALYSIS_NOTES: "; ".join(notes)[:5000]})
