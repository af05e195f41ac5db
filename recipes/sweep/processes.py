"""Worker processes: spawning them, handing them their work, watching them, and signals."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retort.plugins.errors import Interrupted, RecipeError
from retort.recipes.cli import leave
from retort.recipes.sweep.lease import locked, reap, study_lock
from retort.recipes.sweep.placement import VISIBLE
from retort.recipes.sweep.plan import Plan
from retort.recipes.sweep.share import Share
from retort.recipes.sweep.storage import StorageUnavailable, open_storage
from retort.recipes.sweep.worker import Worker


@dataclass
class _WorkerArgs:
    plan: Plan
    index: int
    seed: int
    share: Share         # its CPU threads and GPU memory budget
    parent_pid: int
    cause: str = ""   # a file where the worker leaves the one line that says why it stopped, for the parent
    placed: bool = False  # CUDA_VISIBLE_DEVICES was set for this worker: its trials record it


def _worker_main() -> None:
    """Entry point of a spawned worker. It imports the heavy libraries first, while the parent prepares the
    study and the parent run, then reads its arguments, pickled, on stdin (nothing there: not needed)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, interrupt)
    index, cause = "?", ""

    def fail(exc: BaseException, code: int) -> None:
        line = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (RecipeError, StorageUnavailable)) else str(exc)
        print(f"error: worker {index}: {line}", file=sys.stderr)
        if cause:
            with contextlib.suppress(OSError):
                Path(cause).write_text(line[:2000])
        leave(code)

    try:
        import mlflow  # noqa: F401
        import optuna  # noqa: F401
        import pytorch_lightning  # noqa: F401
        import torch  # noqa: F401

        import retort.recipes.runner  # noqa: F401

        _prewarm()
        try:
            args: _WorkerArgs = pickle.load(sys.stdin.buffer)
        except EOFError:
            leave(0)
        index, cause = str(args.index), args.cause
        quiet_optuna()
        placement = os.environ.get(VISIBLE) if args.placed else None
        Worker(args.plan, args.index, args.seed, parent_pid=args.parent_pid, placement=placement,
               share=args.share).run()
    except Interrupted as exc:
        leave(128 + exc.signum)
    except RecipeError as exc:
        fail(exc, 2)
    except Exception as exc:  # the study storage out of reach, or anything else: one line, its cause
        fail(exc, 1)
    leave(0)


def _prewarm() -> None:
    """Load what a worker's first trial would otherwise load on its clock (about 2 s on 2 cores): MLflow's SQL
    store and its ORM mappers, the built-in plugins, scikit-learn's data sets, the environment record.
    A spawned worker does this while the parent checks the input and opens the study."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import sklearn.datasets  # noqa: F401
    from sqlalchemy.orm import configure_mappers

    from retort import plugins
    from retort.tracking.context import environment

    configure_mappers()
    for kind in plugins.KINDS:
        plugins.available(kind)
    environment()


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def spawn(n: int, total: int, places: Sequence[str] = ()) -> list[subprocess.Popen]:
    """Start ``n`` worker processes (of ``total`` workers, this process being one), each with a fair share of
    the CPU threads for OpenMP (torch's own count is set by :func:`.share.apply`) and, given ``places``, the
    i-th its CUDA_VISIBLE_DEVICES; :func:`send` gives them work."""
    threads = max(1, cpus() // total)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    env.pop("RETORT_RUN_ID", None)
    # each in a session of its own: Ctrl-C reaches the parent only, which forwards exactly one signal
    code = "from retort.recipes.sweep.processes import _worker_main; _worker_main()"
    return [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             env={**env, VISIBLE: places[i]} if places else env, start_new_session=True)
            for i in range(n)]


def cause_file(worker: int) -> Path:
    """Where spawned ``worker`` leaves the line that says why it stopped (read, then removed, by the parent)."""
    return Path(tempfile.gettempdir()) / f"retort-sweep-{os.getpid()}-worker{worker}.cause"


def send(procs: list[subprocess.Popen], plan: Plan | None, seeds: list[int], parts: Sequence[Share] = (),
         placed: bool = False) -> list[subprocess.Popen]:
    """Hand spawned worker i (worker number i + 1; this process is worker 0) its arguments, seed ``seeds[i]``
    and share ``parts[i]``; stop those not needed (they have done nothing but import). Returns the workers at
    work."""
    used = procs[:len(seeds)] if plan is not None else []
    for i, proc in enumerate(used):
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            args = _WorkerArgs(plan, i + 1, seeds[i], parts[i], os.getpid(), str(cause_file(i + 1)), placed)
            proc.stdin.write(pickle.dumps(args))
            proc.stdin.close()
    for proc in procs[len(used):]:
        proc.kill()
        proc.wait()
    return used


class Supervisor(threading.Thread):
    """Watches the spawned workers from a thread of the parent (whose main thread is worker 0): re-queues
    the trials of any worker that dies; :meth:`forward` passes SIGINT/SIGTERM on to them."""

    def __init__(self, procs: list[subprocess.Popen], plan: Plan):
        super().__init__(name="retort-supervisor", daemon=True)
        self.procs, self.plan = procs, plan
        self.causes = [cause_file(i + 1) for i in range(len(procs))]
        self.problems: list[str] = []
        self.signum: int | None = None
        self._since: float | None = None

    def forward(self, signum: int) -> None:
        if self.signum is None:
            self.signum, self._since = signum, time.monotonic()
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

    def wait(self) -> None:
        while self.is_alive():  # a join that signals can interrupt
            self.join(0.2)

    def run(self) -> None:
        if not self.procs:
            return
        import optuna

        plan = self.plan
        storage = None  # opened when a worker dies: the study may be out of reach meanwhile
        lock = study_lock(plan.storage, plan.study, plan.patience)  # its own: a lock is not shared between threads
        pending = set(range(len(self.procs)))
        while pending:
            time.sleep(0.2)
            if self._since is not None and time.monotonic() - self._since > 60:
                for i in pending:  # a worker that ignores the signal for a minute is stopped hard
                    with contextlib.suppress(ProcessLookupError):
                        self.procs[i].kill()
            for i in sorted(pending):
                rc = self.procs[i].poll()
                if rc is None:
                    continue
                pending.discard(i)
                if rc == 0 or (self.signum is not None and rc in (128 + self.signum, -self.signum)):
                    continue
                how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
                why = self.causes[i].read_text().strip() if self.causes[i].is_file() else ""
                problem = f"worker {i + 1} stopped: {why}" if why else f"worker {i + 1} {how}"
                self.causes[i].unlink(missing_ok=True)
                try:
                    storage = storage or open_storage(plan.storage, plan.patience)
                    study = optuna.load_study(study_name=plan.study, storage=storage)
                    for n in locked(lock, lambda s=study: reap(s, plan.tracking_uri, plan.experiment,
                                                                heartbeat=plan.heartbeat)):
                        problem += f"; its trial {n} is queued to run again"
                except (StorageUnavailable, RecipeError):
                    problem += "; the study storage is out of reach: its trial runs again when the sweep resumes"
                self.problems.append(problem)

@contextlib.contextmanager
def placed_here(devices: str | None) -> Iterator[None]:
    """This process (worker 0) sees ``devices`` while it runs trials: CUDA reads the variable when it starts,
    which no trial has done before; afterwards the variable is as it was."""
    if devices is None:
        yield
        return
    before = os.environ.get(VISIBLE)
    os.environ[VISIBLE] = devices
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(VISIBLE, None)
        else:
            os.environ[VISIBLE] = before


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT/SIGTERM raise :class:`Interrupted` (a run in progress stops at its next batch first)."""
    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
