"""`retort run --seeds N`: N sibling runs under one parent, each the same record as a run with that seed."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml

from retort import recipes
from retort.recipes.cli import main
from retort.recipes.schema import resolve
from retort.recipes.seeds import run_seeds
from tests.conftest import all_runs

TINY = {
    "name": "tiny",
    "seed": 4,
    "data": {"name": "iris", "batch_size": 32},
    "model": {"name": "mlp", "hidden": [8]},
    "optimizer": {"name": "adam", "lr": 0.01},
    "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1},
    "tracking": {"experiment": "seeds", "checkpoint": False, "system_metrics": False},
}


def tiny(**changes) -> recipes.Recipe:
    return resolve(yaml.safe_load(yaml.safe_dump({**TINY, **changes})))


@pytest.mark.slow
def test_n_seeds_make_n_sibling_runs_under_one_parent(client):
    result = run_seeds(tiny(), 3, quiet=True)
    assert result.seeds == [4, 5, 6] and not result.failed
    runs = {r.info.run_id: r for r in all_runs(client)}
    assert len(runs) == 4
    parent = runs[result.parent_run_id]
    children = [runs[result.run_ids[s]] for s in result.seeds]
    assert [c.data.tags["retort.seed"] for c in children] == ["4", "5", "6"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["retort.seed_group"] for c in children} == {parent.info.run_id}
    assert [c.data.params["seed"] for c in children] == ["4", "5", "6"]
    assert {c.info.status for c in [parent, *children]} == {"FINISHED"}
    # the parent: one group, not a seed of its own
    assert parent.data.tags["retort.seeds"] == "4,5,6" and "retort.seed" not in parent.data.tags
    assert "seed" not in parent.data.params and parent.data.params["optimizer.lr"] == "0.01"
    assert len({c.data.metrics["test/loss"] for c in children}) == 3  # three seeds, three different runs
    assert parent.data.metrics["test/loss"] == pytest.approx(
        statistics.fmean(c.data.metrics["test/loss"] for c in children), rel=1e-12)
    assert parent.data.metrics["test/loss_std"] == pytest.approx(
        statistics.stdev(c.data.metrics["test/loss"] for c in children), rel=1e-12)
    # a seed's run is exactly the run with that seed
    alone = recipes.run(tiny(seed=5), quiet=True)
    assert alone.metrics == result.metrics[5]


@pytest.mark.slow
def test_seeds_on_the_command_line(workdir: Path, client, capsys):
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["run", "tiny.yaml", "--seeds", "2", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "seeds: 4, 5 (2 finished)"
    assert [line.split(":")[0] for line in lines[1:]] == ["train/loss_epoch", "test/loss", "run_ids", "parent_run_id"]
    parent_id = lines[-1].split()[1]
    children = [r for r in all_runs(client) if r.data.tags.get("retort.seed_group") == parent_id]
    assert sorted(r.info.run_id for r in children) == sorted(lines[-2].split(": ")[1].split(", "))
    mean, _ = lines[2].split(": ")[1].split(" ± ")
    assert float(mean) == pytest.approx(statistics.fmean(r.data.metrics["test/loss"] for r in children), rel=1e-5)


@pytest.mark.parametrize("args, field", [(["--seeds", "0"], "--seeds"),
                                         (["--seeds", "2", "--resume", "abc"], "--seeds"),
                                         (["--seeds", "2", "-s", "optimizer.lr=-1"], "optimizer.lr")])
def test_bad_seeds_input_records_nothing(args: list[str], field: str, workdir: Path, client, capsys):
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["run", "tiny.yaml", *args, "-q"]) == 2
    assert f"{field}: " in capsys.readouterr().err
    assert all_runs(client) == []
