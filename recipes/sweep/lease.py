"""Who runs a trial: the study lock, each running trial's owner and heartbeat, and the reaping of trials
whose worker was lost."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from retort.recipes.sweep.storage import PATIENCE, LockLost, fence, patiently, safe_name, storage_kind
from retort.tracking.vocabulary import StudyAttr, Tag

OWNER, BEAT, RETRIED = StudyAttr.OWNER, StudyAttr.BEAT, StudyAttr.RETRIED
RUN_ID, RETRY_OF, FAILURE = StudyAttr.RUN_ID, StudyAttr.RETRY_OF, StudyAttr.FAILURE
GRACE_BEATS = 6                 # a trial is lost after this many missed heartbeats


def file_lock(path: Path) -> Any:
    """An exclusive lock on a file (``flock``: the kernel releases it when the holder dies)."""
    import filelock

    path.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(path))


class PostgresLock:
    """A PostgreSQL advisory lock per study. The server releases it when the holder's connection drops (a
    restart, the network), and another worker may take it then: :meth:`held` tells, and the writes that add
    or claim trials check it (``storage.fenced``)."""

    def __init__(self, url: str, study: str, patience: float = PATIENCE):
        self.dsn = "postgresql://" + url.split("://", 1)[1]  # libpq reads SQLAlchemy's URL without the driver
        self.patience = patience
        self.key = int.from_bytes(hashlib.sha1(f"retort:{study}".encode()).digest()[:8], "big", signed=True)
        self._conn: Any = None
        self._session: int | None = None  # the server process of the connection that holds the lock

    def _execute(self, sql: str) -> Any:
        import psycopg

        for attempt in (1, 2):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
                return self._conn.execute(sql, (self.key,)).fetchone()
            except psycopg.OperationalError:
                self._conn = None  # dropped while idle: reconnect once
                if attempt == 2:
                    raise
        return None

    def __enter__(self) -> PostgresLock:
        row = patiently(lambda: self._execute("SELECT pg_advisory_lock(%s), pg_backend_pid()"), self.dsn,
                        self.patience)
        self._session = row[1]
        return self

    def held(self) -> bool:
        """Whether the lock is still this process's: the connection that took it is still open (one round trip)."""
        conn = self._conn
        if self._session is None or conn is None or conn.closed:
            return False
        try:
            return conn.execute("SELECT pg_backend_pid()").fetchone()[0] == self._session
        except Exception:
            return False

    def __exit__(self, *exc: Any) -> None:
        if self.held():  # a lost lock is released already; unlocking on a new connection would warn
            with contextlib.suppress(Exception):
                self._execute("SELECT pg_advisory_unlock(%s)")
        self._session = None


def locked(lock: Any, work: Any) -> Any:
    """``work()`` under the study lock. If the lock is lost meanwhile (:class:`LockLost`: its connection
    dropped and the database released it), the work's writes that add or claim a trial refuse, and the work
    starts over under the lock taken anew, so what it counted is current."""
    while True:
        try:
            with lock, fence(lock):
                return work()
        except LockLost:
            continue


def study_lock(target: str, study: str, patience: float = PATIENCE) -> Any:
    """The lock under which workers count and ask, so that a study gets exactly N trials."""
    kind = storage_kind(target)
    if kind == "postgresql":
        return PostgresLock(target, study, patience)
    if kind == "sqlite":
        db = Path(target.split("://", 1)[1][1:].split("?", 1)[0])  # sqlite:///rel.db, sqlite:////abs.db
        return file_lock(db.with_name(f"{db.name}.{safe_name(study)}.retort-lock"))
    return file_lock(Path(f"{target}.retort-lock"))

def is_void(trial: Any) -> bool:
    return RETRIED in trial.system_attrs


def tally(trials: Sequence[Any]) -> dict[str, int]:
    """Trials by state, re-queued ones left out (their repeats count instead)."""
    counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for t in trials:
        if not is_void(t):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def identity() -> dict[str, Any]:
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "ctime": psutil.Process().create_time()}


def _gone(owner: Mapping[str, Any]) -> bool:
    """The owner ran on this machine and its process has ended (or its pid now names another process)."""
    import psutil

    if owner.get("host") != socket.gethostname() or "pid" not in owner:
        return False
    try:
        proc = psutil.Process(int(owner["pid"]))
        return proc.status() == psutil.STATUS_ZOMBIE or abs(proc.create_time() - float(owner["ctime"])) > 1.0
    except psutil.NoSuchProcess:
        return True


def _lost(trial: Any, now: float, heartbeat: float) -> str | None:
    owner = trial.system_attrs.get(OWNER)
    if not owner:
        if StudyAttr.TOKEN not in trial.system_attrs or trial.datetime_start is None:
            return None  # not run by retort: leave it alone
        silent = now - trial.datetime_start.timestamp()
        if silent > GRACE_BEATS * heartbeat:  # a worker owns its trial a moment after it claims it
            return (f"claimed {silent:.0f} s ago by a worker that never took it on (it stopped, or lost the "
                    "database, right after)")
        return None
    who = f"worker {owner.get('worker', '?')} (pid {owner.get('pid')} on {owner.get('host')})"
    if _gone(owner):
        return f"{who} ended while running the trial"
    beat = trial.system_attrs.get(BEAT)
    limit = GRACE_BEATS * float(owner.get("heartbeat", 10.0))
    if beat is not None and now - float(beat) > limit:
        return f"no heartbeat from {who} for {now - float(beat):.0f} s"
    return None


def requeue(study: Any, trial: Any, reason: str, tracking_uri: str | None, experiment: str | None) -> None:
    """Fail ``trial`` as lost, queue a repeat with the same params (once), close its MLflow run as KILLED.
    Call under the study lock (:func:`locked`)."""
    import optuna

    storage, tid = study._storage, trial._trial_id
    if storage.get_trial(tid).state != optuna.trial.TrialState.RUNNING:
        return  # its worker finished it after all
    if not any(t.user_attrs.get(RETRY_OF) == trial.number for t in study.get_trials(deepcopy=False)):
        study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF: trial.number}, skip_if_exists=False)
    try:
        storage.set_trial_system_attr(tid, RETRIED, reason)
        storage.set_trial_user_attr(tid, FAILURE, reason)
        storage.set_trial_system_attr(tid, StudyAttr.FAIL_REASON, reason)
        storage.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    if tracking_uri:
        _close_runs(tracking_uri, experiment, study.study_name, trial, "KILLED", reason)


def _close_runs(uri: str, experiment: str | None, study: str, trial: Any, status: str, reason: str) -> None:
    """End the trial's MLflow run(s) still RUNNING: the run id the trial recorded, and those its tags name (a
    run that started before it could record its id; with sweep.seeds, the seed running)."""
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        run_ids = [trial.user_attrs[RUN_ID]] if trial.user_attrs.get(RUN_ID) else []
        if experiment:
            exp = client.get_experiment_by_name(experiment)
            quoted = study.replace("'", "\\'")
            if exp is not None:
                run_ids += [r.info.run_id for r in client.search_runs(
                    [exp.experiment_id], f"tags.`retort.study` = '{quoted}' and tags.`retort.trial` = "
                    f"'{trial.number}' and attributes.status = 'RUNNING'")]
        for run_id in run_ids:
            if client.get_run(run_id).info.status != "RUNNING":
                continue
            client.set_tag(run_id, Tag.FAILURE, reason[:5000])
            client.set_tag(run_id, Tag.TRIAL_STATE, "FAIL")
            client.set_terminated(run_id, status=status)
    except Exception as exc:  # the record is secondary to the study: say so and go on
        print(f"warning: could not close the MLflow run of trial {trial.number}: {exc}", file=sys.stderr)


def reap(study: Any, tracking_uri: str | None, experiment: str | None, ending: int | None = None,
         heartbeat: float = 10.0) -> list[int]:
    """Re-queue every RUNNING trial whose worker is gone or silent (or is this process, ``ending``), or that no
    worker took on within ``GRACE_BEATS`` beats of ``heartbeat``; returns their numbers. Call under the study
    lock (:func:`locked`)."""
    import optuna

    now = time.time()
    lost = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = t.system_attrs.get(OWNER) or {}
        if ending is not None and owner.get("pid") == ending and owner.get("host") == socket.gethostname():
            reason: str | None = "interrupted before it started"
        else:
            reason = _lost(t, now, heartbeat)
        if reason is not None:
            requeue(study, t, reason, tracking_uri, experiment)
            lost.append(t.number)
    return lost
