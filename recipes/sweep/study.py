"""The study and the parent run: opening them (a resumed sweep keeps both) and the conclusion: best trial,
best recipe, importances and plots."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from retort.plugins.errors import RecipeError
from retort.recipes.sweep.lease import FAILURE, RUN_ID, is_void, tally
from retort.recipes.sweep.plan import Plan, SweepResult
from retort.recipes.sweep.search import grid_of, make_pruner, make_sampler
from retort.recipes.sweep.space import applied, decode, trial_recipe
from retort.recipes.sweep.stop import saved, why_stop
from retort.recipes.sweep.storage import dashboard_command, display
from retort.tracking.vocabulary import Metric, StudyAttr, Tag


def prefetch_analysis() -> None:
    """Import what :func:`_log_analysis` needs (about 1.5 s), while the last workers finish."""
    with contextlib.suppress(Exception):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot
        import optuna.importance._fanova  # scikit-learn's forests
        import optuna.visualization.matplotlib  # noqa: F401



def open_study(storage: Any, plan: Plan, base: Any) -> tuple[Any, list[Any]]:
    """Create the study, or load it and check that it is the same search (direction, metric)."""
    import optuna

    direction = base.sweep["direction"]
    study = optuna.create_study(study_name=plan.study, storage=storage, direction=direction, load_if_exists=True,
                                sampler=make_sampler(base, plan.seed), pruner=make_pruner(base))
    if study.direction.name.lower() != direction:
        raise RecipeError(f"study {plan.study!r} in {display(plan.storage)} is to {study.direction.name.lower()}, "
                          f"this recipe's sweep is to {direction}; use another --study", field="sweep.direction")
    metric = study.user_attrs.get(StudyAttr.METRIC)
    if metric is not None and metric != base.sweep["metric"]:
        raise RecipeError(f"study {plan.study!r} optimizes {metric!r}, not {base.sweep['metric']!r}; use another "
                          "--study", field="sweep.metric")
    made_for, digest = study.user_attrs.get(StudyAttr.BASE_RECIPE), base_digest(base)
    if made_for is not None and study.user_attrs.get(StudyAttr.BASE_DIGEST) != digest:
        changed = changed_fields(made_for, searched_base(base))
        if not plan.resume_changed:
            shown = "; ".join(changed[:8]) + (f"; and {len(changed) - 8} more" if len(changed) > 8 else "")
            raise RecipeError(f"study {plan.study!r} was made for another base recipe ({shown}): use a new --study "
                              "NAME for this one, or --resume-changed to continue the study anyway",
                              field="--study", source=base.source)
        plan.base_changed = [c.split(":", 1)[0] for c in changed]
    if metric is None:
        study.set_user_attr(StudyAttr.METRIC, base.sweep["metric"])
        study.set_user_attr(Tag.RECIPE, base.name)
    if made_for is None:  # a new study (or one from before studies remembered their base)
        study.set_user_attr(StudyAttr.BASE_RECIPE, searched_base(base))
        study.set_user_attr(StudyAttr.BASE_DIGEST, digest)
    return study, study.get_trials(deepcopy=False)


# Fields that say where and how long a sweep runs, not what it searches: they may differ between the
# invocations (and machines) that share a study.
_WHERE = ("tracking.", "sweep.trials", "trainer.accelerator", "trainer.devices", "trainer.num_nodes",
          "trainer.strategy", "trainer.threads")


def searched_base(base: Any) -> dict[str, Any]:
    """The base recipe a study is made for, flat: every resolved field but those of :data:`_WHERE`."""
    return {k: v for k, v in base.flat().items() if not k.startswith(_WHERE)}


def base_digest(base: Any) -> str:
    """SHA-256 of :func:`searched_base`, as canonical JSON."""
    import hashlib

    text = json.dumps(searched_base(base), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def changed_fields(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``path: old -> new`` for each field that differs (``(none)`` where one side lacks it)."""
    from retort.tracking.context import mask

    def show(d: dict[str, Any], k: str) -> str:
        return mask(json.dumps(d[k], default=str))[:80] if k in d else "(none)"

    now = json.loads(json.dumps(now, default=str))  # as the study stored it
    return [f"{k}: {show(before, k)} -> {show(now, k)}" for k in sorted(set(before) | set(now))
            if before.get(k, ...) != now.get(k, ...)]


def open_parent(study: Any, plan: Plan, base: Any) -> Any:
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
            return RunRecord(client, run_id, run.info.experiment_id).adopt(plan.tracking_uri)
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


def conclude(study: Any, plan: Plan, base: Any, record: Any, problems: list[str]) -> SweepResult:
    """Best trial, counts, the best recipe, importances and plots on the parent run; its final status."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    counts = tally(trials)
    result = SweepResult(study=plan.study, storage=display(plan.storage), dashboard=dashboard_command(plan.storage),
                         parent_run_id=record.run_id, trials=plan.trials, counts=counts, problems=problems)
    finished = counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"]
    if finished < plan.trials and problems:
        problems.append(f"the study holds {finished} of {plan.trials} finished trials: run the same command again "
                        "to run the rest")
    elif problems:  # workers died, but the others finished the study
        result.warnings, result.problems = list(problems), []
    if base.sweep["sampler"] == "grid" and finished < plan.trials:
        points = math.prod(len(v) for v in grid_of(base).values())
        result.warnings.append(f"the grid has {points} points, fewer than the {plan.trials} trials asked for")
    from retort.recipes.sweep.memory import did_not_fit

    oom = sum(1 for t in trials if t.state == optuna.trial.TrialState.COMPLETE and did_not_fit(t))
    record.log({"trials_complete": counts["COMPLETE"] - oom, "trials_pruned": counts["PRUNED"],
                "trials_failed": counts["FAIL"] + oom}, step=finished)
    stopped = why_stop(plan.stop, trials, base.sweep["direction"] == "maximize", time.time()) \
        if finished < plan.trials else None
    if stopped:
        left, seconds = saved(trials, plan.trials)
        result.stopped = stopped
        record.set_tags({Tag.SWEEP_STOPPED: stopped})
        record.log({Metric.STOP_TRIALS_SAVED: left, Metric.STOP_SECONDS_SAVED: round(seconds, 3)}, step=finished)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and not did_not_fit(t)]
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
        reasons = sorted({t.user_attrs.get(FAILURE, "") for t in trials if t.state.name == "FAIL" and not is_void(t)})
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
        recipe = trial_recipe(plan.draft, plan.overrides, applied(decode(best.params, base), base))
        text = dumps(mask_tree(recipe.to_dict()))
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
