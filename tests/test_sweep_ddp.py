"""DDP inside a sweep's trial: each trial over 2 CPU processes (gloo) that its worker launches.

A recipe file's own callback logs every rank's epochs, and can run one rank out of memory for real (a
256 TB allocation), so the test sees each rank from outside: both stop at the pruned epoch, and a rank that
fails ends the trial FAILED with its reason while the other does not hang.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from retort.recipes import sweep as sw
from retort.recipes.sweep.storage import default_journal, open_storage
from tests.test_sweep import check_records, children, journal_study, write

RANK_LOG = '''\
import os

import pytorch_lightning as pl

from retort import plugins


@plugins.register("callback", "rank_log")
def rank_log(*, path: str = "ranks.log", oom_rank: int = -1):
    class RankLog(pl.Callback):
        def on_train_epoch_end(self, trainer, m):
            with open(path, "a") as f:
                f.write(f"{m.recipe.optimizer['lr']} {oom_rank} {trainer.global_rank} {trainer.current_epoch + 1} "
                        f"{os.environ['WORLD_SIZE']}\\n")
            if trainer.global_rank == oom_rank:
                import torch

                torch.empty(2**48, dtype=torch.uint8)

    return RankLog()
'''

RECIPE = """\
name: ddp
seed: 0
imports: [rank_log.py]
data: {name: wine, batch_size: 16}
model: {name: mlp, hidden: [8]}
optimizer: {name: adam, lr: 0.01}
callbacks: [{name: rank_log, path: LOG}]
trainer: {max_epochs: 2, accelerator: cpu, devices: 2, strategy: ddp}
tracking: {checkpoint: false, system_metrics: false}
sweep:
  metric: val/loss
  trials: 3
  pruner: median
  pruner_args: {n_startup_trials: 1}
  space:
    optimizer.lr: {choices: [0.05, 1.0e-6]}
    callbacks.0.oom_rank: {choices: [-1, 1]}
"""


@pytest.mark.slow
def test_trials_over_two_ddp_processes_prune_and_fail_on_every_rank(workdir: Path, client):
    import optuna
    import psutil

    write(workdir, RANK_LOG, "rank_log.py")
    log = workdir / "ranks.log"
    path = write(workdir, RECIPE.replace("LOG", str(log)), "ddp.yaml")
    journal = default_journal(f"sqlite:///{workdir / 'mlflow.db'}", "ddp")
    journal.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name="ddp", storage=open_storage(str(journal)))
    # a fixed order: good; too slow to keep (pruned after epoch 1); rank 1 out of memory in epoch 1
    for lr, oom in ((0.05, -1), (1e-6, -1), (0.05, 1)):
        study.enqueue_trial({"optimizer.lr": lr, "callbacks.0.oom_rank": oom})
    result = sw.sweep(path, quiet=True)

    study = journal_study(workdir, "ddp")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "COMPLETE"] and result.ok
    assert study.trials[2].value == math.inf and study.trials[2].constraints == {"out_of_memory": 1.0}
    assert result.best_trial == 0 and result.best_value == study.trials[0].value
    runs = check_records(client, study, result.parent_run_id)  # one child run per trial, and only those
    assert len(children(client, result.parent_run_id)) == 3 and len(client.search_runs(["1"])) == 4
    for run in runs.values():  # every trial trained over two processes
        assert run.data.tags["retort.rank1.device"].endswith(" cpu")
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val/loss")] == [1, 2]
    assert runs[1].data.tags["retort.pruned"] == "pruned at epoch 1"
    assert [m.step for m in client.get_metric_history(runs[1].info.run_id, "val/loss")] == [1]
    reason = runs[2].data.tags["retort.failure"]
    assert reason.startswith("out of memory: rank 1 of 2: RuntimeError") and "can't allocate memory" in reason
    assert runs[2].info.status == "FAILED" and study.trials[2].user_attrs["failure"] == reason

    # each rank's epochs, seen by the recipe's callback in each rank process
    epochs: dict[tuple[str, str, str], list[int]] = {}
    for line in log.read_text().splitlines():
        lr, oom, rank, epoch, world = line.split()
        assert world == "2"
        epochs.setdefault((lr, oom, rank), []).append(int(epoch))
    assert epochs == {("0.05", "-1", "0"): [1, 2], ("0.05", "-1", "1"): [1, 2],   # complete
                      ("1e-06", "-1", "0"): [1], ("1e-06", "-1", "1"): [1],       # pruned: both stop
                      ("0.05", "1", "0"): [1], ("0.05", "1", "1"): [1]}           # rank 1 fails in epoch 1
    left = [p for p in psutil.Process().children(recursive=True) if "_rank_main" in " ".join(p.cmdline())]
    assert left == []  # no rank outlives its worker


@pytest.mark.parametrize(("trainer", "expected"), [
    ("{accelerator: cpu, devices: 2, strategy: ddp}", 2),
    ("{accelerator: cpu, devices: 2}", 2),  # auto: Lightning picks ddp for several devices
    ("{accelerator: cpu, devices: 1}", 1),
    ("{accelerator: cpu, devices: 2, strategy: ddp_spawn}", "trainer.strategy"),
    ("{accelerator: cpu, devices: 2, strategy: ddp, num_nodes: 2}", "trainer.num_nodes"),
])
def test_a_trials_ranks_are_its_ddp_processes_on_this_machine(trainer: str, expected):
    from retort import recipes
    from retort.plugins.errors import RecipeError
    from retort.recipes.sweep.ranks import ranks

    recipe = recipes.load("digits-mlp", [f"trainer={trainer}"])
    if isinstance(expected, int):
        assert ranks(recipe) == expected
    else:
        with pytest.raises(RecipeError) as info:
            ranks(recipe)
        assert info.value.field == expected
