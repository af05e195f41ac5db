"""Runs that outlive their process: a heartbeat while a run is open, a local spool of what it wrote, and
closing the runs whose process is gone.

- **Heartbeat**: a run carries ``retort.process`` (host, pid and the process's start time) and
  ``retort.heartbeat`` (Unix time), rewritten every ``HEARTBEAT_SECONDS`` by a daemon thread (one tag
  write: nothing on the training path).
- **Spool**: an append-only local file per open run (``$RETORT_SPOOL``, else ``~/.cache/retort/spool``,
  one folder per store). Every metric value is appended as it reaches the record (handed to the kernel
  at once, so a SIGKILL loses nothing written), a mark each time the store holds everything above it,
  and whatever the store could not take while unreachable or full (tags, artifacts, the end state).
  Beside it, the run's latest resumable checkpoint (``<run id>.ckpt``, replaced atomically while training:
  a SIGKILL leaves the last one whole). A run that closes with everything in the store deletes both.
- **Recovery** (:func:`recover`, run by every retort command that opens a store, and by ``retort
  sync``): a spool whose process is gone is replayed into the store (its checkpoint uploaded as the run's
  ``checkpoints/last.ckpt``, which ``retort run --resume`` continues from), and a RUNNING run whose process is
  gone (same host: the pid is dead or belongs to a later process) or silent for ``GRACE_SECONDS`` (another
  host) is closed as KILLED with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from retort.tracking.vocabulary import Tag

HEARTBEAT_SECONDS = 30.0
GRACE_SECONDS = 600.0  # another host's run is closed after this long without a heartbeat


# --- the process ----------------------------------------------------------------------------------

def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def this_process() -> str:
    """``host pid start`` of this process."""
    return f"{socket.gethostname()} {os.getpid()} {_start_time(os.getpid())}"


def alive(process: str) -> bool | None:
    """Whether the process named by :func:`this_process`'s text still runs; None when it is on another host."""
    host, pid_text, *start = [*process.split(" "), ""]
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not start[0] or _start_time(pid) in ("", start[0])


# --- the heartbeat --------------------------------------------------------------------------------

class Heartbeat:
    """Rewrites a run's ``retort.heartbeat`` tag every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, client: Any, run_id: str, interval: float = HEARTBEAT_SECONDS):
        self.client, self.run_id, self.interval = client, run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retort-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # an unreachable store: the spool keeps what matters
                self.client.set_tag(self.run_id, Tag.HEARTBEAT, str(int(time.time())))

    def stop(self) -> None:
        self._stop.set()


# --- the spool ------------------------------------------------------------------------------------

def spool_root(uri: str) -> Path:
    """The folder of the spools of the runs recorded in ``uri`` (one folder per store)."""
    from retort.tracking.store import sqlite_path

    base = os.environ.get("RETORT_SPOOL") or str(Path(os.environ.get("XDG_CACHE_HOME") or
                                                      Path.home() / ".cache") / "retort" / "spool")
    path = sqlite_path(uri)
    canonical = f"sqlite:///{path.resolve()}" if path is not None else uri
    return Path(base) / hashlib.sha256(canonical.encode()).hexdigest()[:16]


class Spool:
    """The append-only local file of one open run. Lines: ``m`` a metric value, ``c`` everything above is
    in the store, ``t`` a tag, ``a`` an artifact (a copy in the run's spool folder), ``e`` the end state."""

    def __init__(self, path: Path):
        self.path = path
        self.checkpoint = checkpoint_of(path)  # the run's latest resumable checkpoint, written by the loop
        self.pending = 0  # values and writes not yet in the store
        self._file: Any = None

    @classmethod
    def create(cls, uri: str, run_id: str) -> Spool | None:
        """A spool for ``run_id``; None where none can be written (the run is then recorded as before)."""
        try:
            root = spool_root(uri)
            root.mkdir(parents=True, exist_ok=True)
            spool = cls(root / f"{run_id}.spool")
            spool._file = open(spool.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the run's life)
            spool._write("h\t" + json.dumps({"run_id": run_id, "process": this_process()}))
            return spool
        except OSError:
            return None

    def _write(self, line: str) -> None:
        if self._file is None:
            return
        try:
            self._file.write(line + "\n")
            self._file.flush()  # in the kernel's hands: survives a SIGKILL of this process
        except (OSError, ValueError):
            self._file = None  # a full disk: the run goes on, recorded as well as the store allows

    def metrics(self, metrics: Iterable[Any]) -> None:
        lines = [f"m\t{m.key}\t{m.value!r}\t{m.timestamp}\t{m.step}" for m in metrics]
        if lines and self._file is not None:
            self.pending += len(lines)
            self._write("\n".join(lines))

    def committed(self) -> None:
        """The store holds every value spooled so far."""
        if self.pending:
            self.pending = 0
            self._write("c")

    def tags(self, tags: dict[str, str]) -> None:
        self.pending += 1
        self._write("t\t" + json.dumps(tags))

    def artifact(self, source: Path, artifact_path: str | None) -> None:
        """Keep a copy of an artifact the store could not take, to upload later."""
        folder = self.path.with_suffix("")
        try:
            folder.mkdir(exist_ok=True)
            target = folder / str(len(list(folder.iterdir()))) / source.name  # uploaded under its own name
            target.parent.mkdir()
            shutil.copyfile(source, target)
        except OSError:
            return
        self.pending += 1
        self._write("a\t" + json.dumps([str(target), artifact_path]))

    def end(self, status: str) -> None:
        self.pending += 1
        self._write("e\t" + status)

    def close(self, *, delete: bool) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if delete:
            remove(self.path)


def checkpoint_of(spool: Path) -> Path:
    return spool.with_suffix(".ckpt")


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    for leftover in (checkpoint_of(path), checkpoint_of(path).with_suffix(".ckpt.part")):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(path.with_suffix(""), ignore_errors=True)


def _read(path: Path) -> tuple[dict[str, Any], list[list[str]]]:
    """The header and the lines after the last ``c`` mark (what the store may lack)."""
    header: dict[str, Any] = {}
    todo: list[list[str]] = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            if not raw.endswith("\n"):
                break  # the last line, cut short by the kill
            parts = raw.rstrip("\n").split("\t")
            if parts[0] == "h":
                header = json.loads(parts[1])
            elif parts[0] == "c":
                todo = []
            else:
                todo.append(parts)
    return header, todo


# --- recovery -------------------------------------------------------------------------------------

_recovered: set[str] = set()  # stores this process has recovered


def recover(uri: str, client: Any = None, *, force: bool = False) -> list[str]:
    """Replay the spools of dead processes into ``uri`` and close runs whose process is gone as KILLED.

    Done once per process and store unless ``force``; never raises (an unreachable store is tried by the
    next command). Returns one line per run it touched.
    """
    if uri in _recovered and not force:
        return []
    _recovered.add(uri)
    if client is None:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
    done: list[str] = []
    with contextlib.suppress(Exception):
        done += _replay_spools(uri, client)
    with contextlib.suppress(Exception):
        done += _reap(client, {line.split()[1] for line in done})
    return done


def _replay_spools(uri: str, client: Any) -> list[str]:
    root = spool_root(uri)
    if not root.is_dir():
        return []
    done = []
    for path in sorted(root.glob("*.spool")):
        try:
            header, todo = _read(path)
        except (OSError, ValueError):
            continue
        if not header or alive(header.get("process", "")) is not False:
            continue  # a live process's (or an unreadable) spool
        done.append(replay(client, header["run_id"], header["process"], todo, checkpoint_of(path)))
        remove(path)
    return done


def replay(client: Any, run_id: str, process: str, todo: list[list[str]], checkpoint: Path | None = None) -> str:
    """Write a dead process's spooled lines into the store; close its run (KILLED unless the spool ended it,
    with its latest ``checkpoint`` as ``checkpoints/last.ckpt`` to resume from)."""
    from mlflow.entities import Metric

    from retort.tracking.record import RunRecord

    run = client.get_run(run_id)
    record = RunRecord(client, run_id, run.info.experiment_id)
    status = None
    values = [Metric(p[1], float(p[2]), int(p[3]), int(p[4])) for p in todo if p[0] == "m"]
    if values:  # a kill between the store's commit and the spool's mark: those values are in already
        have = {(m.key, m.step, m.timestamp) for key in {v.key for v in values}
                for m in client.get_metric_history(run_id, key)}
        values = [v for v in values if (v.key, v.step, v.timestamp) not in have]
    if values and run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")  # the store takes values for active runs only
    if values:
        record._buffer = values
        record.flush()
    for parts in todo:
        if parts[0] == "t":
            record.set_tags(json.loads(parts[1]))
        elif parts[0] == "a":
            source, artifact_path = json.loads(parts[1])
            with contextlib.suppress(OSError):
                client.log_artifact(run_id, source, artifact_path)
        elif parts[0] == "e":
            status = parts[1]
    resumable = ""
    if status is None:
        status = "KILLED"
        client.set_tag(run_id, Tag.FAILURE, f"killed: process {_who(process)} ended without closing the run "
                                                 "(SIGKILL, the out-of-memory killer or a power loss)")
        if checkpoint is not None and checkpoint.is_file():
            import tempfile

            with tempfile.TemporaryDirectory(prefix="retort-") as tmp:  # uploaded under the name resuming reads
                try:
                    os.link(checkpoint, Path(tmp) / "last.ckpt")
                except OSError:
                    shutil.copyfile(checkpoint, Path(tmp) / "last.ckpt")
                client.log_artifact(run_id, str(Path(tmp) / "last.ckpt"), "checkpoints")
            resumable = ", with its last checkpoint to resume from"
    client.set_terminated(run_id, status=status)
    return f"replayed {run_id} ({len(values)} values from the local spool; {status}{resumable})"


def _who(process: str) -> str:
    host, pid, *_ = [*process.split(" "), "", ""]
    return f"{pid} on {host}"


def _reap(client: Any, skip: set[str]) -> list[str]:
    """Close RUNNING runs whose process is gone as KILLED."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    done, now = [], time.time()
    for run in client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=1000):
        process = run.data.tags.get(Tag.PROCESS)
        if not process or run.info.run_id in skip:
            continue
        state = alive(process)
        beat = float(run.data.tags.get(Tag.HEARTBEAT) or run.info.start_time / 1000)
        if state is True or (state is None and now - beat < GRACE_SECONDS):
            continue
        why = (f"process {_who(process)} ended without closing the run (SIGKILL, the out-of-memory killer or a "
               f"power loss)" if state is False else
               f"no heartbeat from process {_who(process)} for {now - beat:.0f} s (more than {GRACE_SECONDS:.0f})")
        client.set_tag(run.info.run_id, Tag.FAILURE, f"killed: {why}")
        client.set_terminated(run.info.run_id, status="KILLED")
        done.append(f"closed {run.info.run_id} as KILLED: {why}")
    return done


# --- preemption: the run to continue -------------------------------------------------------------

def latest_interrupted(uri: str, recipe: str, command: str) -> str | None:
    """The latest run of ``recipe`` started by the same command (``--resume auto`` aside) that was interrupted
    with a checkpoint to resume from, so that a requeued job (SLURM ``--requeue``, a spot instance) needs no
    run id; None when there is none (the command then starts a new run)."""
    import re

    from retort.tracking.store import sqlite_path

    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        return None
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    recover(uri, client)  # a run whose process died is KILLED now

    def plain(text: str) -> str:
        return re.sub(r"\s--resume(=|\s+)auto(?=\s|$)", "", text).strip()

    experiments = [e.experiment_id for e in client.search_experiments()]
    name = recipe.replace("'", "\\'")
    runs = client.search_runs(experiments, f"tags.`{Tag.RECIPE}` = '{name}' and attributes.status = 'KILLED'",
                              order_by=["attributes.start_time DESC"], max_results=100) if experiments else []
    for run in runs:
        if plain(run.data.tags.get(Tag.COMMAND, "")) != plain(command):
            continue
        if any(a.path.endswith("last.ckpt") for a in client.list_artifacts(run.info.run_id, "checkpoints")):
            return run.info.run_id
    return None


# --- retort sync ----------------------------------------------------------------------------------

HELP = "upload what runs spooled locally while their store was unreachable, and close runs whose process died"
EXAMPLES = """examples:
  retort sync                                   # the default store (./mlflow.db or $MLFLOW_TRACKING_URI)
  retort sync --tracking-uri http://host:5000   # after the tracking server is back"""


def add_arguments(parser: Any) -> None:
    pass


def main(args: Any) -> int:
    from retort.tracking.store import open_store, resolve_uri

    uri = resolve_uri(args.tracking_uri)
    client = open_store(uri)  # a missing store is bad input; an unreachable one is one line
    lines = recover(uri, client, force=True)
    for line in lines:
        print(line)
    left = list(spool_root(uri).glob("*.spool")) if spool_root(uri).is_dir() else []
    print(f"synced {len(lines)} run(s)" + (f"; {len(left)} spool(s) of running processes left" if left else ""))
    return 0
