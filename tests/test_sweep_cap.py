"""`retort sweep --cap-batch-size`: one probe before the study, the batch sizes that do not fit dropped.

On CPU the bound is --max-memory on a training step's peak tensor memory, counted exactly (the same bytes
every run): the tiny recipe's steps need 6,852 bytes at batch 25 and 7,020 at 26.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from retort.plugins.errors import RecipeError
from retort.recipes import sweep as sw
from tests.conftest import all_runs
from tests.test_sweep import TINY, journal_study, write

ONE_EPOCH = TINY.replace("max_epochs: 3", "max_epochs: 1")


def test_cap_drops_the_batch_sizes_that_do_not_fit_and_records_them(workdir: Path, client, capsys):
    path = write(workdir, ONE_EPOCH)
    result = sw.sweep(path, trials=1, cap_batch_size=True, max_memory=6852)
    study = journal_study(workdir, "tiny")
    # largest that fits 25; less the 0.2 margin: 20, so 32 leaves the space the study searches
    assert [t.distributions["data.batch_size"].choices for t in study.trials] == [(8, 16)]
    assert result.ok and {t.params["data.batch_size"] for t in study.trials} <= {8, 16}
    tags = client.get_run(result.parent_run_id).data.tags
    assert (tags["retort.sweep.batch_size_fits"], tags["retort.sweep.batch_size_cap"],
            tags["retort.sweep.batch_size_dropped"]) == ("25", "20", "32")
    assert "batch sizes capped at 20 (largest that fits in peak memory at most 6.69 KiB: 25, less the 0.2 " \
           "margin): dropped 32" in capsys.readouterr().err
    # the parent's base recipe is the space that was searched
    base = client.download_artifacts(result.parent_run_id, "base_recipe.yaml", str(workdir))
    assert yaml.safe_load(Path(base).read_text())["sweep"]["space"]["data.batch_size"]["choices"] == [8, 16]


@pytest.mark.parametrize(("text", "kwargs", "field", "words"), [
    (ONE_EPOCH, {"cap_batch_size": True}, "--max-memory", "nothing runs out of memory on cpu"),
    (ONE_EPOCH, {"max_memory": 6852}, "--max-memory", "give it with --cap-batch-size"),
    (ONE_EPOCH.replace("    data.batch_size: {choices: [8, 16, 32]}\n", ""), {"cap_batch_size": True,
     "max_memory": 6852}, "--cap-batch-size", "sweep.space has no data.batch_size"),
    (ONE_EPOCH, {"cap_batch_size": True, "max_memory": 4300}, "sweep.space.data.batch_size",
     "no batch size of the space fits: the largest that fits is 9, 7 less the 0.2 margin, below the smallest, 8"),
])
def test_cap_bad_input_stops_before_anything_is_recorded(workdir: Path, client, text: str, kwargs: dict,
                                                         field: str, words: str):
    path = write(workdir, text)
    with pytest.raises(RecipeError) as info:
        sw.sweep(path, quiet=True, **kwargs)
    assert info.value.field == field and words in str(info.value), str(info.value)
    assert all_runs(client) == [] and not (workdir / "optuna").exists()


def test_cap_of_an_integer_range_lowers_its_top(tmp_path: Path):
    from retort.recipes.sweep.cap import cap_batch_sizes
    from retort.recipes.sweep.plan import make_plan

    path = write(tmp_path, ONE_EPOCH.replace("{choices: [8, 16, 32]}", "{low: 4, high: 40, step: 4}"))
    plan, base = make_plan(str(path), [], trials=1, workers=1, storage=None, study=None, seed=None, heartbeat=10,
                           tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", command=None, quiet=True)
    cap = cap_batch_sizes(plan, base, 6852)
    assert (cap.largest, cap.cap, cap.kept, cap.dropped) == (25, 20, ["4..20"], ["24..40"])
    space = plan.base().sweep["space"]
    assert (space["data.batch_size"]["low"], space["data.batch_size"]["high"]) == (4, 20)
    assert space["optimizer.lr"] == base.sweep["space"]["optimizer.lr"]


def test_cap_on_the_command_line_bad_input_exits_2(workdir: Path, client, capsys):
    from retort.recipes.cli import main

    write(workdir, ONE_EPOCH)
    assert main(["sweep", "tiny.yaml", "-q", "--cap-batch-size"]) == 2
    assert main(["sweep", "tiny.yaml", "-q", "--cap-batch-size", "--max-memory", "12XB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--max-memory: nothing runs out of memory on cpu" in err[0], err
    assert "--max-memory: cannot read '12XB' as a size" in err[1], err
    assert all_runs(client) == [] and not (workdir / "optuna").exists()
