"""A trial over several processes (DDP inside a trial): the worker launches the trial's ranks itself.

Lightning's own launch does not fit a sweep: ``strategy: ddp`` starts ranks 1.. by re-running the command
line (the sweep), and ``ddp_spawn`` pickles the module and the callbacks (the Optuna trial among them) into
spawned processes. So the worker starts one fresh Python per rank with torchrun's environment (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), under which Lightning launches nothing
and connects them, each rank seeing the worker's devices::

    rank 0   the trial's one MLflow child run (as under ``retort run``); reports each epoch to the Optuna
             trial and decides whether to prune
    rank r   trains its shard; learns the run's id and each epoch's decision from rank 0 (broadcast), so
             every rank stops at the same epoch
    worker   no rank: keeps the trial's heartbeat and watches the ranks; the first rank to fail (its
             exception, out of memory, a kill) names the trial's reason, the others get SIGTERM then
             SIGKILL, so no rank is left waiting in a collective; the run is closed FAILED with that reason

Each rank leaves its outcome in a JSON file; the worker turns them into what :func:`retort.recipes.run`
would have returned or raised. The ranks stay for the worker's next trial (each trial connects afresh, on
its own port), so torch, Lightning and MLflow are imported once; after a failed trial they start afresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from retort.plugins.errors import Interrupted, RecipeError, RunFailed, failure
from retort.recipes.sweep.placement import VISIBLE
from retort.recipes.sweep.plan import Plan
from retort.recipes.sweep.share import Share

GRACE = 10.0  # seconds the other ranks get to end by themselves once one failed, then as long after SIGTERM
_CLEARED = ("SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "GROUP_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK")


def ranks(recipe: Any) -> int:
    """How many processes the recipe's trainer runs on this machine's visible devices: 1, or the DDP world
    size. Raises :class:`RecipeError` for a multi-process strategy a worker cannot launch (spawned ones),
    and for more than one node."""
    import pytorch_lightning as pl

    from retort.recipes.runner import _quiet_lightning

    _quiet_lightning()
    t = recipe.trainer
    trainer = pl.Trainer(accelerator=t["accelerator"], devices=t["devices"], strategy=t["strategy"],
                         num_nodes=t["num_nodes"], precision=t["precision"], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    strategy = trainer.strategy
    world = int(getattr(strategy, "num_processes", 1)) * int(t["num_nodes"])
    if world <= 1:
        return 1
    if t["num_nodes"] > 1:
        raise RecipeError("a sweep's trial runs on one machine; give trainer.num_nodes 1 (workers on other "
                          "machines share the study through --storage postgresql://...)", field="trainer.num_nodes")
    if getattr(strategy, "_start_method", "popen") != "popen":
        raise RecipeError(f"a sweep launches a trial's ranks itself, so their strategy must be ddp (or "
                          f"ddp_find_unused_parameters_true, fsdp), not {t['strategy']!r}", field="trainer.strategy")
    return world


@dataclass
class _RankArgs:
    plan: Plan
    setting: dict[str, Any]   # the trial's values, the lr/batch-size rule applied
    tags: dict[str, str]
    trial_id: int             # rank 0 reports to this Optuna trial
    rank: int
    world: int
    port: int
    share: Share              # the worker's, its threads split between the ranks; a GPU budget on its own GPU
    visible: str | None       # the worker's CUDA_VISIBLE_DEVICES
    outcome: str              # the file where the rank leaves its outcome


def _rank_main() -> None:
    """Entry point of a rank: imports, then runs the trials whose arguments arrive pickled on stdin, one
    after another, until stdin ends or a trial does not finish (a failed rank's process group is broken)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, interrupt)
    import optuna  # noqa: F401
    import torch

    import retort.recipes.runner  # noqa: F401
    from retort.recipes.cli import leave
    from retort.recipes.sweep.processes import _prewarm, quiet_optuna
    from retort.recipes.sweep.share import apply

    _prewarm()
    _orphan_watch(os.getppid())
    for key in _CLEARED:  # another launcher's variables would make Lightning read another world
        os.environ.pop(key, None)
    quiet_optuna()
    while True:
        try:
            args: _RankArgs = pickle.load(sys.stdin.buffer)
        except (EOFError, Interrupted):
            leave(0)
        if args.visible is not None:  # before anything touches CUDA (the same for every trial of a worker)
            os.environ[VISIBLE] = args.visible
        os.environ.update({"RANK": str(args.rank), "LOCAL_RANK": str(args.rank), "WORLD_SIZE": str(args.world),
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(args.port)})
        apply(args.share, devices=[args.rank])
        outcome, code = _train(args)
        written = Path(f"{args.outcome}.part")
        written.write_text(json.dumps({**outcome, "at": time.time()}))
        written.rename(args.outcome)  # whole, or not there
        if code:
            leave(code)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # the next trial connects afresh, on its own port
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _train(args: _RankArgs) -> tuple[dict[str, Any], int]:
    from retort import recipes
    from retort.recipes.sweep.pruning import pruning_class
    from retort.recipes.sweep.space import trial_recipe
    from retort.recipes.sweep.storage import StorageUnavailable

    plan = args.plan
    pruning: Any = None
    try:
        base = plan.base()
        recipe = trial_recipe(plan.draft, plan.overrides, args.setting)
        trial = _trial(plan, base, args.trial_id) if args.rank == 0 else None
        pruning = pruning_class()(trial, base.sweep["metric"], base.sweep["direction"] == "maximize",
                                  recipe.trainer["max_epochs"])
        result = recipes.run(recipe, tracking_uri=plan.tracking_uri, quiet=True, command=plan.command,
                             callbacks=[pruning], tags=args.tags, parent_run_id=plan.parent_run_id)
    except Interrupted as exc:
        return {"kind": "interrupted", "reason": f"interrupted by {exc}", "run_id": exc.run_id}, 128 + exc.signum
    except RecipeError as exc:
        return {"kind": "invalid", "reason": str(exc), "run_id": pruning and pruning.run_id}, 2
    except RunFailed as exc:
        return {"kind": "failed", "reason": str(exc), "run_id": exc.run_id or (pruning and pruning.run_id),
                "storage": isinstance(exc.__cause__, StorageUnavailable)}, 1
    except Exception as exc:
        return {"kind": "failed", "reason": failure(exc), "run_id": pruning and pruning.run_id,
                "storage": isinstance(exc, StorageUnavailable)}, 1
    return {"kind": "done", "run_id": result.run_id, "fit_seconds": result.fit_seconds, "epochs": result.epochs,
            "pruned_at": pruning.pruned_at, "curves": pruning.curves, "reported": pruning.reported,
            "bad": pruning.bad}, 0


def _trial(plan: Plan, base: Any, trial_id: int) -> Any:
    """The worker's Optuna trial, as rank 0 reports to it (the pruner decides from the study's trials)."""
    import optuna

    from retort.recipes.sweep.search import make_pruner
    from retort.recipes.sweep.storage import open_storage

    study = optuna.load_study(study_name=plan.study, storage=open_storage(plan.storage, plan.patience),
                              sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(base))
    return optuna.trial.Trial(study, trial_id)


def _orphan_watch(parent: int) -> None:
    """A rank whose worker is gone stops as if interrupted, and is killed if a collective holds it."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(GRACE)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="retort-orphan-watch", daemon=True).start()


def _spawn(n: int) -> list[subprocess.Popen]:
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    env.pop("RETORT_RUN_ID", None)
    code = "from retort.recipes.sweep.ranks import _rank_main; _rank_main()"
    # a session of its own: Ctrl-C reaches the sweep, which forwards one signal through its workers
    return [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, env=env, start_new_session=True)
            for _ in range(n)]


def rank_threads(world: int) -> int:
    """Each rank's CPU threads: this worker's, split between the ``world`` ranks."""
    import torch

    return max(1, torch.get_num_threads() // world)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Ranks:
    """A worker's ranks for multi-process trials: started at its first such trial and kept for the next
    ones (torch, Lightning and MLflow are imported once), started afresh after a trial that failed."""

    def __init__(self, plan: Plan, share: Share | None = None):
        self.plan, self.share = plan, share or Share(None)
        self.group: list[subprocess.Popen] = []

    def close(self) -> None:
        """The ranks end (stdin closed), or are killed after :data:`GRACE` seconds."""
        for proc in self.group:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        self._stop(self.group, None, GRACE)
        self.group = []

    def run(self, trial: Any, setting: Mapping[str, Any], tags: Mapping[str, str], world: int,
            pruning: Any) -> Any:
        """Run the trial over ``world`` rank processes; returns a :class:`RunResult` and fills ``pruning``'s
        outcome, or raises as :func:`retort.recipes.run` does (:class:`RunFailed`, :class:`Interrupted`,
        :class:`RecipeError`, and StorageUnavailable when the study is out of reach)."""
        from retort.recipes.runner import RunResult

        if len(self.group) != world or any(p.poll() is not None for p in self.group):
            self.close()
            self.group = _spawn(world)
        procs = self.group
        folder = Path(tempfile.mkdtemp(prefix="retort-ranks-"))
        files = [folder / f"rank{r}.json" for r in range(world)]
        port, share = _free_port(), replace(self.share, threads=rank_threads(world))
        for rank, proc in enumerate(procs):
            args = _RankArgs(self.plan, dict(setting), dict(tags), trial._trial_id, rank, world, port, share,
                             os.environ.get(VISIBLE), str(files[rank]))
            assert proc.stdin is not None
            with contextlib.suppress(OSError):  # a rank that is gone is seen by _wait
                proc.stdin.write(pickle.dumps(args))
                proc.stdin.flush()
        try:
            seen = self._wait(procs, files)
        except Interrupted:  # pass it on; each rank stops at its next batch (rank 0 records the run KILLED)
            try:
                self._stop(procs, signal.SIGTERM, GRACE * 6)
            finally:
                self._stop(procs, signal.SIGKILL, 0)  # a second signal: no rank outlives the worker
                self.group = []
                pruning.run_id = self._outcome(files[0]).get("run_id") or self._run_id(trial)
                _remove(folder)
            raise
        outcomes = [self._outcome(f) for f in files]
        _remove(folder)
        run_id = outcomes[0].get("run_id") or self._run_id(trial)
        pruning.run_id = run_id
        failed = [(o.get("at", seen[r]), r, o) for r, o in enumerate(outcomes) if o.get("kind") != "done"]
        if not failed:
            first = outcomes[0]
            pruning.pruned_at, pruning.reported, pruning.bad = first["pruned_at"], first["reported"], first["bad"]
            pruning.curves = [[tuple(point) for point in curve] for curve in first["curves"]]
            return RunResult(run_id=run_id, metrics={}, epochs=first["epochs"], fit_seconds=first["fit_seconds"])
        self._stop(procs, signal.SIGKILL, 0)  # those that finished wait for a next trial: not with this group
        self.group = []
        _, rank, outcome = min(failed, key=lambda f: (f[0], f[1]))  # the first to fail: the others followed it
        reason = outcome.get("reason") or f"{_how(procs[rank].returncode)}"
        where = f"rank {rank} of {world}"
        reason = reason.replace("out of memory: ", f"out of memory: {where}: ", 1) \
            if reason.startswith("out of memory: ") else f"{where}: {reason}"
        if outcome.get("storage"):
            from retort.recipes.sweep.storage import StorageUnavailable

            raise StorageUnavailable(reason)
        if outcome.get("kind") == "invalid" and not run_id:
            raise RecipeError(reason)
        if run_id:
            self._close(run_id, reason)
        raise RunFailed(reason, run_id)

    @staticmethod
    def _run_id(trial: Any) -> str | None:
        from retort.recipes.sweep.lease import RUN_ID

        with contextlib.suppress(Exception):
            return trial.study._storage.get_trial(trial._trial_id).user_attrs.get(RUN_ID)
        return None

    @staticmethod
    def _wait(procs: list[subprocess.Popen], files: list[Path]) -> dict[int, float]:
        """Until every rank has left its outcome or ended; once one fails the others get :data:`GRACE`
        seconds, then SIGTERM, then as long again before SIGKILL. Returns when each rank was seen to end."""
        seen: dict[int, float] = {}
        failed_at: float | None = None
        sent: dict[int, int] = {}
        while len(seen) < len(procs):
            for r, proc in enumerate(procs):
                if r in seen or (proc.poll() is None and not files[r].exists()):
                    continue
                seen[r] = time.time()
                done = proc.returncode is None and Ranks._outcome(files[r]).get("kind") == "done"
                if failed_at is None and not done:
                    failed_at = time.monotonic()
            late = time.monotonic() - failed_at if failed_at is not None else 0.0
            signum = signal.SIGKILL if late > 2 * GRACE else signal.SIGTERM if late > GRACE else None
            for r, proc in enumerate(procs):
                if signum is not None and r not in seen and sent.get(r) != signum:
                    sent[r] = signum
                    with contextlib.suppress(OSError):
                        proc.send_signal(signum)
            time.sleep(0.1)
        return seen

    @staticmethod
    def _stop(procs: list[subprocess.Popen], signum: int | None, patience: float) -> None:
        """``signum`` to each rank still running, then up to ``patience`` seconds for them to end; killed after."""
        for proc in procs:
            if signum is not None and proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.send_signal(signum)
        end = time.monotonic() + patience
        for proc in procs:
            try:
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @staticmethod
    def _outcome(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}  # killed before it could say

    def _close(self, run_id: str, reason: str) -> None:
        """The trial's run FAILED with the trial's reason (rank 0 may have closed it with a peer's, or been
        killed with it open)."""
        from mlflow import MlflowClient

        from retort.tracking.vocabulary import Tag

        with contextlib.suppress(Exception):
            client = MlflowClient(tracking_uri=self.plan.tracking_uri)
            client.set_tag(run_id, Tag.FAILURE, reason[:5000])
            client.set_terminated(run_id, status="FAILED")


def _remove(folder: Path) -> None:
    with contextlib.suppress(OSError):
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
