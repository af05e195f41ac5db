"""Shared fixtures: every test runs in its own folder with its own MLflow store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest-xdist gives its workers COLUMNS=80 and LINES=24: a pipe has none
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)
    # One test process per core already: torch's own threads (one per core in each, and in every retort process a
    # test starts) would only contend for the same cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def _store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite store, made once (migrations take ~2 s) and copied per test."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def _own_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's run spools (and the subprocesses it starts) under its own folder, not the user's cache."""
    monkeypatch.setenv("RETORT_SPOOL", str(tmp_path / "spool"))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _store_template: Path) -> Path:
    """A fresh working folder holding a fresh ./mlflow.db, as the current directory.

    MLFLOW_TRACKING_URI points at it by absolute path: MLflow caches one store per URI string, so the
    relative default would keep writing to the first test's file within one process. Subprocess tests
    (the CLI) exercise the relative default.
    """
    shutil.copy(_store_template, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("RETORT_RUN_ID", raising=False)
    return tmp_path


@pytest.fixture
def client(workdir: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def all_runs(client) -> list:
    exps = client.search_experiments()
    if not exps:
        return []
    return client.search_runs([e.experiment_id for e in exps])


def retort(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    """Run the real `retort` console script in a subprocess."""
    exe = Path(sys.executable).with_name("retort")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(exe), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def _postgres_server() -> str:
    """The machine's PostgreSQL, started for real by scripts/postgres (once per session)."""
    if shutil.which("pg_ctlcluster") is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed on this CI machine")
        pytest.skip("PostgreSQL is not installed here")
    import tempfile

    from filelock import FileLock

    with FileLock(Path(tempfile.gettempdir()) / "retort-tests-postgres.lock"):  # test workers start it once
        out = subprocess.run([str(REPO / "scripts" / "postgres")], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture
def postgres_url(_postgres_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty PostgreSQL database for this test: ``postgresql://USER@/DB?host=SOCKET``."""
    import re
    import uuid

    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:8]
    out = subprocess.run([str(REPO / "scripts" / "postgres"), name], capture_output=True, text=True, check=True)
    yield out.stdout.strip()
    subprocess.run(["dropdb", "--if-exists", "--force", "-h", "/var/run/postgresql", name], capture_output=True)
