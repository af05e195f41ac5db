"""Sweep workers placed on GPUs: the placement rule on explicit device lists, and a 2-worker sweep on CPU
whose workers each saw their own CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

from pathlib import Path

import pytest

from retort.plugins.errors import RecipeError
from retort.recipes.sweep.placement import assign, describe, parse_devices, visible_devices
from tests.conftest import all_runs, retort


def test_workers_go_round_robin_over_the_devices():
    assert assign(["0", "1", "2", "3"], 4) == ["0", "1", "2", "3"]
    assert assign(["0", "1", "2", "3"], 2) == ["0", "1"]
    assert assign(["2", "5"], 4, trials_per_gpu=2) == ["2", "5", "2", "5"]  # spread first, then share
    assert assign(["0", "1", "2", "3"], 2, gpus_per_trial=2) == ["0,1", "2,3"]
    assert assign(["0", "1", "2", "3", "4"], 3, gpus_per_trial=2, trials_per_gpu=2) == ["0,1", "2,3", "0,1"]
    assert assign(["GPU-a1", "GPU-b2"], 2) == ["GPU-a1", "GPU-b2"]
    assert assign([], 8) == []  # no GPUs: nothing changes
    assert describe(["0", "2,3"]) == "worker 0 on GPU 0, worker 1 on GPUs 2,3"


@pytest.mark.parametrize("devices, workers, kwargs, field, words", [
    (["0", "1"], 3, {}, "--workers", "raise --trials-per-gpu to 2"),
    (["0", "1", "2", "3"], 3, {"gpus_per_trial": 2, "trials_per_gpu": 1}, "--workers", "hold 2 at"),
    (["0", "1"], 1, {"gpus_per_trial": 3}, "--gpus-per-trial", "only 2 device(s) here (0,1)"),
    (["0"], 1, {"gpus_per_trial": 0}, "--gpus-per-trial", "at least 1"),
    (["0"], 1, {"trials_per_gpu": 0}, "--trials-per-gpu", "at least 1"),
])
def test_placement_that_cannot_hold_the_workers_is_bad_input(devices, workers, kwargs, field, words):
    with pytest.raises(RecipeError) as err:
        assign(devices, workers, **kwargs)
    assert err.value.field == field and words in str(err.value)


def test_the_device_list(monkeypatch: pytest.MonkeyPatch):
    assert parse_devices(" 0, 1,3 ") == ["0", "1", "3"] and parse_devices("") == []
    with pytest.raises(RecipeError, match="named twice"):
        parse_devices("0,1,0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1,-1,2")  # CUDA stops at the first invalid index
    assert visible_devices() == ["3", "1"] and visible_devices("0,1") == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_devices() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_devices() == []  # this machine: torch.cuda.device_count() is 0


SWEEP = """\
name: tiny
seed: 0
data: {name: wine, batch_size: 16}
model: {name: mlp, hidden: [8]}
optimizer: {name: adam, lr: 0.01}
trainer: {max_epochs: 2, accelerator: cpu, devices: 1}
tracking: {checkpoint: false, system_metrics: false}
sweep:
  metric: val/loss
  trials: 6
  pruner: none
  space:
    optimizer.lr: {low: 1.0e-3, high: 1.0e-1, log: true}
"""


@pytest.mark.slow
def test_two_workers_each_see_their_own_devices(workdir: Path, client):
    (workdir / "tiny.yaml").write_text(SWEEP)
    out = retort("sweep", "tiny.yaml", "--workers", "2", "--devices", "0,1", cwd=workdir,
                 env={"CUDA_VISIBLE_DEVICES": "7"})  # --devices wins over the variable
    assert out.returncode == 0, out.stderr
    assert "placement: worker 0 on GPU 0, worker 1 on GPU 1\n" in out.stdout
    runs = all_runs(client)
    parent = next(r for r in runs if r.data.tags.get("retort.sweep") == "parent")
    assert parent.data.tags["retort.placement"] == "worker 0 on GPU 0, worker 1 on GPU 1"
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 6
    # what each worker process saw, by worker: the spawned one through its environment, this one set in place
    seen = {(r.data.tags["retort.worker"], r.data.tags["retort.placement"]) for r in trials}
    assert seen == {("0", "0"), ("1", "1")}, seen


def test_bad_placement_exits_2_and_records_nothing(workdir: Path, client):
    (workdir / "tiny.yaml").write_text(SWEEP)
    out = retort("sweep", "tiny.yaml", "--workers", "3", "--devices", "0,1", cwd=workdir)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "--workers" in out.stderr and "raise --trials-per-gpu to 2" in out.stderr
    assert all_runs(client) == []
