"""Sweeps: the space, trials as MLflow child runs, pruned and failed trials, workers, crashes and resuming.

Real Optuna studies (journal files, PostgreSQL), real MLflow stores and real runs of tiny recipes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retort import plugins, recipes
from retort.plugins.errors import RecipeError
from retort.recipes import sweep as sw
from retort.recipes.sweep.search import grid_of, make_pruner, make_sampler
from retort.recipes.sweep.space import applied, decode, space_of, suggest, trial_recipe
from retort.recipes.sweep.storage import default_journal, open_storage
from retort.recipes.sweep.worker import finished_line
from retort.tracking.record import param_value
from tests.conftest import all_runs, retort

TINY = """\
name: tiny
seed: 0
data: {name: wine, batch_size: 16}
model: {name: mlp, hidden: [8]}
optimizer: {name: adam, lr: 0.01}
metrics: [accuracy]
trainer: {max_epochs: 3, accelerator: cpu, devices: 1}
tracking: {checkpoint: false, system_metrics: false}
sweep:
  metric: val/loss
  trials: 4
  sampler: tpe
  pruner: median
  pruner_args: {n_startup_trials: 1}
  space:
    optimizer.lr: {low: 1.0e-3, high: 1.0e-1, log: true}
    data.batch_size: {choices: [8, 16, 32]}
"""


def write(folder: Path, text: str, name: str = "tiny.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def journal_study(folder: Path, study: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(folder / "optuna" / f"{study}.journal")))
    return optuna.load_study(study_name=study, storage=storage)


def last_lines(stdout: str) -> tuple[float, dict, str]:
    lines = stdout.strip().splitlines()[-3:]
    assert [ln.split(":", 1)[0] for ln in lines] == ["best_value", "best_params", "parent_run_id"], lines
    return float(lines[0].split(": ", 1)[1]), json.loads(lines[1].split(": ", 1)[1]), lines[2].split(": ", 1)[1]


def children(client, parent_id: str) -> dict[int, object]:
    """The parent's child runs by trial number (each trial has exactly one)."""
    runs = [r for r in all_runs(client) if r.data.tags.get("mlflow.parentRunId") == parent_id]
    by_trial = {int(r.data.tags["retort.trial"]): r for r in runs}
    assert len(by_trial) == len(runs), "two runs for one trial"
    return by_trial


def check_records(client, study, parent_id: str) -> dict[int, object]:
    """Every trial has one child run whose tags and status agree with the trial."""
    runs = children(client, parent_id)
    trials = study.get_trials()
    assert sorted(runs) == [t.number for t in trials]
    for t in trials:
        run = runs[t.number]
        tags = run.data.tags
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert tags["retort.study"] == study.study_name
        state = "FAIL" if t.constraints.get("out_of_memory", 0) > 0 else t.state.name  # Optuna: a constraint
        assert tags["retort.trial_state"] == state
        assert tags["mlflow.runName"] == f"{study.study_name} trial {t.number}"
        owner = t.system_attrs["retort:owner"]
        assert tags["retort.worker"] == str(owner["worker"]) and tags["retort.sampler_seed"] == str(owner["seed"])
        expected = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}[state]
        if "retort:retried" in t.system_attrs:
            expected = "KILLED"
        assert run.info.status == expected, (t.number, t.state, run.info.status, tags.get("retort.failure"))
        for path, value in t.params.items():  # the run's recipe holds the trial's values
            assert run.data.params[path] == param_value(value), (path, value)
    return runs


def check_parent(client, study, parent_id: str, best_value: float, best_params: dict, tmp: Path) -> None:
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["retort.sweep"] == "parent" and parent.data.tags["retort.study"] == study.study_name
    # what compare reads to sort the trials is what the sweep wrote
    from retort.tracking.compare import Run, sweep_of

    read = sweep_of(Run(run_id=parent_id, name="", experiment_id="", status="FINISHED", state="FINISHED",
                        start_time=0, params={}, tags=dict(parent.data.tags), last={}))
    assert (read.metric, read.direction) == (study.user_attrs["retort.metric"], study.direction.name.lower())
    best = study.best_trial
    assert best.value == best_value and best.params == best_params
    assert parent.data.tags["retort.best_trial"] == str(best.number)
    assert parent.data.tags["retort.best_run_id"] == best.user_attrs["mlflow_run_id"]
    assert parent.data.metrics["best_value"] == best_value
    arts = {a.path for folder in (None, "plots") for a in client.list_artifacts(parent_id, folder)}
    assert {"best_recipe.yaml", "base_recipe.yaml", "importances.json", "plots/optimization_history.png",
            "plots/parallel_coordinate.png"} <= arts
    # the best recipe runs as it is, and holds the best trial's values
    path = Path(client.download_artifacts(parent_id, "best_recipe.yaml", str(tmp)))
    flat = recipes.load(path).flat()
    assert {k: flat[k] for k in best_params} == best_params
    importances = json.loads(Path(client.download_artifacts(parent_id, "importances.json", str(tmp))).read_text())
    assert set(importances) == set(best_params) and math.isclose(sum(importances.values()), 1.0)


# --- the space: bad input stops before anything is recorded -----------------------------------------

BAD = [
    ("sweep: {space: {optimizer.lr: {low: 0.1, high: 0.01}}}", "sweep.space.optimizer.lr", "below high"),
    ("sweep: {space: {optimizer.lr: {low: 0.0, high: 0.1, log: true}}}", "sweep.space.optimizer.lr", "low > 0"),
    ("sweep: {space: {optimizer.rl: {low: 0.1, high: 1.0}}}", "sweep.space.optimizer.rl", "'optimizer.lr'"),
    ("sweep: {space: {data.batch_size: {choices: []}}}", "sweep.space.data.batch_size", "empty"),
    ("sweep: {sampler: bayes, space: {optimizer.lr: {low: 0.1, high: 1.0}}}", "sweep.sampler", "'tpe'"),
    ("sweep: {pruner: asha, space: {optimizer.lr: {low: 0.1, high: 1.0}}}", "sweep.pruner", "'hyperband'"),
    ("sweep: {metric: val/acc, space: {optimizer.lr: {low: 0.1, high: 1.0}}}", "sweep.metric", "'val/accuracy'"),
    ("sweep: {metric: test/loss, space: {optimizer.lr: {low: 0.1, high: 1.0}}}", "sweep.metric",
     "recorded every epoch"),
    ("sweep: {space: {}}", "sweep.space", "empty"),
    ("seed: 1", "sweep", "no sweep section"),
    ("sweep: {space: {data.batch_size: {choices: [16, 0]}}}", "sweep.space.data.batch_size",
     "choice 0 makes an invalid recipe"),
    ("sweep: {space: {model.head: {choices: [auto, tanh]}}}", "sweep.space.model.head",
     "'tanh' makes an invalid recipe"),
    ("sweep: {space: {trainer.max_epochs: {low: 0, high: 3}}}", "sweep.space.trainer.max_epochs",
     "value 0 makes an invalid recipe"),
    ("sweep: {space: {tracking.uri: {choices: [a, b]}}}", "sweep.space.tracking.uri", "not a training field"),
    ("sweep: {sampler: grid, space: {optimizer.lr: {low: 0.1, high: 1.0}}}", "sweep.space.optimizer.lr",
     "grid sampler needs choices or a step"),
    ("sweep: {space: {optimizer.lr: {low: 0.001, high: 0.1, log: true, step: 0.01}}}", "sweep.space.optimizer.lr",
     "cannot have a step"),
    ("sweep: {space: {optimizer.lr: {low: 0.1, high: 1.0, type: int}}}", "sweep.space.optimizer.lr", "whole numbers"),
    ("sweep: {space: {optimizer.lr: {low: 0.1, high: 1.0}}, lr_scaling: {rule: linear, reference: 64}}",
     "sweep.lr_scaling.batch_size", "does not search"),
    ("sweep: {space: {data.batch_size: {choices: [8]}}, lr_scaling: {rule: cubic, reference: 64}}",
     "sweep.lr_scaling.rule", "'linear' or 'sqrt'"),
    ("sweep: {space: {data.batch_size: {choices: [8]}}, lr_scaling: {rule: sqrt, reference: 0}}",
     "sweep.lr_scaling.reference", "greater than 0"),
    ("sweep: {space: {optimizer.lr: {low: 0.1, high: 1.0}}, sampler_args: {n_startup: 3}}", "sweep.sampler_args",
     "n_startup"),
    ("sweep: {pruner: median, pruner_args: {warmup: 3}, space: {optimizer.lr: {low: 0.1, high: 1.0}}}",
     "sweep.pruner_args", "warmup"),
    ("sweep: {pruner: patient, pruner_args: {wrapped: asha}, space: {optimizer.lr: {low: 0.1, high: 1.0}}}",
     "sweep.pruner_args", "wrapped must be one of"),
]


@pytest.mark.parametrize(("sweep_text", "field", "words"), BAD)
def test_bad_space_stops_before_anything_is_recorded(workdir: Path, client, sweep_text: str, field: str,
                                                     words: str):
    path = write(workdir, "data: {name: wine}\nmetrics: [accuracy]\n" + sweep_text + "\n")
    with pytest.raises(RecipeError) as info:
        sw.sweep(path, quiet=True)
    assert info.value.field == field, str(info.value)
    assert words in str(info.value), str(info.value)
    assert all_runs(client) == [] and not (workdir / "optuna").exists()


@pytest.mark.parametrize(("kwargs", "field", "words"), [
    ({"trials": 0}, "--trials", "at least 1"),
    ({"workers": 0}, "--workers", "at least 1"),
    ({"seeds": 0}, "--seeds", "between 1 and 1000"),
    ({"overrides": ["sweep.seeds=0"]}, "sweep.seeds", "greater than or equal to 1"),
    ({"heartbeat": 0}, "--heartbeat", "above 0"),
    ({"patience": -1.0}, "--storage-patience", "0 seconds or more"),
    ({"patience": math.nan}, "--storage-patience", "0 seconds or more"),
    ({"storage": "redis://localhost/0"}, "--storage", "postgresql://"),
    ({"storage": "sqlite:///study.db", "workers": 2}, "--storage", "database is locked"),
])
def test_bad_options(workdir: Path, client, kwargs: dict, field: str, words: str):
    path = write(workdir, TINY)
    with pytest.raises(RecipeError) as info:
        sw.sweep(path, quiet=True, **kwargs)
    assert info.value.field == field and words in str(info.value), str(info.value)
    assert all_runs(client) == [] and not (workdir / "optuna").exists()


def test_cli_bad_input_exits_2(workdir: Path, client):
    write(workdir, TINY.replace("pruner: median", "pruner: asha"))
    out = retort("sweep", "tiny.yaml", cwd=workdir)
    assert out.returncode == 2, out.stderr
    assert "sweep.pruner" in out.stderr and "'hyperband'" in out.stderr
    assert all_runs(client) == [] and not (workdir / "optuna").exists()


# --- sampling and the trial's recipe ------------------------------------------------------------------

def test_trial_values_apply_by_dotted_path(tmp_path: Path):
    import optuna

    text = TINY.replace("optimizer: {name: adam, lr: 0.01}", "optimizer: {name: descent, eta: 0.01}").replace(
        "    data.batch_size: {choices: [8, 16, 32]}\n",
        "    data.batch_size: {choices: [8, 16, 32]}\n    model.hidden: {choices: [[8], [16, 8]]}\n"
        "    trainer.max_epochs: {low: 2, high: 6, step: 2}\n    model.dropout: {low: 0, high: 0.5}\n"
        "    loss.name: {choices: [logitcrossentropy, crossentropy]}\n"
        "  lr_scaling: {rule: sqrt, reference: 16}\n")
    base = recipes.load(write(tmp_path, text))
    kinds = {p: k for p, (_, k) in space_of(base).items()}
    assert kinds == {"optimizer.lr": "float", "data.batch_size": "choices", "model.hidden": "choices",
                     "trainer.max_epochs": "int", "model.dropout": "float", "loss.name": "choices"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    study.enqueue_trial({"optimizer.lr": 0.02, "data.batch_size": 32, "model.hidden": "[16, 8]",
                         "trainer.max_epochs": 4, "model.dropout": 0.25, "loss.name": "crossentropy"})
    trial = study.ask()
    values = suggest(trial, base)
    assert values == {"optimizer.lr": 0.02, "data.batch_size": 32, "model.hidden": [16, 8],
                      "trainer.max_epochs": 4, "model.dropout": 0.25, "loss.name": "crossentropy"}
    assert decode(trial.params, base) == values
    scaled = applied(values, base)
    assert scaled["optimizer.lr"] == pytest.approx(0.02 * math.sqrt(32 / 16))
    draft = recipes.read(tmp_path / "tiny.yaml")
    r = trial_recipe(draft, [], scaled)
    assert r.optimizer["lr"] == pytest.approx(0.02 * math.sqrt(2)) and r.data["batch_size"] == 32
    assert r.model["hidden"] == [16, 8] and r.trainer["max_epochs"] == 4 and r.model["dropout"] == 0.25
    assert r.loss["name"] == "crossentropy" and r.model["head"] == "softmax"  # re-resolved, as `-s` would
    for _ in range(20):  # every sampled value is in its range and builds a recipe
        t = study.ask()
        v = suggest(t, base)
        assert 1e-3 <= v["optimizer.lr"] <= 0.1 and v["trainer.max_epochs"] in (2, 4, 6)
        assert 0 <= v["model.dropout"] <= 0.5 and v["data.batch_size"] in (8, 16, 32)
        trial_recipe(draft, [], applied(v, base))
        study.tell(t, 0.0)


def test_a_trial_is_what_retort_run_with_the_same_overrides_runs(tmp_path: Path):
    """One path for config: the alias case. The file says ``eta``; an override of ``lr`` (on the command line
    or sampled by a sweep) replaces it, and both give the same recipe, field for field."""
    path = write(tmp_path, TINY.replace("optimizer: {name: adam, lr: 0.01}", "optimizer: {name: adam, eta: 0.01}"))
    cli = retort("show", str(path), "-s", "optimizer.lr=0.1", "-s", "data.batch_size=8", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    shown = recipes.load(path, ["optimizer.lr=0.1", "data.batch_size=8"])
    assert cli.stdout == shown.to_yaml() and shown.optimizer["lr"] == 0.1
    trial = trial_recipe(recipes.read(path), ["data.batch_size=8"], {"optimizer.lr": 0.1})
    assert trial.to_dict() == shown.to_dict()
    # two spellings of one field in the file itself stay an error, on both paths
    both = write(tmp_path, TINY.replace("{name: adam, lr: 0.01}", "{name: adam, lr: 0.01, eta: 0.1}"), "both.yaml")
    cli = retort("show", str(both), cwd=tmp_path)
    assert cli.returncode == 2 and "another alias both set 'lr'" in cli.stderr
    with pytest.raises(RecipeError, match="another alias both set 'lr'"):
        trial_recipe(recipes.read(both), [], {"data.batch_size": 8})
    # a left-out plugin section gets its default plugin, so its fields can be set (and swept)
    bare = write(tmp_path, "data: {name: wine}\n", "bare.yaml")
    written = recipes.load(bare, ["optimizer={name: adam, lr: 0.2}"])
    assert recipes.load(bare, ["optimizer.eta=0.2"]).optimizer == written.optimizer


def test_a_set_on_a_swept_field_fixes_it_and_leaves_the_space(workdir: Path, client):
    """``-s data.batch_size=32`` (or an alias of a swept field) is never silently overridden by the sampled
    value: the field leaves the space, every trial runs the value given, and the sweep says so."""
    from retort.recipes.sweep.plan import make_plan

    path = write(workdir, TINY.replace("optimizer: {name: adam, lr: 0.01}", "optimizer: {name: adam, eta: 0.01}"))
    kwargs = dict(trials=None, workers=1, storage=None, study=None, seed=None, heartbeat=10.0, tracking_uri=None,
                  command=None, quiet=True)
    with pytest.raises(RecipeError, match=r"set by -s \(data\.batch_size, optimizer\.lr\): nothing is left"):
        sw.sweep(path, overrides=["data.batch_size=32", "optimizer.eta=0.05"], quiet=True)  # eta: lr's alias
    assert all_runs(client) == []
    plan, base = make_plan(path, ["data.batch_size=32"], **kwargs)
    assert plan.fixed == ["data.batch_size"] and list(base.sweep["space"]) == ["optimizer.lr"]
    assert plan.base().to_dict() == base.to_dict()
    trial = trial_recipe(plan.draft, plan.overrides, {"optimizer.lr": 0.02})
    assert trial.data["batch_size"] == 32 and trial.optimizer["lr"] == 0.02
    out = retort("sweep", "tiny.yaml", "--trials", "1", "-s", "data.batch_size=32", cwd=workdir)
    assert out.returncode == 0, out.stderr
    assert "warning: data.batch_size set by -s: left out of sweep.space" in out.stderr
    runs = all_runs(client)
    [parent] = [r for r in runs if r.data.tags.get("retort.sweep") == "parent"]
    [child] = [r for r in runs if r is not parent]
    assert parent.data.tags["retort.sweep.fixed"] == "data.batch_size"
    assert child.data.params["data.batch_size"] == "32"
    assert sorted({k.rsplit(".", 1)[0] for k in parent.data.params if k.startswith("sweep.space.")}) == [
        "sweep.space.optimizer.lr"]


def test_samplers_and_pruners_by_name(tmp_path: Path):
    import optuna

    base = recipes.load(write(tmp_path, TINY))
    for name, cls in (("tpe", "TPESampler"), ("random", "RandomSampler"), ("gp", "GPSampler"),
                      ("cmaes", "CmaEsSampler"), ("qmc", "QMCSampler"), ("grid", "GridSampler")):
        text = TINY.replace("sampler: tpe", f"sampler: {name}").replace("{low: 1.0e-3, high: 1.0e-1, log: true}",
                                                                        "{low: 0.01, high: 0.03, step: 0.01}")
        sampler = make_sampler(recipes.load(write(tmp_path, text, f"{name}.yaml")), 7)
        assert type(sampler).__name__ == cls
    grid = grid_of(recipes.load(write(tmp_path, text, "grid.yaml")))
    assert grid == {"optimizer.lr": pytest.approx([0.01, 0.02, 0.03]), "data.batch_size": [8, 16, 32]}
    hyperband = make_pruner(base, "hyperband", {})
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner) and hyperband._max_resource == 3
    patient = make_pruner(base, "patient", {"patience": 2, "wrapped": "percentile", "percentile": 40.0})
    assert isinstance(patient, optuna.pruners.PatientPruner) and patient._patience == 2
    assert isinstance(patient._wrapped_pruner, optuna.pruners.PercentilePruner)
    assert patient._wrapped_pruner._percentile == 40.0
    for name, cls in (("none", "NopPruner"), ("median", "MedianPruner"), ("percentile", "PercentilePruner"),
                      ("successive_halving", "SuccessiveHalvingPruner")):
        assert type(make_pruner(base, name, {})).__name__ == cls


def test_cmaes_searches_a_recipe_space_by_evolution(tmp_path: Path):
    """cmaes is installed with retort: after its independent start-up trials it samples from its evolving
    distribution (a generation per trial) and closes in on the optimum of a smooth objective."""
    import optuna

    text = TINY.replace("sampler: tpe", "sampler: cmaes\n  sampler_args: {n_startup_trials: 4}").replace(
        "data.batch_size: {choices: [8, 16, 32]}", "model.dropout: {low: 0.0, high: 0.8}")
    base = recipes.load(write(tmp_path, text))
    study = optuna.create_study(sampler=make_sampler(base, 3))

    def objective(trial):
        v = suggest(trial, base)
        return (math.log10(v["optimizer.lr"]) + 1.5) ** 2 + (v["model.dropout"] - 0.3) ** 2

    study.optimize(objective, n_trials=40)
    evolved = [t for t in study.trials if any(k.startswith("cma:generation") for k in t.system_attrs)]
    assert len(evolved) == 36 and not any("cma:generation" in str(t.system_attrs) for t in study.trials[:4])
    assert study.best_value < 0.01
    first, last = study.trials[:10], study.trials[-10:]
    assert statistics.median(t.value for t in last) < statistics.median(t.value for t in first)


def test_grid_sweep_with_lr_scaling_stops_when_the_grid_is_done(workdir: Path, client):
    text = TINY.replace("sampler: tpe", "sampler: grid").replace("max_epochs: 3", "max_epochs: 1").replace(
        "    optimizer.lr: {low: 1.0e-3, high: 1.0e-1, log: true}\n    data.batch_size: {choices: [8, 16, 32]}\n",
        "    data.batch_size: {choices: [16, 32]}\n  lr_scaling: {rule: linear, reference: 8}\n")
    result = sw.sweep(write(workdir, text), trials=5, quiet=True)
    study = journal_study(workdir, "tiny")
    assert sorted(t.params["data.batch_size"] for t in study.trials) == [16, 32]
    assert result.ok and result.warnings == ["the grid has 2 points, fewer than the 5 trials asked for"]
    runs = check_records(client, study, result.parent_run_id)
    for t in study.trials:  # lr = 0.01 at batch size 8, scaled linearly
        lr = 0.01 * t.params["data.batch_size"] / 8
        assert t.user_attrs["applied"] == {"optimizer.lr": lr}
        assert runs[t.number].data.params["optimizer.lr"] == repr(lr)


# --- trials: complete, pruned, failed (NaN, exception) -----------------------------------------------

if "sweep_test_boom" not in plugins.available("callback"):
    @plugins.register("callback", "sweep_test_boom")
    def sweep_test_boom(*, at_epoch: int = 0):
        """Raise at the end of epoch `at_epoch` (0: never); a trial that fails by exception."""
        import pytorch_lightning as pl

        class Boom(pl.Callback):
            def on_train_epoch_end(self, trainer, m):
                if trainer.current_epoch + 1 == at_epoch:
                    raise RuntimeError(f"boom at epoch {at_epoch}")

        return Boom()


def test_pruned_and_failed_trials_are_recorded_and_the_sweep_goes_on(workdir: Path, client):
    import optuna

    text = TINY.replace("optimizer: {name: adam, lr: 0.01}", "optimizer: {name: descent, lr: 0.1}").replace(
        "metrics: [accuracy]", "metrics: [accuracy]\ncallbacks: [{name: sweep_test_boom}]").replace(
        "    optimizer.lr: {low: 1.0e-3, high: 1.0e-1, log: true}\n    data.batch_size: {choices: [8, 16, 32]}\n",
        "    optimizer.lr: {choices: [0.5, 1.0e-6, 1.0e+30]}\n    callbacks.0.at_epoch: {choices: [0, 2]}\n"
        "    model.activation: {choices: [relu, swoosh]}\n")
    path = write(workdir, text)
    journal = workdir / "optuna" / "tiny.journal"
    journal.parent.mkdir()
    # a real queue in the real study fixes the order: good, too slow to keep, NaN, exception, unknown activation
    storage = open_storage(str(journal))
    study = optuna.create_study(study_name="tiny", storage=storage)
    for lr, at, act in ((0.5, 0, "relu"), (1e-6, 0, "relu"), (1e30, 0, "relu"), (0.5, 2, "relu"), (0.5, 0, "swoosh")):
        study.enqueue_trial({"optimizer.lr": lr, "callbacks.0.at_epoch": at, "model.activation": act})
    result = sw.sweep(path, trials=5, quiet=True)
    study = journal_study(workdir, "tiny")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "FAIL", "FAIL", "FAIL"]
    assert result.counts == {"COMPLETE": 1, "PRUNED": 1, "FAIL": 3, "RUNNING": 0, "WAITING": 0}
    assert result.best_trial == 0
    assert result.best_params == {"optimizer.lr": 0.5, "callbacks.0.at_epoch": 0, "model.activation": "relu"}
    assert result.ok and result.best_value == study.trials[0].value
    runs = check_records(client, study, result.parent_run_id)
    pruned = runs[1]
    assert pruned.info.status == "FINISHED" and pruned.data.tags["retort.pruned"] == "pruned at epoch 1"
    assert study.trials[1].last_step == 1 and study.trials[1].value == study.trials[1].intermediate_values[1]
    nan_reason = runs[2].data.tags["retort.failure"]
    assert "NonFiniteLoss" in nan_reason and "epoch 1" in nan_reason
    assert study.trials[2].user_attrs["failure"] == nan_reason
    assert runs[3].data.tags["retort.failure"] == "RuntimeError: boom at epoch 2"
    assert study.trials[3].user_attrs["failure"] == "RuntimeError: boom at epoch 2"
    invalid = runs[4].data.tags["retort.failure"]
    assert invalid.startswith("invalid recipe:") and "swoosh" in invalid and "model.activation" in invalid
    assert study.trials[4].user_attrs["failure"] == invalid
    assert client.get_run(result.parent_run_id).data.metrics["trials_failed"] == 3


@pytest.mark.slow
def test_a_trial_over_seeds_is_their_mean_and_a_pruned_trial_stops_its_seeds(workdir: Path, client):
    """sweep.seeds: 2 runs each trial with the recipe's seed and the next, one after another, as child runs of
    the trial's run; the trial's value is the mean of the seeds' best epochs, and the pruner sees, at step
    seed * max_epochs + epoch, the mean over the seeds so far of their running best at that epoch."""
    import optuna

    from retort.tracking.compare import compare, select

    text = TINY.replace("seed: 0", "seed: 5").replace("max_epochs: 3", "max_epochs: 2").replace(
        "trials: 4", "trials: 3\n  seeds: 2").replace("pruner_args: {n_startup_trials: 1}",
                                                      "pruner_args: {n_startup_trials: 2, n_warmup_steps: 0}").replace(
        "    data.batch_size: {choices: [8, 16, 32]}\n", "").replace("system_metrics: false", "system_metrics: false, "
                                                                  "log_model: false")
    path = write(workdir, text)
    journal = workdir / "optuna" / "tiny.journal"
    journal.parent.mkdir()
    study = optuna.create_study(study_name="tiny", storage=open_storage(str(journal)))
    for lr in (0.05, 0.03, 1e-6):  # two that learn, then one far behind them after its first epoch
        study.enqueue_trial({"optimizer.lr": lr})
    result = sw.sweep(path, quiet=True)
    study = journal_study(workdir, "tiny")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    trial_runs = check_records(client, study, result.parent_run_id)
    seed_runs: dict[int, dict[int, object]] = {}
    for r in all_runs(client):
        if "retort.sweep_parent" in r.data.tags:
            tags = r.data.tags
            assert tags["retort.sweep_parent"] == result.parent_run_id
            n = int(tags["retort.trial"])
            assert tags["mlflow.parentRunId"] == tags["retort.seed_group"] == trial_runs[n].info.run_id
            assert tags["retort.trial_state"] == study.trials[n].state.name
            assert tags["mlflow.runName"] == f"tiny trial {n} seed {r.data.params['seed']}"
            seed_runs.setdefault(n, {})[int(r.data.params["seed"])] = r
    assert {n: sorted(s) for n, s in seed_runs.items()} == {0: [5, 6], 1: [5, 6], 2: [5]}  # the pruned one stopped

    def curve(run) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val/loss"), key=lambda m: m.step)]

    for n in (0, 1):
        t, five, six = study.trials[n], curve(seed_runs[n][5]), curve(seed_runs[n][6])
        assert len(five) == len(six) == 2
        best = [min(five), min(six)]
        assert t.value == pytest.approx(statistics.fmean(best), rel=1e-12)
        assert t.user_attrs["seed_values"] == pytest.approx({"5": best[0], "6": best[1]}, rel=1e-12)
        assert t.user_attrs["value_std"] == pytest.approx(statistics.stdev(best), rel=1e-12)
        assert t.intermediate_values == pytest.approx({  # what the pruner saw
            1: five[0], 2: min(five), 3: (five[0] + six[0]) / 2, 4: (min(five) + min(six)) / 2}, rel=1e-12)
        run = trial_runs[n]
        assert run.data.tags["retort.seeds"] == "5,6" and "seed" not in run.data.params
        assert json.loads(run.data.tags["retort.seed_values"]) == t.user_attrs["seed_values"]
        assert run.data.metrics["trial/value"] == pytest.approx(t.value, rel=1e-12)
        assert run.data.metrics["trial/value_std"] == pytest.approx(statistics.stdev(best), rel=1e-12)
    line = finished_line(study.trials[0], 1, 3, "val/loss")
    assert line.startswith(f"trial 0 complete: val/loss {study.trials[0].value:.5g} ± "
                           f"{statistics.stdev(study.trials[0].user_attrs['seed_values'].values()):.2g} (2 seeds)  ")
    pruned = study.trials[2]
    assert pruned.intermediate_values == pytest.approx({1: curve(seed_runs[2][5])[0]}, rel=1e-12)
    assert trial_runs[2].data.tags["retort.pruned"] == "pruned at epoch 1 of seed 1 of 2 (step 1)"
    assert result.best_run_id == study.best_trial.user_attrs["mlflow_run_id"]
    # compare shows each trial once: its seeds' runs as one group
    cmp = compare(select(f"sqlite:///{workdir / 'mlflow.db'}", sweeps=[result.parent_run_id]))
    assert cmp.grouped and sorted(sorted(r.seed for r in row) for row in cmp.rows) == [["5"], ["5", "6"], ["5", "6"]]
    assert {r.run_id for row in cmp.rows for r in row} == {
        r.info.run_id for by_seed in seed_runs.values() for r in by_seed.values()}


def test_a_trial_out_of_memory_is_recorded_failed_and_the_sweep_goes_on(workdir: Path, client):
    """A model too large for memory fails while it is built, before the runner records anything: the trial
    still gets its FAILED child run, saying out of memory, and the next trial runs."""
    import optuna

    text = TINY.replace("    data.batch_size: {choices: [8, 16, 32]}\n",
                        "    model.hidden: {choices: [[8], [1000000000000]]}\n")
    path = write(workdir, text)
    journal = default_journal(os.environ["MLFLOW_TRACKING_URI"], "tiny")
    journal.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name="tiny", storage=open_storage(str(journal)))
    for hidden in ([1000000000000], [8]):  # 64 x 10^12 weights: 256 TB
        study.enqueue_trial({"optimizer.lr": 0.01, "model.hidden": json.dumps(hidden)})
    result = sw.sweep(path, trials=2, quiet=True)
    study = journal_study(workdir, "tiny")
    # to Optuna a finished trial with the worst value and a violated constraint: what samplers learn from
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"] and result.ok and result.best_trial == 1
    assert study.trials[0].value == math.inf and study.trials[0].constraints == {"out_of_memory": 1.0}
    assert study.trials[1].constraints == {} and study.best_trial.number == 1
    runs = check_records(client, study, result.parent_run_id)
    reason = runs[0].data.tags["retort.failure"]
    assert runs[0].info.status == "FAILED" and reason.startswith("out of memory: RuntimeError")
    assert runs[0].data.tags["retort.trial_state"] == "FAIL"
    assert "can't allocate memory" in reason and study.trials[0].user_attrs["failure"] == reason
    parent = client.get_run(result.parent_run_id).data.metrics
    assert (parent["trials_failed"], parent["trials_complete"]) == (1, 1)


def test_out_of_memory_as_a_constraint_makes_tpe_propose_less_of_what_did_not_fit():
    """The same seeded TPE study, where batch sizes of 64 and up do not fit: told as a violated constraint
    (what the sweep does) the sampler proposes them less often than told as failures, which it ignores."""
    import optuna

    from retort.recipes.sweep.memory import infeasible

    def proposals_that_do_not_fit(as_constraint: bool) -> int:
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4))
        too_big = 0
        for i in range(30):
            trial = study.ask()
            batch = trial.suggest_categorical("batch_size", [16, 32, 64, 128])
            lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
            if batch < 64:
                study.tell(trial, (math.log10(lr) + 1.5) ** 2 - batch / 100)
            elif as_constraint:
                too_big += i >= 4
                study.tell(trial, infeasible(trial, maximize=False))
            else:
                too_big += i >= 4
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return too_big

    learned, ignored = proposals_that_do_not_fit(True), proposals_that_do_not_fit(False)
    assert learned < ignored / 2, (learned, ignored)


# --- workers, resuming, crashes -----------------------------------------------------------------------

@pytest.mark.slow
def test_two_workers_then_resume_adds_only_the_missing_trials(workdir: Path, client, tmp_path: Path):
    write(workdir, TINY)
    out = retort("sweep", "tiny.yaml", "--workers", "2", "--trials", "4", cwd=workdir)
    assert out.returncode == 0, out.stderr
    best_value, best_params, parent_id = last_lines(out.stdout)
    study = journal_study(workdir, "tiny")
    assert len(study.trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert {t.system_attrs["retort:owner"]["seed"] for t in study.trials} <= {0, 1}
    check_records(client, study, parent_id)
    check_parent(client, study, parent_id, best_value, best_params, tmp_path)
    tags = client.get_run(parent_id).data.tags
    assert tags["retort.workers"] == "2" and tags["retort.sampler_seeds"] == "0,1"
    assert tags["retort.dashboard"] == f"optuna-dashboard {workdir / 'optuna' / 'tiny.journal'}"
    # the same study again, two more trials: only those run, under the same parent run
    result = sw.sweep(workdir / "tiny.yaml", trials=6, quiet=True)
    study = journal_study(workdir, "tiny")
    assert [t.number for t in study.trials] == list(range(6)) and result.parent_run_id == parent_id
    assert {t.system_attrs["retort:owner"]["seed"] for t in study.trials[4:]} == {4}  # seed + trials before
    check_records(client, study, parent_id)
    check_parent(client, study, parent_id, result.best_value, result.best_params, tmp_path / "again")
    again = sw.sweep(workdir / "tiny.yaml", trials=6, quiet=True)
    assert len(journal_study(workdir, "tiny").trials) == 6 and again.best_value == result.best_value


def unpruned_digits(epochs: int, batch_size: str | None) -> str:
    """TINY on digits, unpruned, ``epochs`` long: trials that last long enough to be caught in training.
    ``batch_size``: the space's batch-size line, or None to search the learning rate only."""
    return TINY.replace("data: {name: wine, batch_size: 16}", "data: {name: digits, batch_size: 16}").replace(
        "max_epochs: 3", f"max_epochs: {epochs}").replace(
        "pruner: median\n  pruner_args: {n_startup_trials: 1}", "pruner: none").replace(
        "\n    data.batch_size: {choices: [8, 16, 32]}", f"\n    {batch_size}" if batch_size else "")


def retort_command() -> tuple[str, dict[str, str]]:
    """The console script, and an environment that leaves the store to the working folder."""
    return (str(Path(sys.executable).with_name("retort")),
            {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        hit = predicate()
        if hit:
            return hit
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_killed_worker_and_interrupted_sweep_resume_with_no_trial_lost(workdir: Path, client):
    import optuna

    # 8 epochs of about 0.1 s: the looks below (every 0.05 s) catch a trial with epochs to go on a fast machine too
    write(workdir, unpruned_digits(8, "data.batch_size: {choices: [8]}"))
    exe, env = retort_command()
    cmd = [str(exe), "sweep", "tiny.yaml", "--workers", "2", "--trials", "4", "--heartbeat", "1"]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = workdir / "optuna" / "tiny.journal"

    def opened():
        if journal.exists():
            try:
                return journal_study(workdir, "tiny")
            except KeyError:  # the file is there, the study not yet
                return None
        return None

    study = _wait_for(opened, proc, what="the study")

    def training(exclude: int | None = None, reported: int = 0):
        """A trial whose run has started and has reported at most ``reported`` of its 8 epochs (so that it is
        still running when hit)."""
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            owner = t.system_attrs.get("retort:owner", {})
            started = "mlflow_run_id" in t.user_attrs and len(t.intermediate_values) <= reported
            if started and owner.get("pid") not in (None, exclude):
                return t
        return None

    # the command's own process is worker 0; kill worker 1, a process of its own
    victim = _wait_for(lambda: training(exclude=proc.pid), proc, what="a trial in training")
    os.kill(victim.system_attrs["retort:owner"]["pid"], signal.SIGKILL)
    # the parent re-queues the dead worker's trial at once; then Ctrl-C-like SIGTERM stops the sweep
    _wait_for(lambda: study.trials[victim.number].state.name == "FAIL", proc, what="the lost trial re-queued")
    # any of its remaining trials with two epochs to go: a window of its first epoch alone (a few tenths of a
    # second) could pass between two looks on a busy machine, and the sweep end before the signal
    other = _wait_for(lambda: training(exclude=victim.system_attrs["retort:owner"]["pid"], reported=2), proc,
                      what="the other worker")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "worker" in err and "SIGKILL" in err, err
    trials = study.get_trials()
    assert not [t for t in trials if t.state.name == "RUNNING"], err
    parent_id = journal_study(workdir, "tiny").user_attrs["mlflow_parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "KILLED" and "SIGTERM" in parent.data.tags["retort.failure"]
    for lost, why in ((victim.number, "ended while running"), (other.number, "interrupted by SIGTERM")):
        t = trials[lost]
        assert t.state.name == "FAIL" and why in t.system_attrs.get("retort:retried", ""), (lost, t.state, err)
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED", (lost, run.data.tags)
    # the same command again finishes the study: the re-queued trials run with their params, none is lost
    out = retort(*cmd[1:], cwd=workdir)
    assert out.returncode == 0, out.stderr
    study = journal_study(workdir, "tiny")
    counted = [t for t in study.trials if "retort:retried" not in t.system_attrs]
    assert len(counted) == 4 and all(t.state.name == "COMPLETE" for t in counted)
    for lost in (victim.number, other.number):
        repeat = study.trials[lost]
        while "retort:retried" in repeat.system_attrs:  # a repeat can itself have been interrupted
            (repeat,) = [t for t in study.trials if t.user_attrs.get("retry_of") == repeat.number]
        assert repeat.params == study.trials[lost].params and repeat.state.name == "COMPLETE"
    runs = check_records(client, study, parent_id)
    assert runs[victim.number].data.tags["retort.trial_state"] == "FAIL"
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]
    assert client.get_run(parent_id).info.status == "FINISHED"


@pytest.mark.slow
def test_two_independent_processes_share_a_postgres_study(workdir: Path, client, postgres_url: str):
    write(workdir, TINY)
    exe = Path(sys.executable).with_name("retort")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [str(exe), "sweep", "tiny.yaml", "--storage", postgres_url, "--study", "shared", "--trials", "5", "-q"]
    procs = [subprocess.Popen([*cmd, "--seed", str(seed)], cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (0, 100)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    import optuna

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert {t.system_attrs["retort:owner"]["pid"] for t in study.trials} <= {p.pid for p in procs}
    parents = {last_lines(o[0])[2] for o in outs}
    assert len(parents) == 1  # the second command found the study's parent run
    check_records(client, study, parents.pop())


@pytest.mark.slow
def test_the_study_database_going_down_is_waited_out_or_stops_the_sweep_cleanly(workdir: Path, client,
                                                                              postgres_url: str):
    """The study's database out of reach in the middle of a trial (a proxy in front of PostgreSQL drops every
    connection and refuses new ones; the machine's cluster, which other tests share, stays up): an outage
    within --storage-patience is waited out and the sweep finishes; one longer than that stops it with one
    line and exit 1, and the same command then finishes the study with no trial lost."""
    import optuna

    from tests.pgproxy import ProxyProcess

    write(workdir, unpruned_digits(6, None))
    exe, env = retort_command()

    proxy = ProxyProcess(postgres_url)

    def sweep_cmd(study: str, patience: float) -> list[str]:
        return [str(exe), "sweep", "tiny.yaml", "--storage", proxy.url, "--study", study, "--trials", "3",
                "--storage-patience", str(patience), "-q"]

    # the outage starts the moment a trial reports its first epoch, in the middle of its training (catching
    # it by polling the study missed trials of well under a second on a fast machine)
    for study, patience, down in (("restart", 60, 8.0), ("outage", 3, None)):
        proxy.cut_on("INSERT INTO trial_intermediate_values", down if down is not None else 3600)
        proc = subprocess.Popen(sweep_cmd(study, patience), cwd=workdir, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            proxy.outage(0)
            if proc.poll() is None:
                proc.kill()
        assert "Traceback" not in err, err
        loaded = optuna.load_study(study_name=study, storage=postgres_url)
        if down is not None:  # waited out (or never noticed, between two calls): finished as if nothing happened
            assert proc.returncode == 0, err
            assert [t.state.name for t in loaded.trials] == ["COMPLETE"] * 3
            check_records(client, loaded, last_lines(out)[2])
        else:  # stopped: one clear line, exit 1; the same command finishes the study
            assert proc.returncode == 1 and "is unreachable" in err, err
            [line] = [x for x in err.splitlines() if x.startswith("error:")]
            assert f"was unreachable for {patience:g} s" in line and "run the same command again" in line
            again = subprocess.run(sweep_cmd(study, patience), cwd=workdir, env=env, capture_output=True, text=True)
            assert again.returncode == 0, again.stderr
            loaded = optuna.load_study(study_name=study, storage=postgres_url)
            counted = [t for t in loaded.trials if "retort:retried" not in t.system_attrs]
            assert len(counted) == 3 and all(t.state.name == "COMPLETE" for t in counted)
            lost = [t for t in loaded.trials if "retort:retried" in t.system_attrs]
            [repeat] = [t for t in loaded.trials if t.user_attrs.get("retry_of") == lost[0].number]
            assert len(lost) == 1 and repeat.params == lost[0].params and repeat.state.name == "COMPLETE"
    assert proxy.close() == ["INSERT INTO trial_intermediate_values"] * 2  # each outage came mid-trial
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_a_database_restart_at_any_moment_of_a_two_worker_sweep_loses_and_doubles_nothing(workdir: Path, client,
                                                                                       postgres_url: str):
    """PostgreSQL restarting under a 2-worker sweep, as a proxy in front of it plays it (every connection cut,
    new ones refused for a moment; the machine's cluster stays up): while a trial trains, while a worker takes
    the study lock (which the database then releases), while a trial is created (the statement lost; or
    committed with its reply lost), while one finishes. The sweep ends with exactly N trials, each with one
    finished MLflow run, nothing RUNNING in Optuna or MLflow, exit 0, no traceback."""
    import optuna

    from tests.pgproxy import ProxyProcess

    write(workdir, unpruned_digits(3, None))
    exe, env = retort_command()
    proxy = ProxyProcess(postgres_url)
    moments = [("INSERT INTO trial_intermediate_values", False), ("pg_advisory_lock", False),
               ("INSERT INTO trials", False), ("UPDATE trials SET state", True), ("INSERT INTO trials", True)]
    for statement, committed in moments:
        proxy.cut_on(statement, 1.0, forward=committed)
    try:
        out = subprocess.run([exe, "sweep", "tiny.yaml", "--storage", proxy.url, "--study", "restarts", "--trials",
                              "4", "--workers", "2", "--storage-patience", "60", "--heartbeat", "2", "-q"],
                             cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    finally:
        cuts = proxy.close()
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert cuts == [s + (" (committed)" if c else "") for s, c in moments], out.stderr  # each moment was caught
    study = optuna.load_study(study_name="restarts", storage=postgres_url)
    counted = [t for t in study.trials if "retort:retried" not in t.system_attrs]
    assert len(counted) == 4 and all(t.state.name == "COMPLETE" for t in counted), \
        [(t.number, t.state.name, t.user_attrs) for t in study.trials]
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    check_records(client, study, last_lines(out.stdout)[2])


def test_a_study_lock_lost_with_its_connection_is_taken_again_before_a_trial_is_added(postgres_url: str):
    """The database releases an advisory lock when the holder's connection drops, so after a restart a second
    worker can take it while the first still counts on it. The first then adds no trial (a creation checks the
    lock first) and starts over once it holds the lock again: what it counted before may be stale."""
    import threading

    import optuna

    from retort.recipes.sweep.lease import PostgresLock, locked
    from retort.recipes.sweep.storage import LockLost, fence
    from tests.pgproxy import Proxy

    proxy = Proxy(postgres_url)
    try:
        storage = open_storage(proxy.url, 30)
        study = optuna.create_study(study_name="fenced", storage=storage)
        first, second = PostgresLock(proxy.url, "fenced", 30), PostgresLock(proxy.url, "fenced", 30)
        with first:
            assert first.held()
            proxy.outage(0.5)  # the restart: every connection dropped, the lock released
            with second:  # taken as soon as the database is back
                assert second.held() and not first.held()
                with fence(first), pytest.raises(LockLost):
                    study.ask()
                study.ask()  # the second worker's trial
        assert [t.number for t in study.get_trials(deepcopy=False)] == [0]
        tries: list[int] = []

        holds = threading.Event()

        def other() -> None:  # another worker: takes the lock once the database is back, adds a trial
            with PostgresLock(proxy.url, "fenced", 30):
                holds.set()
                study.ask()
                time.sleep(0.3)

        def claim() -> int:  # counts, then adds a trial; the lock is lost after its first count
            tries.append(len(study.get_trials(deepcopy=False)))
            if len(tries) == 1:
                proxy.outage(0.5)
                threading.Thread(target=other).start()
                assert holds.wait(30)
            return study.ask().number

        assert locked(first, claim) == 2 and tries == [1, 2]  # counted again, after the other worker's trial
        assert [t.number for t in study.get_trials(deepcopy=False)] == [0, 1, 2]
    finally:
        proxy.close()


def test_a_lost_reply_to_a_trial_creation_makes_no_second_trial(postgres_url: str):
    """The server commits the new trial, the reply never comes back (a proxy drops it and the connection).
    Optuna's own RDBStorage tries the creation again and makes a second trial; the sweep's storage finds the
    first by the token written with it. A state change whose reply is lost is read back, not repeated."""
    import optuna

    from tests.pgproxy import Proxy

    proxy = Proxy(postgres_url)
    try:
        plain = optuna.storages.RDBStorage(proxy.url, engine_kwargs={"pool_pre_ping": True})
        study_id = plain.create_new_study([optuna.study.StudyDirection.MINIMIZE], "plain")
        proxy.lose_after = b"INSERT INTO trials"
        plain.create_new_trial(study_id)
        assert proxy.commits_lost == 1
        assert len(plain.get_all_trials(study_id)) == 2  # the duplicate this test guards against

        patient = open_storage(proxy.url, 30)
        study = optuna.create_study(study_name="patient", storage=patient)
        proxy.lose_after = b"INSERT INTO trials"
        trial = study.ask()
        assert proxy.commits_lost == 2
        fresh = optuna.load_study(study_name="patient", storage=postgres_url)
        [only] = fresh.get_trials(deepcopy=False)
        assert only.number == trial.number == 0 and only._trial_id == trial._trial_id
        assert only.state.name == "RUNNING" and only.system_attrs["retort:token"]
        study.enqueue_trial({"x": 1.0})  # a template trial (WAITING, with params) goes the same way
        proxy.lose_after = b"UPDATE trials SET state"
        popped = study.ask({"x": optuna.distributions.FloatDistribution(0, 2)})  # WAITING -> RUNNING, reply lost
        assert proxy.commits_lost == 3 and popped.number == 1 and popped.params == {"x": 1.0}
        proxy.lose_after = b"UPDATE trials SET state"
        study.tell(popped, 0.5)
        assert proxy.commits_lost == 4
        states = [(t.number, t.state.name, t.value) for t in fresh.get_trials(deepcopy=False)]
        assert states == [(0, "RUNNING", None), (1, "COMPLETE", 0.5)]
    finally:
        proxy.close()


def test_a_study_refuses_to_resume_with_another_base_recipe(workdir: Path, client):
    """The study remembers the base recipe it was made for; resuming with another one is refused, naming
    the fields, before anything is recorded; --resume-changed continues it and tags what changed. More
    trials, other machines' devices or another store are not another base."""
    import optuna

    path = write(workdir, TINY)
    first = sw.sweep(path, trials=1, quiet=True)
    study = journal_study(workdir, "tiny")
    made_for = study.user_attrs["retort.base_recipe"]
    assert made_for["trainer.max_epochs"] == 3 and made_for["optimizer.lr"] == 0.01
    assert "sweep.trials" not in made_for and not any(k.startswith("tracking.") for k in made_for)
    assert len(study.user_attrs["retort.base_digest"]) == 64
    runs = len(all_runs(client))
    with pytest.raises(RecipeError) as err:
        sw.sweep(path, overrides=["trainer.max_epochs=2", "model.hidden=[16]"], trials=2, quiet=True)
    assert err.value.field == "--study"
    assert "(model.hidden: [8] -> [16]; trainer.max_epochs: 3 -> 2)" in err.value.message
    assert "use a new --study NAME" in err.value.message and "--resume-changed" in err.value.message
    assert len(all_runs(client)) == runs and len(journal_study(workdir, "tiny").trials) == 1
    out = retort("sweep", "tiny.yaml", "--trials", "2", "-s", "trainer.max_epochs=2", cwd=workdir)
    assert out.returncode == 2 and "trainer.max_epochs: 3 -> 2" in out.stderr and len(out.stderr.splitlines()) == 1
    again = sw.sweep(path, overrides=["trainer.max_epochs=2", "trainer.threads=1"], trials=2, quiet=True,
                     resume_changed=True)
    assert again.parent_run_id == first.parent_run_id
    assert client.get_run(first.parent_run_id).data.tags["retort.sweep.base_changed"] == "trainer.max_epochs"
    study = journal_study(workdir, "tiny")
    assert len(study.trials) == 2 and study.user_attrs["retort.base_recipe"] == made_for  # still the first base
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)


@pytest.mark.slow
def test_stop_rules_end_a_sweep_early_and_record_what_they_saved(workdir: Path, client):
    """--target, --patience and --timeout: no trial is claimed once a rule holds; the parent run says which
    rule and what it saved (trials not run, times the mean trial's run time)."""
    from retort.recipes.sweep.stop import StopRules

    path = write(workdir, TINY.replace("  pruner: median\n  pruner_args: {n_startup_trials: 1}\n", "  pruner: none\n"))
    result = sw.sweep(path, trials=5, study="target", quiet=True, stop=StopRules(target=10.0))  # any val/loss
    [trial] = journal_study(workdir, "target").trials
    assert result.ok and result.stopped == f"target: trial 0 reached {trial.value:.6g} (<= 10)"
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["retort.sweep.stopped"] == result.stopped
    assert parent.data.metrics["stop/trials_saved"] == 4
    assert parent.data.metrics["stop/seconds_saved"] == pytest.approx(4 * trial.user_attrs["run_seconds"], abs=1e-3)

    result = sw.sweep(path, trials=12, study="patience", quiet=True, stop=StopRules(patience=2))
    values = [t.value for t in sorted(journal_study(workdir, "patience").trials, key=lambda t: t.number)]
    best = values.index(min(values))
    assert len(values) == best + 3 < 12 and result.stopped.startswith(f"patience: no improvement in 2 trials after "
                                                                       f"trial {best}")
    for k in range(1, len(values)):  # no earlier point met the rule: the sweep stopped as soon as it held
        assert len(values[:k]) - 1 - values[:k].index(min(values[:k])) < 2
    assert client.get_run(result.parent_run_id).data.metrics["stop/trials_saved"] == 12 - len(values)

    # a budget far below what 400 trials take (a wine trial takes 0.1 s or more), above the set-up
    result = sw.sweep(path, trials=400, study="timeout", quiet=True, stop=StopRules(timeout=6.0))
    assert result.ok and result.stopped == "timeout: 6 s spent"
    trials = journal_study(workdir, "timeout").trials
    assert 1 <= len(trials) < 400 and all(t.state.name == "COMPLETE" for t in trials)
    starts = sorted(t.datetime_start for t in trials)
    assert (starts[-1] - starts[0]).total_seconds() < 6  # no trial claimed after the budget was spent
