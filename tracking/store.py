"""The MLflow store: which one, creating it once (atomically) before parallel writers start, and opening an
existing one."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from retort.plugins.errors import RecipeError

# MLflow prints INFO lines (database migrations) from its import on, "View run at" URLs on stdout with a
# tracking server, and progress bars for every artifact download; retort's output is its own.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts" in rerun, --resume
# MLflow's HTTP client retries a refused connection 7 times with backoff (minutes per call) while a tracking
# server is gone; retort keeps what it cannot write in a local spool and tries again later instead.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

DEFAULT_URI = "sqlite:///mlflow.db"


SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")


def resolve_uri(cli: str | None = None, recipe: str | None = None) -> str:
    """``--tracking-uri``, else the recipe's ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else SQLite here.

    A URI no store can be opened at (an unknown scheme, ``sqlite:///`` without a file) is bad input, named
    by where it came from."""
    uri = cli or recipe or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    field = "--tracking-uri" if cli else "tracking.uri" if recipe else "MLFLOW_TRACKING_URI"
    check_uri(uri, field)
    return uri


def check_uri(uri: str, field: str = "--tracking-uri") -> None:
    from retort.tracking.context import mask

    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme not in SCHEMES:
        raise RecipeError(f"{mask(uri)!r} is not a tracking store URI; valid schemes: {', '.join(SCHEMES)} "
                          f"(sqlite:///mlflow.db, postgresql://user@host/db, http://host:5000)", field=field)
    path = sqlite_path(uri)
    if scheme == "sqlite" and (path is None or not path.name):
        raise RecipeError(f"{uri!r} names no database file: sqlite:///mlflow.db (relative to the working "
                          f"folder) or sqlite:////absolute/path.db", field=field)


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

    A new store is created and migrated in a temporary file that is moved into place when complete: a
    process killed while MLflow migrates (SIGKILL, the OOM killer) leaves a temporary file, never a
    half-migrated store that every later command would fail on. A folder where no store can be created
    is bad input.
    """
    path = sqlite_path(uri)
    if path is None or (path.exists() and str(path.resolve()) in _prepared):
        return
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock

        lock_path.touch()  # a folder where no file can be made fails here (FileLock would wait on it forever)
        with FileLock(lock_path):  # a waiter whose lock file was removed meanwhile locks a fresh one
            if path.exists():
                _open(uri)  # migrates a store made by an older MLflow
            else:
                _create(path)
            # The lock only guards creating and migrating; left behind, it would be an untracked file that marks
            # every later run in a git working folder dirty. Removed only once the store is migrated: whoever
            # locks after that (a waiter on this inode, or a newcomer on a fresh file) finds nothing to migrate.
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
    except OSError as exc:
        raise RecipeError(f"cannot create the store {str(path)!r}: {exc.strerror or exc}",
                          field="--tracking-uri") from None
    _prepared.add(str(path.resolve()))


def _open(uri: str) -> Any:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)
    return client


def _create(path: Path) -> None:
    """Create and migrate the store at ``path`` through a temporary file (the caller holds the lock)."""
    for stale in path.parent.glob(f".{path.name}.*.creating*"):  # left by a creator that was killed
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
    try:
        client = _open(f"sqlite:///{tmp.resolve()}")
        client._tracking_client.store.engine.dispose()  # every connection closed before the file moves
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) or "unable to open database file" in str(exc):
            raise OSError(str(exc).splitlines()[0]) from None
        raise
    os.replace(tmp, path)


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
