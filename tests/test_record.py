"""The complete record of a run: contents, secrets, resume, re-run, and multi-process launches."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from retort import recipes
from retort.plugins.errors import Interrupted
from retort.recipes import RecipeError
from retort.recipes.schema import resolve
from retort.tracking.context import environment, mask, mask_value
from tests.conftest import REPO, all_runs, retort

SMALL = {
    "name": "small", "seed": 5,
    "data": {"name": "wine", "batch_size": 16},
    "model": {"name": "mlp", "hidden": [8], "dropout": 0.3},
    "loss": "logitcrossentropy",
    "optimizer": {"name": "adam", "lr": 0.01},
    "metrics": ["accuracy"],
    "trainer": {"max_epochs": 4, "accelerator": "cpu"},
    "tracking": {"experiment": "record"},
}


def small(**changes):
    raw = yaml.safe_load(yaml.safe_dump(SMALL))
    raw.update(changes)
    return resolve(raw)


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def loss_plot(client, run_id: str, folder: Path) -> dict[str, list[tuple[float, float]]]:
    """The points of each series drawn in the run's ``loss.svg`` (which must be well-formed SVG)."""
    from xml.etree import ElementTree

    root = ElementTree.parse(client.download_artifacts(run_id, "loss.svg", str(folder))).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    curves: dict[str, list[tuple[float, float]]] = {}
    for line in root.iter("{http://www.w3.org/2000/svg}polyline"):
        points = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
        curves.setdefault(line.get("data-key"), []).extend(points)
    return curves


def test_the_complete_record(client, workdir: Path):
    r = small()
    result = recipes.run(r, quiet=True)
    run = client.get_run(result.run_id)
    tags = run.data.tags
    assert tags["retort.accelerator"] == "cpu" and tags["retort.device_count"] == "1"
    assert tags["retort.world_size"] == "1" and tags["retort.num_nodes"] == "1"
    assert tags["retort.precision"] == "32-true" and tags["retort.devices"]
    for key in ("retort.version", "python.version", "torch.version", "lightning.version", "mlflow.version",
                "host.name", "retort.command"):
        assert tags[key]
    # the code: retort's own repository (this checkout), commit and dirty flag; a diff when dirty
    assert len(tags["retort.git.commit"]) == 40 and tags["retort.git.dirty"] in ("true", "false")
    files = {f.path for f in client.list_artifacts(result.run_id)}
    assert {"recipe.yaml", "requirements.txt", "loss.svg", "checkpoints"} <= files
    assert ("retort.git.diff" in files) == (tags["retort.git.dirty"] == "true")
    env = Path(client.download_artifacts(result.run_id, "requirements.txt", str(workdir))).read_text()
    assert env == environment() and f"torch=={torch.__version__}" in env
    curves = loss_plot(client, result.run_id, workdir)
    # every step's loss (7 batches x 4 epochs), and each epoch's average and val loss
    assert {k: len(v) for k, v in curves.items()} == {"train/loss": 28, "train/loss_epoch": 4, "val/loss": 4}
    epoch_losses = [v for _, v in history(client, result.run_id, "train/loss_epoch")]
    heights = [y for _, y in curves["train/loss_epoch"]]  # SVG y grows downwards: a higher loss is drawn higher
    assert sorted(range(4), key=lambda i: epoch_losses[i]) == sorted(range(4), key=lambda i: -heights[i])
    # the data set as an input, with the split's digest
    [data_input] = run.inputs.dataset_inputs
    from retort.recipes.runner import build

    assert data_input.dataset.digest == build(r).splits.digest
    assert (data_input.dataset.name, data_input.dataset.source) == ("wine", "sklearn:wine")
    assert '"train": 106' in data_input.dataset.profile
    # system metrics: at least the closing sample
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                "system/process_memory_rss_megabytes"):
        assert len(history(client, result.run_id, key)) >= 1
    # per-step and per-epoch metrics
    assert len(history(client, result.run_id, "train/loss")) == 4 * 7  # 106 rows / 16 = 7 batches
    assert [s for s, _ in history(client, result.run_id, "val/accuracy")] == [1, 2, 3, 4]


def test_logging_every_n_steps_and_off(client):
    every3 = recipes.run(small(tracking={"experiment": "record", "log_every_n_steps": 3}), quiet=True)
    assert [s for s, _ in history(client, every3.run_id, "train/loss")] == list(range(3, 29, 3))
    off = recipes.run(small(tracking={"experiment": "record", "log_every_n_steps": 0}), quiet=True)
    assert history(client, off.run_id, "train/loss") == []
    assert len(history(client, off.run_id, "train/loss_epoch")) == 4


def test_masking():
    assert mask("postgresql://me:hunter2@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert mask("retort run r.yaml API_TOKEN=abc -s x=1") == "retort run r.yaml API_TOKEN=*** -s x=1"
    assert mask("password: swordfish") == "password: ***"
    assert mask("-s optimizer.lr=0.01") == "-s optimizer.lr=0.01"
    assert mask_value("tracking.tags.aws_secret_access_key", "AKIA") == "***"
    assert mask_value("model.hidden", [3]) == [3]


def test_secrets_never_reach_the_record(client, workdir: Path, monkeypatch):
    monkeypatch.setenv("MY_SECRET_KEY", "s3cr3t-env")
    r = small(tracking={"experiment": "record", "tags": {"db_password": "s3cr3t-tag", "team": "vision"}})
    cmd = "retort run small.yaml --tracking-uri postgresql://me:s3cr3t-url@db/x HF_TOKEN=s3cr3t-cli"
    result = recipes.run(r, quiet=True, command=cmd)
    run = client.get_run(result.run_id)
    assert run.data.tags["team"] == "vision" and run.data.tags["db_password"] == "***"
    assert run.data.params["tracking.tags.db_password"] == "***"
    assert run.data.tags["retort.command"] == ("retort run small.yaml --tracking-uri postgresql://me:***@db/x "
                                               "HF_TOKEN=***")
    recorded = " ".join([*run.data.tags.values(), *run.data.params.values()])
    for name in ("recipe.yaml", "requirements.txt"):
        recorded += Path(client.download_artifacts(result.run_id, name, str(workdir))).read_text()
    assert "db_password: '***'" in recorded
    for secret in ("s3cr3t-env", "s3cr3t-tag", "s3cr3t-url", "s3cr3t-cli"):
        assert secret not in recorded


class _SignalAt(pl.Callback):
    """Sends this process a signal after a given batch, as a user's Ctrl-C or a scheduler's SIGTERM would."""

    def __init__(self, epoch: int, batch: int, sig: int = signal.SIGTERM):
        self.epoch, self.batch, self.sig = epoch, batch, sig

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("epoch, batch", [(1, 3), (1, 6)])  # mid-epoch, and at the epoch's last batch
def test_interrupt_then_resume_equals_an_uninterrupted_run(client, tmp_path: Path, epoch: int, batch: int):
    whole = recipes.run(small(), quiet=True)
    with pytest.raises(Interrupted):
        recipes.run(small(), quiet=True, callbacks=[_SignalAt(epoch, batch)])
    killed = next(r for r in all_runs(client) if r.info.run_id != whole.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["retort.failure"] == "interrupted by SIGTERM"
    stopped_at = epoch * 7 + batch + 1
    assert [s for s, _ in history(client, killed.info.run_id, "train/loss")] == list(range(1, stopped_at + 1))
    resumed = recipes.run(small(), quiet=True, resume=killed.info.run_id)
    assert resumed.run_id == killed.info.run_id
    run = client.get_run(resumed.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["retort.resumed"] == "true"
    assert resumed.metrics == whole.metrics
    for key in ("train/loss", "train/loss_epoch", "val/loss", "lr"):
        assert history(client, resumed.run_id, key) == history(client, whole.run_id, key), key
    # the resumed run's plot draws its whole history, from before the interruption too
    assert loss_plot(client, resumed.run_id, tmp_path) == loss_plot(client, whole.run_id, tmp_path / "whole")


def test_resume_bad_inputs(client):
    finished = recipes.run(small(trainer={"max_epochs": 1, "accelerator": "cpu"}), quiet=True)
    with pytest.raises(RecipeError, match="finished; there is nothing to resume"):
        recipes.run(small(), quiet=True, resume=finished.run_id)
    with pytest.raises(RecipeError, match="no run 'nope'"):
        recipes.run(small(), quiet=True, resume="nope")
    with pytest.raises(Interrupted):
        recipes.run(small(), quiet=True, callbacks=[_SignalAt(0, 2)])
    killed = next(r for r in all_runs(client) if r.info.status == "KILLED")
    with pytest.raises(RecipeError, match=r"differs from run \w+.s in optimizer\.lr"):
        recipes.run(small(optimizer={"name": "adam", "lr": 0.02}), quiet=True, resume=killed.info.run_id)


@pytest.mark.slow
def test_rerun_in_another_folder_from_the_record_alone(tmp_path: Path):
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "mine.yaml").write_text(yaml.safe_dump({**SMALL, "trainer": {"max_epochs": 2, "accelerator": "cpu"}}))
    out = retort("run", "mine.yaml", "-q", "--tracking-uri", store, cwd=first)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1].split()[1]
    shutil.rmtree(first)
    again = retort("rerun", run_id, "-q", "--tracking-uri", store, cwd=second)
    assert again.returncode == 0, again.stderr
    assert "Downloading artifacts" not in again.stderr and "\r" not in again.stderr  # no library progress bars
    assert again.stdout.strip().splitlines()[-1] == "reproduced: yes"
    new_id = again.stdout.strip().splitlines()[-2].split()[1]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    assert client.get_run(new_id).data.tags["retort.rerun_of"] == run_id
    # a record that does not hold what this code computes is reported, metric by metric
    client.log_metric(run_id, "test/accuracy", 0.123, step=99)
    differs = retort("rerun", run_id, "-q", "--tracking-uri", store, cwd=second)
    assert differs.returncode == 1
    assert "reproduced: no" in differs.stdout and "test/accuracy: recorded 0.123" in differs.stdout
    unknown = retort("rerun", "0123abc", "--tracking-uri", store, cwd=second)
    assert unknown.returncode == 2 and "no run '0123abc'" in unknown.stderr


@pytest.mark.slow
def test_torchrun_launch_makes_one_run(tmp_path: Path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "retort.recipes.cli", "run",
                          "wine-momentum", "-s", "trainer.max_epochs=2", "-s", "trainer.devices=2", "-s",
                          "trainer.strategy=ddp", "-s", "trainer.accelerator=cpu", "-q"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("run_id: ") == 1
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = all_runs(client)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["retort.world_size"] == "2"
    assert out.stdout.strip().endswith(f"run_id: {runs[0].info.run_id}")


def test_rerun_warns_when_code_or_environment_differ(client, workdir: Path):
    from retort.recipes.rerun import drift

    result = recipes.run(small(trainer={"max_epochs": 1, "accelerator": "cpu"}), quiet=True)
    assert not [w for w in drift(client, client.get_run(result.run_id), workdir) if "differs" in w]
    client.set_tag(result.run_id, "retort.git.commit", "0" * 40)
    client.log_text(result.run_id, environment().replace(f"torch=={torch.__version__}", "torch==1.0.0"),
                    "requirements.txt")
    warnings = drift(client, client.get_run(result.run_id), workdir)
    assert any(w.startswith("retort.git commit ") and w.endswith(", 000000000000 in the record") for w in warnings)
    assert any(f"torch 1.0.0 -> {torch.__version__}" in w for w in warnings)


@contextlib.contextmanager
def sql_statements():
    """The SQL statements every SQLAlchemy engine sends meanwhile, with the number of rows each carries."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    seen: list[tuple[str, int]] = []

    def note(conn, cursor, statement, parameters, context, executemany):
        seen.append((" ".join(statement.split()), len(parameters) if executemany else 1))

    event.listen(Engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", note)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_metric_rows_written_in_one_insert_read_back_as_mlflow_wrote_them(backend: str, tmp_path: Path,
                                                                          request: pytest.FixtureRequest):
    """RunRecord.flush writes an SQL store's metric rows itself (one INSERT); MLflow must read back exactly
    what its own log_batch would have stored: the history, NaN and infinities, the latest values, and a
    value written twice stored once."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from retort.tracking.record import RunRecord

    if backend == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        uri = request.getfixturevalue("postgres_url").replace("postgresql://", "postgresql+psycopg://", 1)
    records = [RunRecord.start(uri, "insert"), RunRecord.start(uri, "insert")]
    fast, slow = records
    for record in records:
        record.log_series("train/loss", [0.5, 0.25, float("nan"), 0.125], [1, 2, 3, 4])
        record.log({"val/loss": float("inf"), "val/acc": 0.5}, step=1)
        record.log({"val/loss": -float("inf"), "val/acc": 0.75}, step=2)
    with sql_statements() as fast_sql:
        fast.flush()
    with sql_statements() as slow_sql:
        slow.client.log_batch(slow.run_id, metrics=slow._buffer)  # MLflow's own path, for comparison
    slow._buffer = []
    # the fast path ran: one INSERT of all 8 values into MLflow's metrics table, skipping duplicates the
    # dialect's way (log_batch's own INSERT has no such clause)
    marker = "INSERT OR IGNORE INTO metrics" if backend == "sqlite" else "ON CONFLICT DO NOTHING"
    inserts = [(sql, rows) for sql, rows in fast_sql if re.match(r"INSERT (OR IGNORE )?INTO metrics\b", sql)]
    assert len(inserts) == 1 and marker in inserts[0][0] and inserts[0][1] == 8, fast_sql
    assert not any(marker in sql for sql, _ in slow_sql)
    client = MlflowClient(tracking_uri=uri)

    def stored(run_id: str) -> dict:
        run = client.get_run(run_id)
        return {"latest": {k: v for k, v in run.data.metrics.items()},
                **{key: sorted(((m.step, m.value) for m in client.get_metric_history(run_id, key)), key=str)
                   for key in ("train/loss", "val/loss", "val/acc")}}

    got, want = stored(fast.run_id), stored(slow.run_id)
    assert str(got) == str(want)  # str: NaN compares equal to itself only as text
    assert got["latest"]["val/acc"] == 0.75 and got["latest"]["train/loss"] == 0.125
    assert [v for _, v in got["val/loss"]] == [1.7976931348623157e308, -1.7976931348623157e308]
    # writing the same values again stores nothing twice, and a later step moves the latest value on
    fast.log({"val/acc": 0.875}, step=3)
    fast.flush()
    assert len(client.get_metric_history(fast.run_id, "val/acc")) == 3
    rows = client.get_metric_history(fast.run_id, "train/loss")
    fast._buffer = [Metric(m.key, m.value, m.timestamp, m.step) for m in rows]
    fast.flush()
    assert len(client.get_metric_history(fast.run_id, "train/loss")) == 4
    assert client.get_run(fast.run_id).data.metrics["val/acc"] == 0.875
    # a deleted run takes no more values, as with log_batch
    client.delete_run(fast.run_id)
    fast.log({"val/acc": 1.0}, step=4)
    with pytest.raises(Exception, match="must be in the 'active' state"):
        fast.flush()


@pytest.mark.slow
def test_rerun_of_a_gpu_record_compares_within_tolerance_and_names_what_differs(client, workdir: Path, capsys):
    import argparse

    from retort.recipes.cli import _parser
    from retort.recipes.rerun import main

    result = recipes.run(small(trainer={"max_epochs": 1, "accelerator": "cpu"}), quiet=True)
    # the record says the run was on a GPU, with a final loss a little off what this machine computes
    client.set_tag(result.run_id, "retort.accelerator", "cuda")
    client.set_tag(result.run_id, "gpu.model", "NVIDIA H200")
    loss = client.get_run(result.run_id).data.metrics["test/loss"]
    client.log_metric(result.run_id, "test/loss", loss * (1 + 4e-4), step=99)
    args = _parser().parse_args(["rerun", result.run_id, "-q"])  # the command's own defaults
    assert main(args) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    kinds = set(lines[-3].removeprefix("differs from the record: ").split(", "))
    assert kinds - {"code"} == {"hardware"} and lines[-2].startswith("run_id: ")  # code: a dirty checkout
    assert lines[-1] == "reproduced: yes (within a relative 0.001: a GPU run)"
    assert "warning: retort.accelerator cpu here, cuda in the record" in err
    assert "warning: gpu.model absent here, NVIDIA H200 in the record" in err
    # asked for exact equality, the same comparison fails on that loss alone
    assert main(argparse.Namespace(**{**vars(args), "tolerance": 0.0})) == 1
    out = capsys.readouterr().out
    assert "reproduced: no" in out and "test/loss: recorded" in out and "test/accuracy" not in out
