"""The MLflow store: which one, creating it once before parallel writers start, and opening an existing one."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path
from typing import Any

from retort.plugins.errors import RecipeError

# MLflow prints INFO lines (database migrations) from its import on, and "View run at" URLs on stdout
# with a tracking server; retort's output is its own.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

DEFAULT_URI = "sqlite:///mlflow.db"


def resolve_uri(cli: str | None = None, recipe: str | None = None) -> str:
    """``--tracking-uri``, else the recipe's ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else SQLite here."""
    return cli or recipe or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the working folder), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def prepare_store(uri: str) -> None:
    """Create and migrate an SQLite store once, under a file lock.

    Several processes opening a new SQLite database at once race in MLflow's schema migrations
    ("duplicate column name"); sweeps and DDP launches call this in one process before workers start,
    and every run calls it so that concurrent first runs queue instead of racing.
    """
    path = sqlite_path(uri)
    if path is None or (path.exists() and str(path.resolve()) in _prepared):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        # The lock only guards creating and migrating; left behind, it would be an untracked file that marks
        # every later run in a git working folder dirty. Removed only once the store is migrated: whoever
        # locks after that (a waiter on this inode, or a newcomer on a fresh file) finds nothing to migrate.
        with contextlib.suppress(FileNotFoundError):
            lock_path.unlink()
    _prepared.add(str(path.resolve()))


_prepared: set[str] = set()  # database files this process has prepared (each sweep trial's run asks again)


def open_store(uri: str) -> Any:
    """An ``MlflowClient`` on an existing store; a missing store is bad input, never created."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise RecipeError(f"no MLflow store at {path} ({uri}); run something first, or name the store with "
                          f"--tracking-uri or MLFLOW_TRACKING_URI", field="--tracking-uri")
    if uri.startswith("file:"):
        local = Path(re.sub(r"^file:(//)?", "", uri))
        if not local.is_dir():
            raise RecipeError(f"no MLflow store at {local} ({uri})", field="--tracking-uri")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecipeError(f"cannot read the MLflow store {uri}: {first}", field="--tracking-uri") from None
    return client


def experiment_id(client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name``, created if missing.

    In an SQLite store its artifacts live next to the database (``<store folder>/mlruns/<name>``): MLflow's
    default is ``./mlruns`` of whichever folder first created the experiment, which loses a store's
    artifacts when that folder goes away.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    path = sqlite_path(uri)
    location = None
    if path is not None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "experiment"
        location = (path.resolve().parent / "mlruns" / slug).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
