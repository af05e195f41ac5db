"""scripts/tracking-server: a real MLflow server on a real PostgreSQL, a real run recorded over HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.conftest import REPO, retort

SCRIPT = REPO / "scripts" / "tracking-server"
SOCKET_DIR = "/var/run/postgresql"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> list[str]:
    """Local addresses of the TCP sockets listening on ``port``, read from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(addr)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words))
    return found


def psql(db: str, sql: str) -> list[list[str]]:
    out = subprocess.run(["psql", "-h", SOCKET_DIR, "-d", db, "-tAF", "|", "-c", sql],
                         capture_output=True, text=True, check=True)
    return [row.split("|") for row in out.stdout.splitlines() if row]


def wait_healthy(uri: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"tracking-server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    pytest.fail(f"tracking-server did not answer /health within {timeout:.0f} s:\n{log.read_text()}")


def stop(proc: subprocess.Popen, timeout: float = 30) -> int | None:
    """SIGTERM to the server's process, as a supervisor sends it; None if anything of it is still alive after
    ``timeout`` (then the whole process group is killed, so that no test leaves a server behind)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_members(proc.pid):
            return proc.returncode
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return None


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group: stopped children linger as zombies until init reaps them."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.mark.slow
def test_a_run_is_recorded_over_http_in_postgresql(postgres_url: str, tmp_path: Path):
    db = urlparse(postgres_url).path.lstrip("/")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    artifacts = tmp_path / "artifacts"
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "server.log"
    # One worker: the default four would each import MLflow, slow on a 2-core machine; `--` passes it through.
    cmd = [str(SCRIPT), "--port", str(port), "--db", db, "--artifacts", str(artifacts), "--", "--workers", "1"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(uri, proc, log)
        banner = log.read_text()
        assert f"tracking URI: {uri}\n" in banner
        assert f"--tracking-uri {uri}" in banner and f"MLFLOW_TRACKING_URI={uri}" in banner
        assert "WARNING" not in banner  # loopback: nothing to warn about
        # Bound to loopback only: nothing else on this machine's network can reach it.
        assert listening_addresses(port) == ["127.0.0.1"]

        out = retort("run", "wine-momentum", "-s", "trainer.max_epochs=2", "-q", "--tracking-uri", uri, cwd=work)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        run_id = lines[-1].removeprefix("run_id: ")
        printed = dict(line.split(": ", 1) for line in lines[:-1] if line.startswith("test/"))
        assert not (work / "mlflow.db").exists() and not (work / "mlruns").exists()  # nothing recorded locally

        # What the server answers over HTTP.
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert client.get_experiment(run.info.experiment_id).name == "wine"
        params = run.data.params
        assert params["optimizer.lr"] == "0.01" and params["optimizer.name"] == "momentum"
        assert params["trainer.max_epochs"] == "2" and params["model.hidden"] == "[32]"
        history = client.get_metric_history(run_id, "train/loss_epoch")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
        assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [1, 2]
        test_acc = run.data.metrics["test/accuracy"]
        assert 0.0 <= test_acc <= 1.0 and float(printed["test/accuracy"]) == pytest.approx(test_acc, abs=1e-4)
        assert run.data.tags["retort.recipe"] == "wine-momentum"

        # Artifacts go through the server (mlflow-artifacts: proxy), not straight to a local path.
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert {"recipe.yaml", "checkpoints"} <= {a.path for a in client.list_artifacts(run_id)}
        assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/best.ckpt"]
        recipe = Path(client.download_artifacts(run_id, "recipe.yaml", str(tmp_path / "dl"))).read_text()
        shown = retort("show", "wine-momentum", "-s", "trainer.max_epochs=2", cwd=work)
        assert shown.returncode == 0, shown.stderr
        assert recipe == shown.stdout
        # ... and are kept under --artifacts.
        on_disk = [p for p in artifacts.rglob("recipe.yaml") if run_id in p.parts]
        assert len(on_disk) == 1 and on_disk[0].read_text() == recipe
        assert len([p for p in artifacts.rglob("best.ckpt") if run_id in p.parts]) == 1

        # The record itself lives in PostgreSQL.
        assert psql(db, f"select status, experiment_id from runs where run_uuid = '{run_id}'") == [
            ["FINISHED", str(run.info.experiment_id)]]
        assert psql(db, f"select value from params where run_uuid = '{run_id}' and key = 'optimizer.lr'") == [
            ["0.01"]]
        steps = psql(db, f"select step from metrics where run_uuid = '{run_id}' and key = 'train/loss_epoch' "
                         "order by step")
        assert steps == [["1"], ["2"]]
    finally:
        code = stop(proc)
    # A clean stop: SIGTERM to the one process (the script exec'd mlflow) ends it and its uvicorn child.
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text() and "Finished server process" in log.read_text()
    assert listening_addresses(port) == []


def test_a_network_address_prints_a_warning(tmp_path: Path):
    # `--` passes an option `mlflow server` rejects, so the script's banner is printed and mlflow stops
    # before binding: nothing is exposed by this test.
    out = subprocess.run([str(SCRIPT), "--host", "0.0.0.0", "--port", "5999", "--backend",
                          f"sqlite:///{tmp_path / 'x.db'}", "--artifacts", "art", "--", "--no-such-option"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no-such-option" in out.stderr  # mlflow server's own refusal
    assert "WARNING: binding to 0.0.0.0" in out.stderr and "WITHOUT authentication" in out.stderr
    assert f"artifacts:    {tmp_path / 'art'}\n" in out.stdout  # made absolute
    assert re.search(r"tracking URI: http://[^:/]+:5999\n", out.stdout)
    assert "0.0.0.0" not in out.stdout  # clients need the machine's name, not the wildcard address


def test_help_and_bad_options(tmp_path: Path):
    out = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "default: 127.0.0.1" in out.stdout and "examples:" in out.stdout
    for args, message in [(["--port", "http"], "--port 'http' is not a port number"),
                          (["--db", "a;b"], "--db 'a;b' is not a plain database name"),
                          (["--hots", "x"], "unknown option '--hots'"),
                          (["--port"], "--port needs a value")]:
        out = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 2 and out.stderr.startswith(f"tracking-server: {message}"), out.stderr
        assert out.stderr.count("\n") == 1
