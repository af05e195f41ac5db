"""`retort ui`: the real MLflow server (and optuna-dashboard) started by the real console script, read back over
HTTP, and stopped with every process it started; bad input refused before anything starts."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from retort import recipes
from retort.recipes.cli import main
from retort.recipes.schema import resolve

TINY = {
    "name": "tiny",
    "data": {"name": "iris", "batch_size": 32},
    "model": {"name": "mlp", "hidden": [8]},
    "optimizer": {"name": "adam", "lr": 0.01},
    "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1},
    "tracking": {"experiment": "ui", "checkpoint": False, "system_metrics": False},
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, _store_template: Path) -> tuple[Path, list[str]]:
    """A folder with ./mlflow.db holding two real runs, and an Optuna journal under ./optuna/."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path_factory.mktemp("ui")
    shutil.copy(_store_template, path / "mlflow.db")
    uri = f"sqlite:///{path / 'mlflow.db'}"
    ids = []
    for seed in (0, 1):
        raw = yaml.safe_load(yaml.safe_dump({**TINY, "seed": seed}))
        ids.append(recipes.run(resolve(raw), tracking_uri=uri, quiet=True).run_id)
    (path / "optuna").mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="tiny-sweep", storage=JournalStorage(JournalFileBackend(
        str(path / "optuna" / "tiny-sweep.log"))), sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.5) ** 2, n_trials=3)
    return path, ids


class Server:
    """``retort ui ...`` as a subprocess; its stdout lines arrive on a queue."""

    def __init__(self, cwd: Path, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        exe = Path(sys.executable).with_name("retort")
        self.proc = subprocess.Popen([str(exe), "ui", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()

    def line(self, starts: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, self.proc.stderr.read()
                continue
            if line.startswith(starts):
                return line.strip()
        raise AssertionError(f"no line starting {starts!r} within {timeout} s")

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        return code, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            for child in self.children():
                child.kill()
            self.proc.kill()


def port_of(line: str) -> int:
    return int(re.search(r":(\d+)\b", line).group(1))


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
def compare_csv(uri: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    capsys.readouterr()
    assert main(["compare", "--experiment", "ui", "--no-group-by-seed", "--csv", "--tracking-uri", uri]) == 0
    return capsys.readouterr().out


def test_ui_serves_the_same_store_on_localhost_and_stops_cleanly(folder, capsys, monkeypatch):
    path, ids = folder
    server = Server(path, "--port", "0")
    try:
        line = server.line("MLflow UI: ")
        assert re.fullmatch(rf"MLflow UI: http://127\.0\.0\.1:\d+  \(store sqlite:///{re.escape(str(path))}/mlflow\.db\)",
                            line)
        port = port_of(line)
        experiments = get(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10")
        exp_id = next(e["experiment_id"] for e in experiments["experiments"] if e["name"] == "ui")
        found = post(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})
        assert sorted(r["info"]["run_id"] for r in found["runs"]) == sorted(ids)
        assert {r["info"]["status"] for r in found["runs"]} == {"FINISHED"}
        # `retort compare` through the server reads best values from histories (no SQL): the same table
        over_http = compare_csv(f"http://127.0.0.1:{port}", capsys, monkeypatch)
        assert over_http == compare_csv(f"sqlite:///{path / 'mlflow.db'}", capsys, monkeypatch)
        assert len(over_http.splitlines()) == 3 and "val/loss:best" in over_http
        children = server.children()
        assert children  # the server and its workers
        with socket.socket() as s:  # bound to the loopback interface only
            s.connect(("127.0.0.1", port))
            assert s.getpeername()[0] == "127.0.0.1"
        code, err = server.stop(signal.SIGTERM)
        assert code == 0 and "stopped" in err and "Traceback" not in err
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive
        assert closed(port)
    finally:
        server.kill()


@pytest.mark.slow
def test_ui_with_optuna_dashboard_on_every_interface_warns(folder):
    path, ids = folder
    server = Server(path, "--port", "0", "--optuna", "--optuna-port", "0", "--host", "0.0.0.0")
    try:
        mlflow_port = port_of(server.line("MLflow UI: "))
        line = server.line("optuna-dashboard: ")
        assert line.endswith(f"(storage {path / 'optuna' / 'tiny-sweep.log'})") and "(every interface)" in line
        studies = get(f"http://127.0.0.1:{port_of(line)}/api/studies")
        assert [s["study_name"] for s in studies["study_summaries"]] == ["tiny-sweep"]
        found = post(f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/runs/search",
                     {"experiment_ids": ["0", "1"], "max_results": 10})
        assert sorted(r["info"]["run_id"] for r in found["runs"]) == sorted(ids)
        children = server.children()
        code, err = server.stop(signal.SIGINT)
        assert code == 0
        assert re.search(r"warning: serving on 0\.0\.0\.0: anyone who can reach this machine's ports \d+, \d+ can read "
                         r"every run", err)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive and closed(mlflow_port) and closed(port_of(line))
    finally:
        server.kill()


def test_optuna_serves_each_journal_and_not_the_locks_beside_it(folder, tmp_path: Path, _store_template: Path):
    from retort.tracking.ui import _journals

    path, _ = folder
    shutil.copy(_store_template, tmp_path / "mlflow.db")
    (tmp_path / "optuna").mkdir()
    journal = tmp_path / "optuna" / "tiny-sweep.journal"
    shutil.copy(path / "optuna" / "tiny-sweep.log", journal)
    (tmp_path / "optuna" / "tiny-sweep.journal.retort-lock").touch()  # the sweep's study lock, as a sweep leaves it
    (tmp_path / "optuna" / "tiny-sweep.journal.lock").touch()  # Optuna's own, left by a killed writer
    assert _journals(f"sqlite:///{tmp_path / 'mlflow.db'}", None) == [str(journal)]


def test_bad_input_exits_2_before_starting_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys,
                                                     _store_template: Path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["ui"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tracking-uri: no MLflow store at mlflow.db (sqlite:///mlflow.db)")
    assert not (tmp_path / "mlflow.db").exists()

    shutil.copy(_store_template, tmp_path / "mlflow.db")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert f"--port: cannot listen on 127.0.0.1:{port}" in err and "pick another port with --port" in err
    assert main(["ui", "--port", "0", "--optuna"]) == 2
    err = capsys.readouterr().err
    assert f"--optuna: no Optuna journal in {tmp_path.resolve()}/optuna/" in err and "--storage URL" in err
    assert main(["ui", "--host", "no-such-host.invalid"]) == 2
    assert "--host: cannot bind to host 'no-such-host.invalid'" in capsys.readouterr().err
    assert main(["ui", "--tracking-uri", "http://127.0.0.1:5000"]) == 2
    assert "http://127.0.0.1:5000 is an MLflow tracking server, which serves its own UI" in capsys.readouterr().err
