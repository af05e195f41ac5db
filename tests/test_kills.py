"""Never lose a run: real kills (SIGKILL, signals at any moment), a store being created when the kill comes,
a tracking server killed for real, a full disk. Every run ends with an honest status and every value that
reached the record."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retort import recipes
from retort.plugins.errors import Interrupted
from retort.recipes.schema import resolve
from tests.conftest import all_runs

EXE = Path(sys.executable).with_name("retort")
SLOW = ["-s", "trainer.max_epochs=400", "-s", "tracking.system_metrics=false"]
STEPS = 17  # digits-mlp: 1,078 training rows in batches of 64


def store(folder: Path, name: str = "mlflow.db"):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{folder / name}")


def start(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(EXE), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def wait_for_epoch(proc: subprocess.Popen, epoch: int) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(f"epoch {epoch}/"):
            return
    raise AssertionError(f"the run ended before epoch {epoch}: {proc.stderr.read() if proc.stderr else ''}")


def steps(client, run_id: str, key: str = "train/loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_sigkill_loses_no_value_recorded_and_the_next_command_closes_the_run(workdir: Path):
    proc = start("run", "digits-mlp", *SLOW, cwd=workdir)
    wait_for_epoch(proc, 8)
    proc.kill()
    proc.wait(timeout=30)
    client = store(workdir)
    [run] = all_runs(client)
    assert run.info.status == "RUNNING"  # nothing ran after the kill
    out = subprocess.run([str(EXE), "sync"], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"replayed {run.info.run_id}" in out.stdout
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED"
    assert "ended without closing the run" in run.data.tags["retort.failure"]
    recorded = steps(client, run.info.run_id)
    assert recorded == list(range(1, len(recorded) + 1)) and len(recorded) >= 8 * STEPS
    assert len(steps(client, run.info.run_id, "train/loss_epoch")) >= 8
    assert not list((workdir / "spool").rglob("*.spool"))  # replayed, then removed
    # a later command finds nothing more to do
    again = subprocess.run([str(EXE), "sync"], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert again.stdout.strip() == "synced 0 run(s)"


@pytest.mark.slow
def test_a_signal_at_any_moment_leaves_no_run_running_and_no_traceback(workdir: Path):
    """SIGTERM and SIGINT from the first instant to the run's end, including while the run is created and
    while it closes: exit 143/130 (or 0 when it had finished), one line, no traceback, nothing RUNNING."""
    rng = random.Random(0)
    client = store(workdir)
    for i in range(6):
        sig = (signal.SIGTERM, signal.SIGINT)[i % 2]
        proc = start("run", "wine-momentum", "-q", "-s", "trainer.max_epochs=2", cwd=workdir)
        time.sleep(rng.uniform(0.2, 6.0))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 128 + sig), err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert err.strip().count("\n") == 0, err
        assert [r.info.run_id for r in all_runs(client) if r.info.status == "RUNNING"] == []


@pytest.mark.slow
def test_a_kill_while_a_new_store_is_created_never_breaks_it(tmp_path: Path):
    """kill -9 at random moments while `retort run` creates a new SQLite store: the next run always works."""
    rng = random.Random(1)
    for i in range(5):
        folder = tmp_path / f"try{i}"
        folder.mkdir()
        proc = start("run", "iris-rmsprop", "-q", "-s", "trainer.max_epochs=1", cwd=folder)
        deadline = time.monotonic() + 60
        while not list(folder.glob("*mlflow.db*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        proc.wait(timeout=30)
        out = subprocess.run([str(EXE), "run", "iris-rmsprop", "-q", "-s", "trainer.max_epochs=1"], cwd=folder,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr
        assert not list(folder.glob(".mlflow.db.*.creating*"))


SMALL = {
    "name": "small", "seed": 5,
    "data": {"name": "wine", "batch_size": 16},
    "model": {"name": "mlp", "hidden": [8]},
    "optimizer": {"name": "adam", "lr": 0.01},
    "trainer": {"max_epochs": 3, "accelerator": "cpu"},
    "tracking": {"experiment": "kills", "system_metrics": False},
}


def small(**changes):
    import copy

    raw = copy.deepcopy(SMALL)
    raw.update(changes)
    return resolve(raw)


def test_a_failure_mid_epoch_keeps_the_epochs_steps(client):
    """stop_on_nan fails at batch 3 of epoch 1: its three steps are recorded (the NaN one too)."""
    from retort.plugins.errors import RunFailed

    recipe = small(optimizer={"name": "descent", "lr": 1.0e30}, callbacks=["stop_on_nan"])
    with pytest.raises(RunFailed):
        recipes.run(recipe, quiet=True)
    [run] = all_runs(client)
    assert run.info.status == "FAILED"
    recorded = client.get_metric_history(run.info.run_id, "train/loss")
    reason = run.data.tags["retort.failure"]
    assert "batch " in reason, reason
    failed_at = int(reason.split("batch ")[1].split()[0].strip(",)"))
    assert sorted(m.step for m in recorded) == list(range(1, failed_at + 1))


class _SignalAt:
    def __new__(cls, epoch: int, batch: int):
        import pytorch_lightning as pl

        class SignalAt(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch_, batch_idx):
                if (trainer.current_epoch, batch_idx) == (epoch, batch):
                    os.kill(os.getpid(), signal.SIGTERM)

        return SignalAt()


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.parametrize("batch", [0, 3, 4])  # 8 batches an epoch, windows of 3: 0-2, 3-5, 6-7
def test_resume_under_gradient_accumulation_equals_an_uninterrupted_run(client, batch: int):
    recipe = small(optimizer={"name": "adam", "lr": 0.01, "accumulate": 3})
    whole = recipes.run(recipe, quiet=True)
    with pytest.raises(Interrupted):
        recipes.run(recipe, quiet=True, callbacks=[_SignalAt(1, batch)])
    killed = next(r for r in all_runs(client) if r.info.run_id != whole.run_id)
    assert killed.info.status == "KILLED"
    resumed = recipes.run(recipe, quiet=True, resume=killed.info.run_id)
    run = client.get_run(resumed.run_id)
    assert run.info.status == "FINISHED" and "retort.failure" not in run.data.tags
    assert resumed.metrics == whole.metrics
    for key in ("train/loss", "train/loss_epoch", "val/loss", "lr"):
        assert history(client, resumed.run_id, key) == history(client, whole.run_id, key), key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(folder: Path, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                             "--artifacts-destination", str(folder / "artifacts")],
                            cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.2)
    _kill(proc)
    raise AssertionError("the mlflow server did not start")


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_a_tracking_server_gone_for_good_loses_nothing(tmp_path: Path):
    """A real `mlflow server` killed (SIGKILL, its whole process group) during a run: training goes on to the
    end, the command says so in one line, and `retort sync` uploads every value once the server is back."""
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {"RETORT_SPOOL": str(tmp_path / "spool")}
    server = _server(tmp_path, port)
    try:
        proc = start("run", "digits-mlp", "-s", "trainer.max_epochs=30", "-s", "tracking.system_metrics=false",
                     "--tracking-uri", uri, cwd=tmp_path, env=env)
        wait_for_epoch(proc, 3)
        _kill(server)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "epoch 30/30" in out and out.strip().splitlines()[-1].startswith("run_id: ")
        run_id = out.strip().splitlines()[-1].split()[1]
        said = [line for line in err.splitlines() if not line.startswith("recording run ")]  # the run's status line
        assert "Traceback" not in err and len(said) == 1 and "retort sync" in said[0], err
        server = _server(tmp_path, port)
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        assert client.get_run(run_id).info.status == "RUNNING"
        sync = subprocess.run([str(EXE), "sync", "--tracking-uri", uri], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env={**os.environ, **env})
        assert sync.returncode == 0, sync.stderr
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert steps(client, run_id) == list(range(1, 30 * STEPS + 1))
        assert len(steps(client, run_id, "val/loss")) == 30
        assert "test/accuracy" in run.data.metrics
        names = {a.path for a in client.list_artifacts(run_id)}
        assert {"loss.svg", "recipe.yaml", "checkpoints"} <= names
    finally:
        _kill(server)


@pytest.mark.slow
def test_a_full_disk_under_the_store_is_one_line_and_the_next_command_finishes_the_record(tmp_path: Path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        env = {"RETORT_SPOOL": str(tmp_path / "spool")}
        uri = f"sqlite:///{disk / 'mlflow.db'}"
        proc = start("run", "digits-mlp", "-s", "trainer.max_epochs=40", "-s", "tracking.checkpoint=false",
                     "--tracking-uri", uri, cwd=tmp_path, env=env)
        wait_for_epoch(proc, 2)
        filler = disk / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as f:  # fill the disk while the run trains (the
            # close's own flush can meet the full disk too)
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        said = [line for line in err.splitlines() if not line.startswith("recording run ")]
        assert "Traceback" not in err and len(said) == 1, err
        run_id = out.strip().splitlines()[-1].split()[1]
        filler.unlink()  # space again
        sync = subprocess.run([str(EXE), "sync", "--tracking-uri", uri], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env={**os.environ, **env})
        assert sync.returncode == 0, sync.stderr
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert steps(client, run_id) == list(range(1, 40 * STEPS + 1))
        import sqlite3

        with sqlite3.connect(disk / "mlflow.db") as db:
            assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
        shutil.rmtree(disk, ignore_errors=True)


def test_resume_auto_continues_the_latest_interrupted_run_of_the_same_command(client):
    recipe = small()
    command = "retort run small.yaml --resume auto"
    first = recipes.run(recipe, quiet=True, resume="auto", command=command)  # nothing to resume: a new run
    with pytest.raises(Interrupted):
        recipes.run(recipe, quiet=True, callbacks=[_SignalAt(1, 2)], resume="auto", command=command)
    killed = next(r for r in all_runs(client) if r.info.status == "KILLED")
    other = "retort run small.yaml -s seed=5 --resume auto"  # another command: not its run to continue
    assert recipes.run(recipe, quiet=True, resume="auto", command=other).run_id not in (killed.info.run_id,
                                                                                          first.run_id)
    resumed = recipes.run(recipe, quiet=True, resume="auto", command=command)
    assert resumed.run_id == killed.info.run_id
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    assert resumed.metrics == first.metrics


@pytest.mark.slow
def test_a_sigkilled_run_resumes_from_the_checkpoint_it_kept_while_training(workdir: Path):
    """``kill -9`` in the middle of training runs no handler: the run resumes from the checkpoint it kept
    beside its spool as it trained (``tracking.resume_every``), which the next command uploads; the resumed
    run records every value once and ends with the values of an uninterrupted run."""
    import torch

    overrides = ["trainer.max_epochs=10", "data.batch_size=16", "tracking.resume_every=0.1",
                 "tracking.system_metrics=false", "tracking.log_model=false"]
    args = ["run", "digits-mlp", *[a for o in overrides for a in ("-s", o)]]
    proc = start(*args, cwd=workdir)
    wait_for_epoch(proc, 2)

    def kept() -> int:  # the epoch (from 0) the kept checkpoint stopped in; -1 while there is none
        for path in (workdir / "spool").rglob("*.ckpt"):
            with contextlib.suppress(FileNotFoundError):  # renamed over as we look
                return torch.load(path, map_location="cpu", weights_only=False)["epoch"]
        return -1

    # kill once a checkpoint past the first epoch is kept: how soon depends on the save budget (2 % of the
    # training time, so a slow save on a loaded machine spaces them out), not on which epoch was printed
    deadline = time.monotonic() + 120
    while kept() < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=30)
    stopped_in = kept()  # what the kill left: the one the resume starts from
    assert 1 <= stopped_in < 10, stopped_in
    client = store(workdir)
    [killed] = all_runs(client)
    assert killed.info.status == "RUNNING"
    out = subprocess.run([str(EXE), *args, "--resume", "auto"], cwd=workdir, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr
    assert f"run_id: {killed.info.run_id}" in out.stdout  # continued, not a new run
    # from the checkpoint, not from scratch: the epoch it stopped in and those after it
    assert [line.split()[1] for line in out.stdout.splitlines() if line.startswith("epoch ")] == \
        [f"{e}/10" for e in range(stopped_in + 1, 11)]
    assert not list((workdir / "spool").rglob("*.ckpt"))  # the run finished: its checkpoint is gone
    whole = recipes.run(recipes.load("digits-mlp", overrides), quiet=True)
    run = client.get_run(killed.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["retort.resumed"] == "true"
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("test/")} == \
        {k: v for k, v in whole.metrics.items() if k.startswith("test/")}
    for key in ("train/loss", "train/loss_epoch", "val/loss", "lr"):
        assert history(client, killed.info.run_id, key) == history(client, whole.run_id, key), key
