"""The MLflow store: created once under a lock, so concurrent first writers queue instead of racing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from retort.tracking.store import prepare_store, resolve_uri, sqlite_path


def test_resolve_uri_order(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_uri() == "sqlite:///env.db"
    assert resolve_uri(recipe="sqlite:///recipe.db") == "sqlite:///recipe.db"
    assert resolve_uri("sqlite:///cli.db", "sqlite:///recipe.db") == "sqlite:///cli.db"


def test_sqlite_path():
    assert sqlite_path("sqlite:///mlflow.db") == Path("mlflow.db")
    assert sqlite_path("sqlite:////abs/m.db") == Path("/abs/m.db")
    assert sqlite_path("postgresql://u@/db") is None


def test_six_processes_creating_one_new_store_all_succeed(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    code = ("import sys; from tracking.store import prepare_store; prepare_store(sys.argv[1]);"
            "from mlflow import MlflowClient; c = MlflowClient(sys.argv[1]);"
            "e = c.get_experiment_by_name('x') or None; print('ok')")
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(6)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [err[-500:] for _, err in results]
    prepare_store(uri)  # and again, on the existing store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.db"]  # the lock is gone with the work it guarded


def test_a_store_in_a_git_working_folder_leaves_it_clean(tmp_path: Path):
    from retort.tracking.context import git_state

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("mlflow.db\n")  # the store, as a researcher ignores it
    git("add", ".gitignore")
    git("commit", "-q", "-m", "start")
    for _ in range(2):  # a new store, then an existing one
        prepare_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
        state = git_state(tmp_path)
        assert state is not None and state.dirty is False and state.diff == ""


def test_postgres_fixture_gives_a_live_database(postgres_url: str):
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("select 40 + 2")).scalar() == 42
    engine.dispose()
