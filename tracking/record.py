"""The MLflow record of one run: params, tags, buffered metrics, artifacts and an honest final status.

Written with :class:`mlflow.MlflowClient` (no fluent global state). Metric values are buffered in
memory and written in large ``log_batch`` calls: :meth:`RunRecord.maybe_flush` at epoch ends writes
once the oldest value has waited ``flush_seconds`` (one ``log_batch`` costs about 10 ms of SQLAlchemy
work, whatever its size), and :meth:`RunRecord.finish` writes everything at the end, on failure and on
a signal. Logging every step so costs almost nothing on the training path.

Nothing is lost to a kill or an outage: each value also goes to the run's local spool as it arrives
(:mod:`tracking.liveness`), the run carries a heartbeat, and a store that cannot be written (a tracking
server gone, a full disk) never stops training: what it refuses waits in the spool, is retried at the
next flush once ``retry_seconds`` have passed, and is uploaded by the next retort command (or ``retort
sync``) if the store is still unreachable when the run ends.
"""

from __future__ import annotations

import random
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from retort.tracking.context import mask, mask_value
from retort.tracking.liveness import Heartbeat, Spool, recover, this_process
from retort.tracking.mlflow_sql import insert_metrics
from retort.tracking.store import experiment_id, prepare_store
from retort.tracking.vocabulary import Metric, Tag

_MAX_METRICS, _MAX_PARAMS = 1000, 100


def param_value(value: Any) -> str:
    """A param as text that reads back as the same YAML value (``[128, 64]``, ``null``, ``0.001``)."""
    if isinstance(value, str):
        return value
    import json

    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else repr(value)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


class RunRecord:
    """One MLflow run. Create it with :meth:`start`; end it with :meth:`finish` exactly once."""

    flush_seconds = 5.0
    flush_size = 10_000
    retry_seconds = 30.0  # after the store refused a write, the next attempt waits this long
    kept = (Metric.TRAIN_LOSS, Metric.TRAIN_LOSS_EPOCH, Metric.VAL_LOSS)  # series held in memory too, for the loss plot

    def __init__(self, client: Any, run_id: str, experiment_id: str, reopened: bool = False):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self._buffer: list[Any] = []
        self._oldest = 0.0  # monotonic time of the oldest buffered value
        self._kept: dict[str, list[tuple[int, float]]] = {key: [] for key in self.kept}
        self._reopened = reopened  # values recorded before this process are in the store only
        self._floor: dict[str, int] = self._floors() if reopened else {}  # steps recorded before: not again
        self.finished = False
        self.spool: Spool | None = None
        self.heartbeat: Heartbeat | None = None
        self.unreachable: str | None = None  # why the store refused the last write, while it does
        self._retry_at = 0.0

    def adopt(self, uri: str) -> RunRecord:
        """This process writes the run from now on (a resumed run, a sweep's parent): its process tag, the
        heartbeat and the spool."""
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(Tag.PROCESS, this_process()),
                                                 RunTag(Tag.HEARTBEAT, str(int(time.time())))])
        return self._live(uri)

    def _live(self, uri: str) -> RunRecord:
        """Start the spool and the heartbeat (a run this process writes)."""
        import logging

        # MLflow logs a traceback for every write an unreachable or full SQL store refuses; retort handles them
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        self.spool = Spool.create(uri, self.run_id)
        self.heartbeat = Heartbeat(self.client, self.run_id).start()
        return self

    @classmethod
    def start(cls, uri: str, experiment: str, *, run_name: str | None = None,
              params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None) -> RunRecord:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        prepare_store(uri)
        client = MlflowClient(tracking_uri=uri)
        recover(uri, client)
        exp_id = experiment_id(client, uri, experiment)
        tags = {k: mask_value(k, str(v)) for k, v in (tags or {}).items()}
        tags.update({Tag.PROCESS: this_process(), Tag.HEARTBEAT: str(int(time.time()))})
        if Tag.RUN_NAME in tags:  # a sweep names its trials; MLflow refuses two different names
            run_name = None
        # MLflow draws a run's name from Python's `random`, which the run has seeded: draw it from fresh
        # entropy so seed-0 runs get different names, and leave the seeded state as it was
        state = random.getstate()
        random.seed()
        try:
            run = client.create_run(exp_id, run_name=mask(run_name) if run_name else run_name, tags=tags)
        finally:
            random.setstate(state)
        record = cls(client, run.info.run_id, exp_id)
        plist = [Param(k, mask_value(k, param_value(v))) for k, v in (params or {}).items()]
        try:
            for chunk in _chunks(plist, _MAX_PARAMS):  # the tags went in with create_run
                client.log_batch(record.run_id, params=chunk)
        except BaseException:
            with _signals_held():
                client.set_terminated(record.run_id, status="KILLED")
            raise
        return record._live(uri)

    @classmethod
    def reopen(cls, uri: str, run_id: str, tmp: Path, check: Callable[[Path], None]) -> tuple[RunRecord, Path]:
        """An interrupted run to continue: its last checkpoint, downloaded into ``tmp``; the run set RUNNING.

        Bad input (exit 2, nothing changed): no such run, a finished run, a run without a checkpoint, or
        whatever ``check`` refuses: it is called with the run's recorded ``recipe.yaml`` before anything
        is changed (the runner compares it with the recipe to resume).
        """
        from mlflow.exceptions import MlflowException

        from retort.plugins.errors import RecipeError
        from retort.tracking.store import open_store

        client = open_store(uri)  # a missing store is bad input, never created
        recover(uri, client)  # a run killed by SIGKILL: closed, with the checkpoint its process left behind
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise RecipeError(f"no run {run_id!r} in {uri}", field="--resume") from None
        if run.info.status == "FINISHED":
            raise RecipeError(f"run {run_id} finished; there is nothing to resume", field="--resume")
        if run.info.status == "RUNNING":
            raise RecipeError(f"run {run_id} is still running (process {run.data.tags.get(Tag.PROCESS, '?')}); "
                              "stop it first", field="--resume")
        try:
            checkpoint = Path(client.download_artifacts(run_id, "checkpoints/last.ckpt", str(tmp)))
        except (MlflowException, OSError):
            raise RecipeError(f"run {run_id} ({run.info.status}) has no checkpoint to resume from; runs stopped by "
                              "a signal leave one, and killed ones the last written in training "
                              "(tracking.resume_every)", field="--resume") from None
        check(Path(client.download_artifacts(run_id, "recipe.yaml", str(tmp))))
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, Tag.RESUMED, "true")
        if Tag.FAILURE in run.data.tags:  # from the interruption: no longer true once it goes on
            client.delete_tag(run_id, Tag.FAILURE)
        return cls(client, run_id, run.info.experiment_id, reopened=True).adopt(uri), checkpoint

    def log_dataset(self, name: str, digest: str, source: str, profile: Mapping[str, Any]) -> None:
        """The data set as an MLflow input (digest, source and sizes), as the MLflow UI shows it."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        source_type = source.split(":", 1)[0] if ":" in source and not source.startswith("/") else "local"
        dataset = Dataset(name=name, digest=digest, source_type=source_type, source=source,
                          profile=json.dumps(dict(profile)))
        self.client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metric values at ``step``; nothing is written until :meth:`flush`."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._note_oldest()
        start = len(self._buffer)
        if self._floor:
            metrics = {k: v for k, v in metrics.items() if step > self._floor.get(k, -1)}
        self._buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if self.spool is not None:
            self.spool.metrics(self._buffer[start:])
        for key in self._kept.keys() & metrics.keys():
            self._kept[key].append((step, float(metrics[key])))

    def log_series(self, key: str, values: Iterable[float], steps: Iterable[int]) -> None:
        """Buffer a whole series of one metric (a per-step loss) in one call."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._note_oldest()
        start = len(self._buffer)
        floor = self._floor.get(key, -1)
        self._buffer.extend(Metric(key, float(v), now, s) for v, s in zip(values, steps) if s > floor)
        if self.spool is not None:
            self.spool.metrics(self._buffer[start:])
        if key in self._kept:
            self._kept[key].extend((m.step, m.value) for m in self._buffer[start:])

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of ``key`` in step order: the values logged here, and for a resumed run (or a key
        not held in memory) the whole history, read back from the store after a flush."""
        if key in self._kept and not self._reopened:
            return sorted(self._kept[key])
        self.flush()
        return sorted((m.step, m.value) for m in self.client.get_metric_history(self.run_id, key))

    def _floors(self) -> dict[str, int]:
        """Per metric of a resumed run (``system/*`` aside: a sample count per process), the highest step in
        the store. A run killed after its last checkpoint recorded the steps it trained since (its spool kept
        them); the resumed run trains them again and records only the values past them."""
        keys = [k for k in self.client.get_run(self.run_id).data.metrics if not k.startswith("system/")]
        return {k: max(m.step for m in self.client.get_metric_history(self.run_id, k)) for k in keys}

    def _note_oldest(self) -> None:
        if not self._buffer:
            self._oldest = time.monotonic()

    def maybe_flush(self) -> None:
        """Write the buffer if its oldest value waited ``flush_seconds`` or it holds ``flush_size`` values."""
        if self._buffer and (time.monotonic() - self._oldest >= self.flush_seconds
                             or len(self._buffer) >= self.flush_size) and time.monotonic() >= self._retry_at:
            self.flush()

    def flush(self) -> None:
        """Write every buffered value now (kept for the next attempt, and in the spool, if the store refuses)."""
        if not self._buffer:
            return
        if self._write(self._write_metrics, self._buffer):
            self._buffer = []
            if self.spool is not None:
                self.spool.committed()

    def _write_metrics(self, buffer: list[Any]) -> None:
        if insert_metrics(self.client, self.run_id, buffer):
            return
        for chunk in _chunks(buffer, _MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=chunk)

    def _write(self, call: Callable[..., Any], *args: Any) -> bool:
        """``call(*args)``; False, with the reason noted, if the store is unreachable or full. Input the store
        refuses (a bad value, a closed run) raises as before."""
        if self.spool is not None and time.monotonic() < self._retry_at:
            return False  # refused moments ago: do not stall training on it again yet
        try:
            call(*args)
        except Exception as exc:
            if self.spool is None or refused(exc):
                raise
            self.unreachable = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            self._retry_at = time.monotonic() + self.retry_seconds
            return False
        self.unreachable = None
        return True

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        masked = {k: mask_value(k, str(v)) for k, v in tags.items()}
        if not self._write(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in masked.items()])):
            self.spool.tags(masked)

    def log_text(self, text: str, artifact_file: str) -> None:
        if not self._write(self.client.log_text, self.run_id, text, artifact_file):
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / Path(artifact_file).name
                path.write_text(text)
                self.spool.artifact(path, str(Path(artifact_file).parent) if "/" in artifact_file else None)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """A folder of artifacts (the MLflow model); what the store refuses waits in the spool, file by file."""
        if not self._write(self.client.log_artifacts, self.run_id, str(folder), artifact_path):
            folder = Path(folder)
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                inside = path.parent.relative_to(folder).as_posix()
                where = "/".join(x for x in (artifact_path, inside) if x and x != ".")
                self.spool.artifact(path, where or None)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self._write(self.client.log_artifact, self.run_id, str(path), artifact_path):
            self.spool.artifact(Path(path), artifact_path)

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Flush what is buffered and close the run as FINISHED, FAILED or KILLED (once), signals held off
        meanwhile. If the store is unreachable, the end state waits in the spool with the values it lacks."""
        if self.finished:
            return
        self.finished = True
        with _signals_held():
            if self.heartbeat is not None:
                self.heartbeat.stop()
            try:
                self._retry_at = 0.0  # one more try at the end
                self.flush()
                if reason:
                    self.set_tags({Tag.FAILURE: mask(reason)[:5000]})
            finally:
                if not self._write(self.client.set_terminated, self.run_id, status):
                    self.spool.end(status)
                if self.spool is not None:
                    pending = bool(self.spool.pending)
                    self.spool.close(delete=not pending)
                    if pending:
                        print(f"retort: the tracking store is unreachable ({self.unreachable}); the run's last "
                              f"values and its end state ({status}) wait in {self.spool.path}; the next retort "
                              f"command on this store, or `retort sync`, uploads them", file=sys.stderr, flush=True)


def refused(exc: BaseException) -> bool:
    """Whether the store refused the write itself (a bad value, a run closed meanwhile), as opposed to
    being unreachable, full or locked."""
    code = getattr(exc, "error_code", None)
    return code in ("INVALID_PARAMETER_VALUE", "INVALID_STATE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
                    "RESOURCE_ALREADY_EXISTS")


@contextmanager
def _signals_held() -> Any:
    """SIGINT and SIGTERM wait (in the main thread) until the block is done: a run is never left half-closed."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)

