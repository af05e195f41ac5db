"""Sweep workers placed on GPUs: the placement rule on explicit device lists, the share of threads and GPU
memory each worker gets (device sizes given explicitly: no GPU here), and a 2-worker sweep on CPU whose workers,
packed on one device, each saw the CUDA_VISIBLE_DEVICES given and had its share of the threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from retort.plugins.errors import RecipeError
from retort.recipes.sweep.placement import assign, describe, parse_devices, visible_devices
from retort.recipes.sweep.share import GIB, Share, shares, threads
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


def test_workers_divide_the_threads_and_a_shared_gpu():
    assert threads(16, 3) == [6, 5, 5] and threads(2, 2) == [1, 1] and threads(2, 3) == [1, 1, 1]
    assert threads(8, 1) == [None]  # a lone worker keeps torch's default
    assert shares(2, [], 2) == [Share(1), Share(1)]  # no GPU: threads only
    places = assign(["0", "1"], 3, trials_per_gpu=2)  # two workers packed on GPU 0
    assert shares(3, places, 16) == [Share(6, 2), Share(5, 1), Share(5, 2)]  # even share of GPU 0 by default
    memory = {"0": 80 * GIB, "1": 40 * GIB}
    assert shares(3, places, 16, gpu_memory=39 * GIB, memory=memory) == [Share(6, 2, 39 * GIB), Share(5, 1, 39 * GIB),
                                                                   Share(5, 2, 39 * GIB)]
    pairs, eight = assign(["0", "1", "2", "3"], 2, gpus_per_trial=2), {d: 8 * GIB for d in "0123"}
    assert shares(2, pairs, 4, 6 * GIB, eight) == [Share(2, 1, 6 * GIB), Share(2, 1, 6 * GIB)]


@pytest.mark.parametrize("places, gpu_memory, memory, words", [
    (["0", "1", "0"], 40 * GIB, {"0": 80 * GIB, "1": 80 * GIB},  # 2 x (40 + 1 for CUDA's own) > 80
     "GPU 0 (80 GiB) cannot hold 2 workers at 40 GiB each plus 1 GiB each for CUDA's own; at most 39 GiB each"),
    # a group of GPUs: its smallest one counts
    (["0,1"], 24 * GIB, {"0": 80 * GIB, "1": 24 * GIB}, "GPU 0,1 (24 GiB) cannot hold 1 worker at 24 GiB"),
    ([], 8 * GIB, None, "no GPU here to budget"),
    (["0"], 20, {"0": GIB}, "20 bytes is less than a MiB; give a unit, e.g. 20GiB"),
    (["0"], 8 * GIB, None, "cannot read the memory of GPU 0"),  # NVML finds no GPU on this machine
])
def test_gpu_memory_the_devices_cannot_hold_is_bad_input(places, gpu_memory, memory, words):
    with pytest.raises(RecipeError) as err:
        shares(len(places) or 1, places, 2, gpu_memory, memory)
    assert err.value.field == "--gpu-memory" and words in str(err.value), str(err.value)


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
def test_two_workers_packed_on_one_device_share_it(workdir: Path, client):
    (workdir / "tiny.yaml").write_text(SWEEP)
    out = retort("sweep", "tiny.yaml", "--workers", "2", "--devices", "0", "--trials-per-gpu", "2", cwd=workdir,
                 env={"CUDA_VISIBLE_DEVICES": "7"})  # --devices wins over the variable
    assert out.returncode == 0, out.stderr
    assert "placement: worker 0 on GPU 0, worker 1 on GPU 0\n" in out.stdout
    runs = all_runs(client)
    parent = next(r for r in runs if r.data.tags.get("retort.sweep") == "parent")
    assert parent.data.tags["retort.placement"] == "worker 0 on GPU 0, worker 1 on GPU 0"
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 6
    # what each worker process saw, by worker: the spawned one through its environment, this one set in place;
    # the threads: this machine's divided evenly (no GPU here: no memory budget to enforce or record)
    n = len(os.sched_getaffinity(0))
    split = {"0": str(max(1, n // 2 + n % 2)), "1": str(max(1, n // 2))}
    seen = {(r.data.tags["retort.worker"], r.data.tags["retort.placement"], r.data.tags["retort.threads"],
             r.data.tags.get("retort.gpu_memory")) for r in trials}
    assert seen == {("0", "0", split["0"], None), ("1", "0", split["1"], None)}, seen


def test_bad_placement_exits_2_and_records_nothing(workdir: Path, client):
    (workdir / "tiny.yaml").write_text(SWEEP)
    out = retort("sweep", "tiny.yaml", "--workers", "3", "--devices", "0,1", cwd=workdir)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "--workers" in out.stderr and "raise --trials-per-gpu to 2" in out.stderr
    assert all_runs(client) == []


def test_a_gpu_memory_budget_without_a_gpu_is_refused_before_anything_is_recorded(workdir: Path, client):
    from retort.recipes.sweep import sweep

    (workdir / "tiny.yaml").write_text(SWEEP)
    with pytest.raises(RecipeError, match="no GPU here to budget") as err:
        sweep("tiny.yaml", gpu_memory=8 * GIB, quiet=True)
    assert err.value.field == "--gpu-memory"
    assert all_runs(client) == [] and not (workdir / "optuna").exists()
