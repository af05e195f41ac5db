"""Where a study lives (a journal file, PostgreSQL, SQLite) and how its storage rides out an outage."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

from retort.plugins.errors import RecipeError

PATIENCE = 120.0                # seconds a sweep waits for its study storage to come back before it stops


def safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "study"


def default_journal(tracking_uri: str, study: str) -> Path:
    """``<folder of mlflow.db>/optuna/<study>.journal``; ``./optuna/<study>.journal`` for other stores."""
    from retort.tracking.store import sqlite_path

    db = sqlite_path(tracking_uri)
    folder = (db.parent if db is not None else Path(".")) / "optuna"
    return (folder / f"{safe_name(study)}.journal").resolve()


def storage_kind(target: str) -> str:
    scheme = target.split("://", 1)[0].lower() if "://" in target else ""
    if not scheme:
        return "journal"
    if scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        return "postgresql"
    if scheme.split("+", 1)[0] == "sqlite":
        return "sqlite"
    raise RecipeError(f"unsupported study storage {scheme}://...; valid: a journal file path (one machine), "
                      "postgresql://USER@HOST/DB (many machines), sqlite:///FILE (one worker)", field="--storage")


def storage_target(storage: str | None, tracking_uri: str, study: str, workers: int) -> str:
    if storage is None:
        return str(default_journal(tracking_uri, study))
    kind = storage_kind(storage)
    if kind == "journal":
        path = Path(storage).expanduser()
        if path.is_dir():
            raise RecipeError(f"{storage!r} is a folder; give a journal file path, e.g. {path / 'study.journal'}",
                              field="--storage")
        return str(path.resolve())
    if kind == "sqlite" and workers > 1:
        raise RecipeError("a SQLite study cannot take parallel workers (\"database is locked\"); leave --storage "
                          "out for a journal file, or use postgresql://...", field="--storage")
    if kind == "postgresql" and storage.lower().startswith("postgres://"):
        storage = "postgresql://" + storage.split("://", 1)[1]
    return storage


def display(target: str) -> str:
    from retort.tracking.context import mask

    return mask(target)


def open_storage(target: str, patience: float = PATIENCE) -> Any:
    """An Optuna storage for ``target``: a journal file, or an RDB whose connections are checked before use
    (PostgreSQL closes idle ones; Optuna pre-pings only MySQL). Once open, every call on it rides out an
    outage (database restarting, network down, disk full) of up to ``patience`` seconds; see
    :func:`patiently`. A storage that cannot be opened at all is bad input."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if storage_kind(target) == "journal":
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        return _patient(optuna.storages.JournalStorage(JournalFileBackend(target)), target, patience)
    try:
        if storage_kind(target) == "postgresql":
            from retort.recipes.sweep.lease import PostgresLock

            with PostgresLock(target, ""):  # processes creating Optuna's tables at once would collide
                storage = optuna.storages.RDBStorage(target, engine_kwargs={"pool_pre_ping": True})
        else:
            storage = optuna.storages.RDBStorage(target, engine_kwargs={"pool_pre_ping": True})
    except Exception as exc:
        raise RecipeError(f"cannot open the study storage {display(target)}: {type(exc).__name__}: {exc}",
                          field="--storage") from None
    return _patient(storage, target, patience)


class StorageUnavailable(RuntimeError):
    """The study storage stayed unreachable for the whole patience: the sweep stops (exit 1); every finished
    trial is recorded, and the same command resumes."""


def _transient(exc: BaseException) -> bool:
    """An outage worth waiting out: a database connection lost or refused, a full or failing disk."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        return True
    names = {c.__module__.split(".", 1)[0] + "." + c.__name__ for c in type(exc).__mro__}
    return bool(names & {"sqlalchemy.OperationalError", "sqlalchemy.InterfaceError", "psycopg.OperationalError",
                         "psycopg2.OperationalError", "optuna.StorageInternalError"})


def patiently(call: Any, target: str, patience: float = PATIENCE) -> Any:
    """``call()``, retried with growing pauses (0.5 s to 5 s) while it fails with an outage
    (:func:`_transient`), for up to ``patience`` seconds; then :class:`StorageUnavailable`."""
    deadline, pause = None, 0.5
    while True:
        try:
            return call()
        except Exception as exc:
            if not _transient(exc):
                raise
            what = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            now = time.monotonic()
            if deadline is None:
                deadline = now + patience
                print(f"warning: the study storage {display(target)} is unreachable ({what}); retrying for up to "
                      f"{patience:g} s", file=sys.stderr, flush=True)
            if now >= deadline:
                raise StorageUnavailable(f"the study storage {display(target)} was unreachable for {patience:g} s "
                                         f"({what}); every finished trial is recorded: run the same command again "
                                         "to resume") from None
            time.sleep(min(pause, max(0.0, deadline - now)))
            pause = min(pause * 2, 5.0)


def _patient(storage: Any, target: str, patience: float) -> Any:
    """``storage`` with each of Optuna's storage methods made :func:`patiently` (same object, same class)."""
    import functools

    import optuna

    for name in dir(optuna.storages.BaseStorage):
        if name.startswith("_") or not callable(getattr(storage, name, None)):
            continue
        method = getattr(storage, name)

        @functools.wraps(method)
        def wrapper(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            return patiently(lambda: _method(*args, **kwargs), target, patience)

        setattr(storage, name, wrapper)
    return storage

def dashboard_command(target: str) -> str:
    import shlex

    return f"optuna-dashboard {shlex.quote(display(target))}"
