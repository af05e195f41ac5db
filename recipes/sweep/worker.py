"""A worker: claims trials of one study and runs each as a recipe run, until the study is full."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from retort.plugins.errors import Interrupted, RecipeError, RunFailed, failure
from retort.recipes.sweep.lease import (
    BEAT,
    FAILURE,
    OWNER,
    RETRY_OF,
    RUN_ID,
    identity,
    locked,
    reap,
    requeue,
    study_lock,
    tally,
)
from retort.recipes.sweep.memory import did_not_fit
from retort.recipes.sweep.plan import Plan
from retort.recipes.sweep.pruning import pruning_class
from retort.recipes.sweep.ranks import Ranks, rank_threads, ranks
from retort.recipes.sweep.search import make_pruner, make_sampler
from retort.recipes.sweep.share import Share, apply, release
from retort.recipes.sweep.space import applied, suggest, trial_recipe
from retort.recipes.sweep.stop import why_stop
from retort.recipes.sweep.storage import StorageUnavailable, open_storage
from retort.tracking.vocabulary import Metric, StudyAttr, Tag


def _fmt(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={json.dumps(v)}" for k, v in values.items())


def trial_line(number: int, state: str, what: str, values: Mapping[str, Any], finished: int, trials: int,
               worker: Any) -> str:
    """``trial 3 complete: val/loss 0.3812  optimizer.lr=0.0012  [4/20 finished, worker 1]``."""
    return f"trial {number} {state.lower()}: {what}  {_fmt(values)}  [{finished}/{trials} finished, worker {worker}]"


def worker_of(trial: Any) -> Any:
    """The worker that ran (or runs) an Optuna trial, from its owner attribute."""
    return (trial.system_attrs.get(StudyAttr.OWNER) or {}).get("worker", "-")


def valued(metric: str, value: float, attrs: Mapping[str, Any]) -> str:
    """``val/loss 0.3812``; a complete trial over seeds: ``val/loss 0.3812 ± 0.012 (3 seeds)``."""
    seeds = attrs.get(StudyAttr.SEED_VALUES)
    if not seeds or StudyAttr.VALUE_STD not in attrs:
        return f"{metric} {value:.5g}"
    return f"{metric} {value:.5g} ± {attrs[StudyAttr.VALUE_STD]:.2g} ({len(seeds)} seeds)"


def finished_line(trial: Any, finished: int, trials: int, metric: str) -> str:
    """:func:`trial_line` of a finished Optuna trial, read back from the study (the sweep's live table
    prints the lines of every worker's trials)."""
    state = trial.state.name
    steps = trial.intermediate_values
    value = trial.value if state == "COMPLETE" else (steps[max(steps)] if steps and state == "PRUNED" else None)
    if did_not_fit(trial):  # finished for the sampler, out of memory for people
        value = None
    what = valued(metric, value, trial.user_attrs) if value is not None else \
        str(trial.system_attrs.get(StudyAttr.FAIL_REASON, ""))
    return trial_line(trial.number, state, what, trial.params, finished, trials, worker_of(trial))


class Worker:
    """Runs trials of one study in this process until the study holds ``plan.trials`` of them."""

    def __init__(self, plan: Plan, index: int, seed: int, study: Any = None, parent_pid: int | None = None,
                 placement: str | None = None, share: Share | None = None):
        import optuna

        self.plan, self.index, self.seed, self.parent_pid = plan, index, seed, parent_pid
        self.placement = placement  # the CUDA_VISIBLE_DEVICES this worker was given, recorded on its trials
        self.share = share or Share(None)  # its CPU threads and GPU memory budget, recorded on its trials
        self.share_tags: dict[str, str] = {}
        self.base = plan.base()
        self.metric = self.base.sweep["metric"]
        if study is None:
            study = optuna.load_study(study_name=plan.study, storage=open_storage(plan.storage, plan.patience),
                                      sampler=make_sampler(self.base, seed), pruner=make_pruner(self.base))
        self.study = study
        self.lock = study_lock(plan.storage, plan.study, plan.patience)
        self.owner = {**identity(), "worker": index, "seed": seed, "heartbeat": plan.heartbeat}
        self.current: Any = None
        self.launcher: Ranks | None = None  # started at the first trial over several processes
        self.ran = 0
        self._stop = threading.Event()

    def say(self, text: str) -> None:
        if not self.plan.quiet and not self.plan.board:
            print(text, flush=True)

    def run(self) -> int:
        """Claim and run trials until none is left; returns how many ran here."""
        self.share_tags = apply(self.share)  # here: worker 0's CUDA sees only its placement from now on
        beat = threading.Thread(target=self._beat, name="retort-heartbeat", daemon=True)
        beat.start()
        try:
            while (trial := self._claim()) is not None:
                self._run_trial(trial)
        finally:
            self._stop.set()
            if self.launcher is not None:
                self.launcher.close()
            release()
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

        def claim() -> Any:  # under the lock: the count and the ask (exactly N trials over all workers)
            reap(self.study, self.plan.tracking_uri, self.plan.experiment, heartbeat=self.plan.heartbeat)
            trials = self.study.get_trials(deepcopy=False)
            counts = tally(trials)
            if not counts["WAITING"]:
                if sum(counts.values()) >= self.plan.trials:
                    return None
                sampler = self.study.sampler
                if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(self.study):
                    return None
            if why_stop(self.plan.stop, trials, self.base.sweep["direction"] == "maximize", time.time()):
                return None
            trial = self.study.ask()
            storage = self.study._storage
            storage.set_trial_system_attr(trial._trial_id, OWNER, self.owner)
            storage.set_trial_system_attr(trial._trial_id, BEAT, time.time())
            self.current = trial
            return trial

        return locked(self.lock, claim)

    def _tags(self, trial: Any) -> dict[str, str]:
        tags = {Tag.STUDY: self.plan.study, Tag.TRIAL: str(trial.number),
                Tag.WORKER: str(self.index), Tag.SAMPLER_SEED: str(self.seed),
                Tag.RUN_NAME: f"{self.plan.study} trial {trial.number}"}
        if self.placement is not None:
            tags[Tag.PLACEMENT] = self.placement
        tags.update(self.share_tags)
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
            recipe = trial_recipe(self.plan.draft, self.plan.overrides, setting)
            if recipe.trainer["threads"]:  # the recipe's own thread count wins over the worker's share
                tags[Tag.THREADS] = str(recipe.trainer["threads"])
            seeds = recipe.sweep["seeds"] if recipe.sweep else 1
            pruning = pruning_class()(trial, self.metric, self.base.sweep["direction"] == "maximize",
                                      recipe.trainer["max_epochs"], seeds)
            world = ranks(recipe)
            if world > 1 and seeds > 1:
                raise RecipeError("a trial over several DDP processes runs one seed; give sweep.seeds 1 or "
                                  "trainer.devices 1", field="sweep.seeds")
            if world > 1 and not recipe.trainer["threads"]:  # each rank gets its share of the worker's threads
                tags[Tag.THREADS] = str(rank_threads(world))
            started = time.perf_counter()
            if seeds > 1:
                outcome = self._run_seeds(trial, recipe, seeds, tags, pruning)
            elif world > 1:  # DDP inside the trial: its ranks are processes of their own (ranks.py)
                self.launcher = self.launcher or Ranks(self.plan, self.share)
                outcome = self.launcher.run(trial, setting, tags, world, pruning)
            else:
                outcome = recipes.run(recipe, tracking_uri=self.plan.tracking_uri, quiet=True,
                                      command=self.plan.command, callbacks=[pruning], tags=tags,
                                      parent_run_id=self.plan.parent_run_id)
        except Interrupted as exc:  # the run is KILLED; the trial runs again when the sweep resumes
            self.current = None
            why = f"interrupted by {exc}"
            locked(self.lock, lambda: requeue(self.study, self.study._storage.get_trial(trial._trial_id), why,
                                              self.plan.tracking_uri, self.plan.experiment))
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
            run_id = run_id or self._failed_run(trial, values, tags, reason)
            self._failed(trial, reason, reason.startswith("out of memory"), run_id, values)
            return
        except Exception as exc:  # an error outside training (storage, record): fail the trial, go on
            run_id, reason = (pruning.run_id if pruning else None), failure(exc)
            self._finish(trial, "FAIL", None, reason, run_id or self._failed_run(trial, values, tags, reason), values,
                         close=run_id is not None)
            return
        finally:
            self._after_trial()
        trial.set_user_attr("fit_seconds", round(outcome.fit_seconds, 4))  # training only
        trial.set_user_attr("run_seconds", round(time.perf_counter() - started, 4))  # the whole recorded run(s)
        run_id = pruning.run_id if seeds > 1 else outcome.run_id
        if seeds > 1:
            trial.set_user_attr("epochs", [len(c) for c in pruning.curves])
            seed_runs = [r for r in outcome.run_ids.values() if r]
            if outcome.failed:  # the seeds stopped at the failed one; the trial's run is FAILED with it
                seed, why = next(iter(outcome.failed.items()))
                cause = outcome.errors[seed].__cause__
                if isinstance(cause, StorageUnavailable):  # the study is out of reach: stop, resume later
                    raise cause
                self._failed(trial, f"seed {seed}: {why}", why.startswith("out of memory"), run_id, values, seed_runs)
                return
            self._record_seeds(trial, outcome, pruning)
        else:
            trial.set_user_attr("epochs", outcome.epochs)
            seed_runs = []
        if pruning.pruned_at is not None:
            self._finish(trial, "PRUNED", pruning.reported, f"pruned at {pruning.pruned_at}", run_id, values,
                         seed_runs=seed_runs)
            return
        value = pruning.best
        if value is None or pruning.bad is not None or len(pruning.values) < seeds:
            reason = f"{self.metric} is {pruning.bad if pruning.bad is not None else 'not recorded'} at the last epoch"
            self._finish(trial, "FAIL", None, reason, run_id, values, close=True, seed_runs=seed_runs)
            return
        self._finish(trial, "COMPLETE", float(value), None, run_id, values, seed_runs=seed_runs)

    def _run_seeds(self, trial: Any, recipe: Any, seeds: int, tags: Mapping[str, str], pruning: Any) -> Any:
        """The trial over its seeds, one after another (:func:`recipes.seeds.run_seeds`): the trial's run is
        their parent, a child of the sweep's; each seed's run carries the trial's tags too. A pruned seed, a
        failed one or a non-finite value stops the seeds after it."""
        from retort.recipes.seeds import run_seeds

        def started(run_id: str) -> None:
            pruning.run_id = run_id
            trial.set_user_attr(RUN_ID, run_id)

        each = {k: v for k, v in tags.items() if k != Tag.RUN_NAME} | {Tag.SWEEP_PARENT: self.plan.parent_run_id}
        return run_seeds(recipe, seeds, tracking_uri=self.plan.tracking_uri, quiet=True, command=self.plan.command,
                         parent_run_id=self.plan.parent_run_id, tags=tags, child_tags=each, callbacks=[pruning],
                         started=started,
                         proceed=lambda r: not r.failed and pruning.pruned_at is None and pruning.bad is None)

    def _record_seeds(self, trial: Any, outcome: Any, pruning: Any) -> None:
        """Per trial: each seed's value (its best epoch's), their mean (the trial's value) and standard deviation,
        on the Optuna trial and on the trial's run."""
        import statistics

        by_seed = {str(s): v for s, v in zip(outcome.seeds, pruning.values)}
        std = statistics.stdev(by_seed.values()) if len(by_seed) > 1 else 0.0
        trial.set_user_attr(StudyAttr.SEED_VALUES, by_seed)
        trial.set_user_attr(StudyAttr.VALUE_STD, std)
        if pruning.run_id and by_seed:
            try:
                from mlflow import MlflowClient

                client = MlflowClient(tracking_uri=self.plan.tracking_uri)
                client.log_metric(pruning.run_id, Metric.TRIAL_VALUE, statistics.fmean(by_seed.values()), step=0)
                client.log_metric(pruning.run_id, Metric.TRIAL_VALUE_STD, std, step=0)
                client.set_tag(pruning.run_id, Tag.SEED_VALUES, json.dumps(by_seed))
            except Exception as exc:
                print(f"warning: could not record trial {trial.number}'s seed values in MLflow: {exc}", file=sys.stderr)

    def _failed(self, trial: Any, reason: str, oom: bool, run_id: str | None, values: Mapping[str, Any],
                seed_runs: Sequence[str] = ()) -> None:
        """A trial whose run failed: FAIL, or, out of memory, a constraint the sampler learns from
        (sweep/memory.py)."""
        if oom:
            from retort.recipes.sweep.memory import infeasible

            worst = infeasible(trial, self.base.sweep["direction"] == "maximize")
            self._finish(trial, "COMPLETE", worst, reason, run_id, values, fits=False, seed_runs=seed_runs)
            return
        self._finish(trial, "FAIL", None, reason, run_id, values, seed_runs=seed_runs)

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
                values: Mapping[str, Any], close: bool = False, fits: bool = True,
                seed_runs: Sequence[str] = ()) -> None:
        """Tell Optuna, then tag the MLflow run with the trial's final state (FAIL for one that did not fit in
        memory, which Optuna holds as a finished trial with a violated constraint), and its seeds' runs too."""
        import optuna

        TrialState = optuna.trial.TrialState
        self.current = None
        try:
            if run_id:
                trial.set_user_attr(RUN_ID, run_id)
            if reason and (state == "FAIL" or not fits):
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
            tags = {Tag.TRIAL_STATE: state if fits else "FAIL"}
            if state == "PRUNED":
                tags[Tag.PRUNED] = reason or ""
            if close and reason:
                tags[Tag.FAILURE] = reason[:5000]
            self._tag(run_id, tags, "FAILED" if close and reason else None)
        for seed_run in seed_runs:
            self._tag(seed_run, {Tag.TRIAL_STATE: state if fits else "FAIL"})
        self.ran += 1
        done = tally(self.study.get_trials(deepcopy=False))
        finished = done["COMPLETE"] + done["PRUNED"] + done["FAIL"]
        what = valued(self.metric, value, trial.user_attrs if state == "COMPLETE" else {}) \
            if value is not None and fits else (reason or "")
        self.say(trial_line(trial.number, state, what, values, finished, self.plan.trials, self.index))
