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

With ``sweep.seeds: N`` (or ``--seeds N``) a trial runs its recipe with the recipe's seed and the N - 1 after
it, one after another (:func:`retort.recipes.seeds.run_seeds`): the trial's run is the parent of N seed runs,
and its value is the mean of the seeds' values; the pruner sees the running mean over the seeds so far
(:mod:`.pruning`), and a pruned or failed seed stops the seeds after it.

Trial states: COMPLETE; PRUNED (stopped by the pruner; its MLflow run ends FINISHED, tagged
``retort.trial_state=PRUNED``); FAIL (an exception, a non-finite value, an invalid recipe; its MLflow run
ends FAILED with ``retort.failure``). A trial whose worker died (SIGKILL, lost machine) or was interrupted
is failed, marked ``retort:retried`` and queued again with the same params; its MLflow run is closed as
KILLED. ``--trials N`` counts every trial but those re-queued ones.

Why ask/tell rather than ``study.optimize``: exactly N trials over independent workers need the count
and the ask under one lock, and Optuna's own heartbeat does not cover journal storage; retort's heartbeat
(system attrs ``retort:owner``, ``retort:heartbeat``) works for both, and finds a dead worker on the same
machine at once by its process id.

This module is the command (its options, :func:`sweep`: the parent's steps in order); each question has its
own module: :mod:`.plan` (the checked input), :mod:`.space` (what a trial samples and the recipe it runs),
:mod:`.search` (samplers, pruners), :mod:`.storage` (where the study lives, outages), :mod:`.lease` (the
study lock, owners, heartbeats, reaping lost trials), :mod:`.worker` (running trials), :mod:`.pruning` (what
the pruner sees of a trial), :mod:`.processes` (spawned workers, signals), :mod:`.placement` (the GPUs each
worker sees), :mod:`.share` (its threads and GPU memory), :mod:`.ranks` (a trial over several DDP processes),
:mod:`.cap` (batch sizes capped by a probe), :mod:`.study` (the study and parent run, opened and concluded),
:mod:`.stop` (stop rules).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from retort.plugins.errors import Interrupted, RecipeError
from retort.recipes.sweep.cap import cap_batch_sizes
from retort.recipes.sweep.lease import GRACE_BEATS, locked, reap, study_lock, tally
from retort.recipes.sweep.placement import assign, describe, visible_devices
from retort.recipes.sweep.plan import SweepResult, make_plan
from retort.recipes.sweep.processes import Supervisor, cpus, interruptible, placed_here, quiet_optuna, send, spawn
from retort.recipes.sweep.ranks import ranks
from retort.recipes.sweep.search import make_sampler
from retort.recipes.sweep.share import shares
from retort.recipes.sweep.stop import StopRules
from retort.recipes.sweep.storage import PATIENCE, StorageUnavailable, dashboard_command, display, open_storage
from retort.recipes.sweep.study import conclude, open_parent, open_study, prefetch_analysis
from retort.recipes.sweep.worker import Worker
from retort.tracking.vocabulary import Tag

HELP = "Optuna sweep of a recipe's sweep section: one MLflow child run per trial, crash-safe, one machine or many"
EXAMPLES = """examples:
  retort sweep digits-mlp                        # the recipe's sweep section: 20 trials, tpe, hyperband
  retort sweep digits-mlp --trials 40 --workers 2           # two worker processes on this machine
  retort sweep digits-mlp -s sweep.sampler=random -s sweep.pruner=median --seed 7
  retort sweep digits-mlp -s 'sweep.space={optimizer.lr: {low: 1.0e-4, high: 0.1, log: true}}'
  retort sweep digits-mlp --seeds 3              # each trial over seeds 0, 1, 2: its value is their mean
  retort sweep digits-mlp --study lr-bs          # run again to resume: only the missing trials run
  retort sweep digits-mlp --storage postgresql://me@db-host/optuna --tracking-uri http://mlflow:5000
                                                 # the same command on every machine shares one study
  optuna-dashboard optuna/digits-mlp.journal     # watch the study (the path is printed at the end)

The study: a journal file <folder of mlflow.db>/optuna/<study>.journal by default (safe for many
workers on one machine); --storage postgresql://... for many machines. Prints best_value, best_params
and parent_run_id last; the parent run holds best_recipe.yaml (retort run runs it), importances.json
and plots/."""


# --- command line -----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE",
                        help="a recipe file or a shipped recipe's name, with a sweep section")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override a field by dotted path (repeatable), e.g. -s sweep.trials=10")
    parser.add_argument("--trials", type=int, metavar="N",
                        help="trials the study should hold, over all workers (default: sweep.trials)")
    parser.add_argument("--seeds", type=int, metavar="N",
                        help="seeds each trial runs, one after another, its value their mean (default: sweep.seeds, 1)")
    parser.add_argument("--workers", type=int, default=1, metavar="K",
                        help="worker processes on this machine, each with a fair share of the CPU threads and, where "
                             "there are GPUs, its own CUDA_VISIBLE_DEVICES (default 1)")
    parser.add_argument("--devices", metavar="LIST",
                        help="GPUs to place workers on, e.g. 0,1,2,3 (default: CUDA_VISIBLE_DEVICES, else every GPU)")
    parser.add_argument("--gpus-per-trial", type=int, metavar="M",
                        help="GPUs each worker (so each trial) sees; a trial whose trainer uses several devices "
                             "(devices: auto uses all M) runs DDP over them, its ranks launched by the worker "
                             "(default 1)")
    parser.add_argument("--trials-per-gpu", type=int, metavar="N",
                        help="workers that may share one GPU (or group of --gpus-per-trial GPUs; default 1); "
                             "sharers divide its memory evenly unless --gpu-memory says")
    parser.add_argument("--gpu-memory", metavar="SIZE",
                        help="each worker's memory budget on each of its GPUs, e.g. 20GiB (a trial over it fails as "
                             "out of memory, alone); default: an even share where workers share a GPU, else no limit")
    parser.add_argument("--cap-batch-size", action="store_true",
                        help="probe once before the study starts (as retort batch-size) and drop the space's "
                             "data.batch_size values above the largest that fits, less a 0.2 margin")
    parser.add_argument("--max-memory", metavar="SIZE",
                        help="with --cap-batch-size: the largest peak memory a training step may use, e.g. 512MB "
                             "(needed on CPU; default on a GPU: --gpu-memory, else its memory)")
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
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="claim no new trial once this much time has passed (running trials finish)")
    parser.add_argument("--target", type=float, metavar="VALUE",
                        help="stop once a trial reaches this value of sweep.metric (<= when minimizing)")
    parser.add_argument("--patience", type=int, metavar="K",
                        help="stop after K finished trials without improving on the best")
    parser.add_argument("--resume-changed", action="store_true",
                        help="continue a study made for another base recipe (refused by default, naming the fields "
                             "that differ; they are tagged on the parent run)")
    parser.add_argument("--storage-patience", type=float, default=PATIENCE, metavar="SECONDS",
                        help="how long to wait out an unreachable study storage (database restarting, network or "
                             f"disk trouble) before stopping; the same command resumes (default {PATIENCE:g})")


def main(args: argparse.Namespace) -> int:
    from retort.recipes.display import status
    from retort.recipes.tune_batch import parse_size
    from retort.tracking.context import command_line

    if not args.quiet:  # before the imports: Optuna, PyTorch, Lightning and MLflow take seconds
        status(f"retort sweep {args.recipe}: loading Optuna, PyTorch, Lightning and MLflow")
    try:
        result = sweep(args.recipe, overrides=args.overrides, trials=args.trials, seeds=args.seeds,
                       workers=args.workers,
                       storage=args.storage, study=args.study, seed=args.seed, heartbeat=args.heartbeat,
                       patience=args.storage_patience, tracking_uri=args.tracking_uri, quiet=args.quiet,
                       command=command_line(), resume_changed=args.resume_changed,
                       stop=StopRules(timeout=args.timeout, target=args.target, patience=args.patience),
                       devices=args.devices, gpus_per_trial=args.gpus_per_trial,
                       trials_per_gpu=args.trials_per_gpu, cap_batch_size=args.cap_batch_size,
                       max_memory=parse_size(args.max_memory) if args.max_memory is not None else None,
                       gpu_memory=parse_size(args.gpu_memory, "--gpu-memory") if args.gpu_memory is not None else None)
    except StorageUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        c = result.counts
        print(f"trials: {c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed of {result.trials} "
              f"(study {result.study!r} in {result.storage})")
        print(f"dashboard: {result.dashboard}")
        if result.stopped:
            print(f"stopped early by {result.stopped}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in result.problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"best_value: {result.best_value if result.best_value is not None else math.nan!r}")
    print(f"best_params: {json.dumps(result.best_params)}")
    print(f"parent_run_id: {result.parent_run_id}")
    return 0 if result.ok else 1


# --- the parent --------------------------------------------------------------------------------------

def sweep(recipe: Any, *, overrides: Sequence[str] = (), trials: int | None = None, seeds: int | None = None,
          workers: int = 1,
          storage: str | None = None, study: str | None = None, seed: int | None = None, heartbeat: float = 10.0,
          tracking_uri: str | None = None, quiet: bool = False, command: str | None = None,
          patience: float = PATIENCE, resume_changed: bool = False, stop: StopRules | None = None,
          devices: str | None = None, gpus_per_trial: int | None = None,
          trials_per_gpu: int | None = None, cap_batch_size: bool = False,
          max_memory: int | None = None, gpu_memory: int | None = None) -> SweepResult:
    """Run (or resume) the Optuna sweep of ``recipe`` (a path, a shipped name or a Recipe) with ``overrides``.

    Raises :class:`RecipeError` on bad input before anything is recorded, :class:`Interrupted` on
    SIGINT/SIGTERM (the parent run is then KILLED and interrupted trials are queued to run again).
    With GPUs (``devices``, else CUDA_VISIBLE_DEVICES, else all) and more than one worker, or any placement
    option, each worker sees its own devices (:mod:`.placement`); workers divide the CPU threads, and those
    sharing a GPU its memory (``gpu_memory`` bytes each, else evenly; :mod:`.share`). ``cap_batch_size``
    probes the base recipe once, before the study opens, and drops the space's batch sizes that do not fit
    (peak at most ``max_memory`` bytes, else ``gpu_memory``, else the device's memory; :mod:`.cap`).
    """
    start = time.perf_counter()
    if seeds is not None:  # the command line's form of sweep.seeds
        if not 1 <= seeds <= 1000:
            raise RecipeError(f"must be between 1 and 1000, got {seeds}", field="--seeds")
        overrides = [*overrides, ("sweep.seeds", seeds)]
    places: list[str] = []
    if workers > 1 or devices is not None or gpus_per_trial is not None or trials_per_gpu is not None or (
            gpu_memory is not None):
        places = assign(visible_devices(devices), workers, gpus_per_trial or 1, trials_per_gpu or 1)
    shares(workers, places, cpus(), gpu_memory)  # budgets the devices cannot hold are bad input
    # workers start first: they import torch and Lightning (seconds) while this process checks the input and
    # prepares; they touch nothing before send hands them their arguments, and are killed on bad input
    procs = spawn(workers - 1, workers, places[1:]) if workers > 1 else []
    try:
        plan, base = make_plan(recipe, overrides, trials=trials, workers=workers, storage=storage, study=study,
                           seed=seed, heartbeat=heartbeat, tracking_uri=tracking_uri, command=command, quiet=quiet,
                           patience=patience)
        plan.stop = stop or StopRules()
        plan.stop.check()
        with placed_here(places[0] if places else None):
            ranks(base)  # a DDP strategy a worker cannot launch is bad input now, not a failure of every trial
        capped = None
        if cap_batch_size:  # on worker 0's devices: this process is worker 0 (placed_here)
            with placed_here(places[0] if places else None):
                capped = cap_batch_sizes(plan, base, max_memory if max_memory is not None else gpu_memory)
            base = plan.base()
        elif max_memory is not None:
            raise RecipeError("bounds the batch-size probe: give it with --cap-batch-size", field="--max-memory")
    except BaseException:
        send(procs, None, [])
        raise
    if capped is not None and not quiet:
        print(capped.line(), file=sys.stderr, flush=True)
    if plan.stop.timeout is not None:
        plan.stop.deadline = time.time() + plan.stop.timeout
    plan.resume_changed = resume_changed
    if plan.fixed:
        print(f"warning: {', '.join(plan.fixed)} set by -s: left out of sweep.space, every trial runs the value "
              "given", file=sys.stderr, flush=True)
    from retort.tracking.store import prepare_store

    quiet_optuna()
    lock = study_lock(plan.storage, plan.study, plan.patience)
    try:
        opened = open_storage(plan.storage, plan.patience)
        prepare_store(plan.tracking_uri)  # create/migrate the MLflow store once, before any worker writes to it
        with lock:
            study_obj, existing = open_study(opened, plan, base)
            record = open_parent(study_obj, plan, base)
    except BaseException:
        send(procs, None, [])
        raise
    plan.parent_run_id = record.run_id
    counts = tally(existing)
    missing = max(0, plan.trials - sum(counts.values())) + counts["WAITING"]
    k = max(1, min(workers, missing))
    offset = len(existing)  # a resumed study's workers do not replay the seeds (and first points) of before
    seeds = [plan.seed + offset + i for i in range(k)] if missing else []
    record.set_tags({Tag.TRIALS: plan.trials, Tag.WORKERS: len(seeds),
                     Tag.SAMPLER_SEEDS: ",".join(map(str, seeds)), Tag.COMMAND: plan.command,
                     Tag.STORAGE: display(plan.storage), Tag.DASHBOARD: dashboard_command(plan.storage),
                     **({Tag.SWEEP_FIXED: ",".join(plan.fixed)} if plan.fixed else {}),
                     **({Tag.SWEEP_BASE_CHANGED: ",".join(plan.base_changed)} if plan.base_changed else {})})
    if capped is not None:
        record.set_tags({Tag.SWEEP_BATCH_FITS: capped.largest, Tag.SWEEP_BATCH_CAP: capped.cap or "",
                         Tag.SWEEP_BATCH_DROPPED: ",".join(map(str, capped.dropped))})
    if places and seeds:
        record.set_tags({Tag.PLACEMENT: describe(places[:len(seeds)])})
    if not quiet:
        from retort.recipes.display import clear_status

        clear_status()
        verb = "resuming" if existing else "starting"
        print(f"sweep {plan.study!r}: {verb}, {sum(counts.values())} of {plan.trials} trials in the study, "
              f"{len(seeds)} worker{'s' * (len(seeds) != 1)}; storage {display(plan.storage)}; "
              f"parent run {record.run_id}", flush=True)
        if places and seeds:
            print(f"placement: {describe(places[:len(seeds)])}", flush=True)
    board = _board(plan, base, study_obj)  # before send: the workers learn that the board prints their lines
    # workers 1..k-1; this process is worker 0; each with its share of the threads and of a shared GPU
    parts = shares(len(seeds), places[:len(seeds)], cpus(), gpu_memory) if seeds else []
    supervisor = Supervisor(send(procs, plan, seeds[1:], parts[1:], placed=bool(places)), plan)
    supervisor.start()
    try:
        try:
            with interruptible():
                if seeds:
                    study_obj.sampler = make_sampler(base, seeds[0])
                    with placed_here(places[0] if places else None):
                        Worker(plan, 0, seeds[0], study=study_obj, placement=places[0] if places else None,
                               share=parts[0]).run()
                if supervisor.is_alive():  # a core is free from now on: load what the end needs
                    threading.Thread(target=prefetch_analysis, daemon=True).start()
                supervisor.wait()
        finally:
            if board is not None:
                board.close()
    except Interrupted as exc:
        supervisor.forward(exc.signum)
        supervisor.wait()
        for problem in supervisor.problems:
            print(f"error: {problem}", file=sys.stderr)
        locked(lock, lambda: reap(study_obj, plan.tracking_uri, plan.experiment, ending=os.getpid(),
                                  heartbeat=plan.heartbeat))
        record.finish("KILLED", f"interrupted by {exc}")
        exc.run_id, exc.uri = record.run_id, plan.tracking_uri  # the parent, for the command line's last words
        raise
    except BaseException as exc:  # the study out of reach, or a bug: the other workers stop as if interrupted
        supervisor.forward(signal.SIGTERM)  # (never SIGKILL a working worker: its trial is re-queued cleanly)
        supervisor.wait()
        for problem in supervisor.problems:
            print(f"error: {problem}", file=sys.stderr)
        with contextlib.suppress(Exception):
            locked(lock, lambda: reap(study_obj, plan.tracking_uri, plan.experiment, ending=os.getpid(),
                                      heartbeat=plan.heartbeat))
        record.finish("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    problems = supervisor.problems
    locked(lock, lambda: reap(study_obj, plan.tracking_uri, plan.experiment, heartbeat=plan.heartbeat))
    result = conclude(study_obj, plan, base, record, problems)
    result.wall_seconds = time.perf_counter() - start
    return result


def _board(plan: Any, base: Any, study: Any) -> Any:
    """On a terminal, the live table of running trials (``recipes/display.py``), which reads every worker's
    trials from the study and prints their lines (on stderr); None when quiet or when stdout or stderr is not a
    terminal (then the workers print their lines)."""
    from retort.recipes.display import SweepBoard, live
    from retort.recipes.sweep.worker import finished_line, worker_of

    if plan.quiet or not live() or not live(sys.stdout):  # stdout to a file keeps every trial's line
        return None
    plan.board = True
    metric = base.sweep["metric"]
    board = SweepBoard(plan.study, plan.trials, metric, base.sweep["direction"])
    board.follow(lambda: study.get_trials(deepcopy=False),
                 lambda trial, finished: finished_line(trial, finished, plan.trials, metric), worker_of)
    return board
