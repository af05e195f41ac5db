"""Where a study lives (a journal file, PostgreSQL, SQLite) and how its storage rides out an outage."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from retort.plugins.errors import RecipeError
from retort.tracking.vocabulary import StudyAttr

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


class LockLost(RuntimeError):
    """The study lock was lost while held: its database connection dropped (a restart, the network), so the
    database released it and another worker may hold it now. What the holder counted may be stale: a write
    that adds or claims a trial refuses, and the holder takes the lock again and starts over
    (:func:`retort.recipes.sweep.lease.locked`)."""


_HELD: ContextVar[Any] = ContextVar("retort_study_lock", default=None)


@contextmanager
def fence(lock: Any) -> Iterator[None]:
    """Within the block, this thread's writes that add or claim a trial first check that ``lock`` is still
    held (:func:`fenced`)."""
    token = _HELD.set(lock)
    try:
        yield
    finally:
        _HELD.reset(token)


def fenced() -> None:
    """Raise :class:`LockLost` if this thread works under a study lock it no longer holds."""
    lock = _HELD.get()
    if lock is not None and hasattr(lock, "held") and not lock.held():
        raise LockLost("the study lock was lost (its database connection dropped)")


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


# Calls that are safe to repeat after an outage: reads, and writes whose repeat changes nothing (attributes
# and intermediate values are upserts; a parameter set twice is ignored by Optuna's integrity check; a study
# created twice raises DuplicatedStudyError, which create_study(load_if_exists=True) turns into a load).
# Underscored names are RDBStorage's own, which Optuna's _CachedStorage calls directly.
_SAFE = (
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "get_all_studies", "get_trial_id_from_study_id_trial_number", "get_trial",
    "get_all_trials", "get_best_trial", "get_n_trials", "get_trial_params", "get_trial_param",
    "get_trial_user_attrs", "get_trial_system_attrs", "_get_trials", "_get_best_trial_id", "_get_stale_trial_ids",
    "create_new_study", "set_study_user_attr", "set_study_system_attr", "set_trial_user_attr",
    "set_trial_system_attr", "set_trial_intermediate_value", "set_trial_param", "_set_trial_param",
    "record_heartbeat",
)


def _patient(storage: Any, target: str, patience: float) -> Any:
    """``storage`` (same object, same class) whose calls ride out an outage (:func:`patiently`), each as its
    kind allows: calls safe to repeat are repeated; a trial creation is tagged with a fresh token in the same
    write and, after a failure, looked up by it before it is tried again (a reply lost after the commit must
    not make a second trial); a state change is read back before it is tried again. A creation, and a claim of
    a waiting trial (to RUNNING), is made only while the study lock is held (:func:`fenced`): a read-back of a
    claim is then unambiguous. Anything else (deleting a study) is never repeated."""
    import functools

    for name in _SAFE:
        method = getattr(storage, name, None)
        if method is None:
            continue

        @functools.wraps(method)
        def wrapper(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            return patiently(lambda: _method(*args, **kwargs), target, patience)

        setattr(storage, name, wrapper)
    if hasattr(storage, "_get_prepared_new_trial"):  # RDBStorage: its own creation retries blindly inside
        storage._create_new_trial = _created_once(storage, target, patience)
    else:
        storage.create_new_trial = _created_once(storage, target, patience)
    set_state = storage.set_trial_state_values

    def set_trial_state_values(trial_id: int, state: Any, values: Sequence[float] | None = None) -> bool:
        tried = False

        def once() -> bool:
            nonlocal tried
            if state.name == "RUNNING":  # claiming a waiting trial: only under the lock (so, if ours on read-back)
                fenced()
            if tried:  # the last try may have been written before its reply was lost
                now = storage.get_trial(trial_id)
                if now.state == state and (values is None or list(now.values or []) == list(values)):
                    return True
            tried = True
            return set_state(trial_id, state, values)

        return patiently(once, target, patience)

    storage.set_trial_state_values = set_trial_state_values
    return storage


def _created_once(storage: Any, target: str, patience: float) -> Any:
    """``create_new_trial`` (or RDBStorage's ``_create_new_trial``) made idempotent: the trial carries a token
    (system attr ``retort:token``) written in the same transaction; after a failure the token is looked up, so
    that a creation whose reply was lost is found rather than repeated."""
    import copy
    import datetime
    import uuid

    import optuna

    rdb = hasattr(storage, "_get_prepared_new_trial")
    create = _rdb_create_once if rdb else storage.create_new_trial

    def created(study_id: int, template_trial: Any = None) -> Any:
        if template_trial is None:  # what Optuna writes for a plain ask, as a template that can carry the token
            template_trial = optuna.trial.FrozenTrial(
                number=-1, state=optuna.trial.TrialState.RUNNING, value=None, values=None,
                datetime_start=datetime.datetime.now(), datetime_complete=None, params={}, distributions={},
                user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=-1)
        else:
            template_trial = copy.deepcopy(template_trial)
        token = uuid.uuid4().hex
        template_trial.system_attrs = {**template_trial.system_attrs, StudyAttr.TOKEN: token}
        tried = False

        def once() -> Any:
            nonlocal tried
            if tried:
                for t in storage.get_all_trials(study_id, deepcopy=False):
                    if t.system_attrs.get(StudyAttr.TOKEN) == token:
                        return t if rdb else t._trial_id
            fenced()  # counted under a lock lost since: another worker may have added the trial meanwhile
            tried = True
            return create(storage, study_id, template_trial) if rdb else create(study_id, template_trial)

        return patiently(once, target, patience)

    return created


def _rdb_create_once(storage: Any, study_id: int, template_trial: Any) -> Any:
    """One attempt of RDBStorage's ``_create_new_trial`` (whose own loop repeats a creation whose commit
    failed, even when the commit reached the database): Optuna's session, study row lock and preparation."""
    import copy

    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(storage.scoped_session) as session:
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        trial = storage._get_prepared_new_trial(study_id, template_trial, session)
        number, trial_id, start = trial.number, trial.trial_id, trial.datetime_start
    frozen = copy.deepcopy(template_trial)
    frozen.number, frozen.datetime_start, frozen._trial_id = number, start, trial_id
    return frozen


def dashboard_command(target: str) -> str:
    import shlex

    return f"optuna-dashboard {shlex.quote(display(target))}"
