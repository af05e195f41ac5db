"""The loop's own callbacks: the recorder, the epoch line, the best weights, and stopping on a signal.

Lightning calls plain callbacks' ``on_train_epoch_end`` before the module's and before early stopping
and checkpoints; these read :meth:`recipes.module.RecipeModule.epoch_summary`, which owns the arithmetic.
The order of the loop's events is :mod:`retort.recipes.events`.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from retort.plugins.errors import Interrupted
from retort.tracking.vocabulary import Metric

# the hooks Lightning calls on every callback at every batch
PER_BATCH = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
             "on_before_optimizer_step", "on_before_zero_grad", "on_validation_batch_start",
             "on_validation_batch_end", "on_test_batch_start", "on_test_batch_end", "on_predict_batch_start",
             "on_predict_batch_end")


class LoopCallback(pl.Callback):
    """A callback of the loop's own. Lightning calls every per-batch hook of every callback, the base class's
    no-op where a callback has none: a profiler context and a call, a few µs, some 40 a step for the loop's
    callbacks. Here a per-batch hook a subclass does not define is None, which Lightning skips."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for hook in PER_BATCH:
            if getattr(cls, hook) is getattr(pl.Callback, hook):
                setattr(cls, hook, None)


class Recorder(LoopCallback):
    """Writes the run's values to its MLflow record in batches, off the training step's path.

    Per epoch: ``train/loss`` and ``lr`` of every ``every``-th step not yet recorded, values other
    callbacks put in ``module.history``, and the epoch's summary; within a long epoch, the steps so far once
    every ``spool_seconds`` (into the record's buffer and its local spool: a SIGKILL loses at most that
    long), and when training fails mid-epoch. On rank zero only (``record`` is None elsewhere).
    """

    spool_seconds = 1.0

    def __init__(self, record: Any, every: int):
        self.record, self.every = record, every
        self._due = 0.0

    def on_fit_start(self, trainer: pl.Trainer, m: Any) -> None:
        if self.record is not None:
            from retort.tracking.context import device_tags

            self.record.set_tags(device_tags(trainer))

    def record_steps(self, m: Any) -> None:
        """Record this epoch's per-step values that are not in the record yet."""
        n = len(m.step_losses)
        first = m.batches_seen - n + 1
        new = [i for i in range(n) if first + i > m.recorded_upto]
        steps: list[int] = []
        if self.record is not None and new and self.every:
            keep = [i for i in new if (first + i) % self.every == 0]
            losses = torch.stack([m.step_losses[i] for i in keep]).tolist() if keep else []
            steps = [first + i for i in keep]
            self.record.log_series(Metric.TRAIN_LOSS, losses, steps)
            self.record.log_series(Metric.LR, [m.step_lrs[i] for i in keep], steps)
        if self.record is not None:
            done = set(steps)
            for key, items in m.history.items():
                if key in (Metric.TRAIN_LOSS, Metric.LR):  # a callback's copy of a step the loop recorded: once
                    items = [(s, v) for s, v in items if s not in done]
                self.record.log_series(key, [float(v) for _, v in items], [s for s, _ in items])
        m.history.clear()
        m.recorded_upto = m.batches_seen

    def on_train_batch_end(self, trainer: pl.Trainer, m: Any, outputs: Any, batch: Any, i: int) -> None:
        if self.record is not None and time.monotonic() >= self._due:
            if self._due:
                self.record_steps(m)
            self._due = time.monotonic() + self.spool_seconds

    def on_exception(self, trainer: pl.Trainer, m: Any, exception: BaseException) -> None:
        self.record_steps(m)  # the failing epoch's steps, the failing one included

    def on_train_epoch_end(self, trainer: pl.Trainer, m: Any) -> None:
        summary = m.epoch_summary()
        self.record_steps(m)
        if self.record is not None:
            self.record.log(summary, step=trainer.current_epoch + 1)
            self.record.maybe_flush()


class EpochLine(LoopCallback):
    """``epoch 3/20  train loss 0.4121  val loss 0.3890  val accuracy 0.9412`` on stdout per epoch; on a
    terminal, a live bar during the epoch (:class:`recipes.display.EpochBar`) on stderr."""

    def __init__(self, max_epochs: int):
        from retort.recipes.display import EpochBar, live

        self.max_epochs = max_epochs
        self.bar = EpochBar(max_epochs) if live() else None
        self._samples = self._counted = 0
        self._sum = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, m: Any) -> None:
        if self.bar is not None and not trainer.global_rank:
            self._samples = self._counted = 0
            self._sum = 0.0
            total = trainer.num_training_batches  # inf for a data set without a length
            self.bar.start(trainer.current_epoch + 1, int(total) if math.isfinite(total) else 0)

    def on_train_batch_end(self, trainer: pl.Trainer, m: Any, outputs: Any, batch: Any, i: int) -> None:
        if self.bar is None or trainer.global_rank:
            return
        self._samples += len(batch[0])
        if self.bar.due():
            losses = m.step_losses
            if len(losses) > self._counted:
                self._sum += float(torch.stack(losses[self._counted:]).sum())
                self._counted = len(losses)
            self.bar.draw(i + 1, self._samples, self._sum / self._counted if self._counted else math.nan)

    def on_train_epoch_end(self, trainer: pl.Trainer, m: Any) -> None:
        if trainer.global_rank:
            return
        if self.bar is not None:
            self.bar.stop()
        words = [f"epoch {trainer.current_epoch + 1}/{self.max_epochs}"]
        for key, value in m.epoch_summary().items():
            words.append(f"{key.replace('/', ' ').replace('loss_epoch', 'loss')} {value:.4f}")
        print("  ".join(words), flush=True)

    def on_exception(self, trainer: pl.Trainer, m: Any, exc: BaseException) -> None:
        if self.bar is not None:
            self.bar.stop()


class BestWeights(LoopCallback):
    """Keeps the best epoch's weights (lowest ``monitor``) in memory, one tensor copy per improvement;
    :meth:`save` writes them once at the end instead of a file per improvement. Its state travels in
    checkpoints, so a resumed run keeps its best."""

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.best = math.inf
        self.epoch = -1
        self.state: dict[str, Any] | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, m: Any) -> None:
        value = m.epoch_summary().get(self.monitor, math.nan)
        if value < self.best:  # NaN never improves
            self.best, self.epoch = value, trainer.current_epoch + 1
            self.state = {k: v.detach().clone() for k, v in m.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "epoch": self.epoch, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.epoch, self.state = state["best"], state["epoch"], state["state"]

    def save(self, path: Path) -> Path | None:
        if self.state is None:
            return None
        torch.save({"state_dict": self.state, "epoch": self.epoch, "monitor": self.monitor, "value": self.best},
                   path)
        return path


def forget_lightning_sigterm(trainer: pl.Trainer) -> None:
    """Make Lightning forget the SIGTERM it just saw.

    Lightning's own SIGTERM handler runs before retort's and sets the private
    ``trainer._signal_connector.received_sigterm``, on which the loop exits at the batch's end without a
    checkpoint; retort stops at the next batch start instead, with one. Lightning has no public way to
    decline its handling."""
    trainer._signal_connector.received_sigterm = False


class SignalGuard:
    """SIGINT/SIGTERM during training ask the loop to stop at the next batch boundary, with a checkpoint
    to resume from; outside training, or a second signal, interrupt at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.trainer: pl.Trainer | None = None  # set while training
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.trainer is not None and self.signum is None:
            self.signum = signum
            # Lightning sees SIGTERM too (its handler runs before this one) and would exit at the batch's end
            # without a checkpoint; retort stops at the next batch start instead, with one
            forget_lightning_sigterm(self.trainer)
            return
        raise Interrupted(signum)

    def __enter__(self) -> SignalGuard:
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


class Interruption(LoopCallback):
    """Acts on a :class:`SignalGuard`'s request at the start of a training batch, when exactly the batches
    before it are applied (under gradient accumulation, at the start of the next window: gradients of a
    window's first batches are in no checkpoint): saves a resumable checkpoint, records the epoch so far,
    then interrupts."""

    def __init__(self, guard: SignalGuard, path: Path, recorder: Recorder):
        self.guard, self.path, self.recorder = guard, path, recorder
        self.saved: Path | None = None

    def on_train_start(self, trainer: pl.Trainer, m: Any) -> None:
        self.guard.trainer = trainer

    def on_train_end(self, trainer: pl.Trainer, m: Any) -> None:
        self.guard.trainer = None

    def stop(self, trainer: pl.Trainer, m: Any) -> None:
        self.recorder.record_steps(m)  # first: the checkpoint must know these steps are recorded
        trainer.save_checkpoint(self.path)
        self.saved = self.path
        raise Interrupted(self.guard.signum or signal.SIGTERM)

    def on_train_batch_start(self, trainer: pl.Trainer, m: Any, batch: Any, batch_idx: int) -> None:
        if self.guard.signum is not None and batch_idx % getattr(m, "accumulate", 1) == 0:
            self.stop(trainer, m)



class Resumable(LoopCallback):
    """Keeps a resumable checkpoint of the run no older than ``every`` seconds of training (and spends at most
    2% of it doing so): at a batch boundary where exactly the batches before it are applied, as
    :class:`Interruption` does, written to a temporary file and renamed over ``path``, so that a SIGKILL leaves
    the last one whole (the next retort command uploads it: ``tracking/liveness.py``). Under DDP every rank
    takes part in a save, so there the rule is one a rank can follow alone: at each epoch's start."""

    budget = 0.02  # the share of training time saves may take

    def __init__(self, path: Path, every: float, recorder: Recorder):
        self.path, self.every, self.recorder = path, every, recorder
        self._due = math.inf
        self._first_epoch = 0
        self.saves, self.seconds = 0, 0.0  # how many, and their cost (scripts/bench)

    def on_train_start(self, trainer: pl.Trainer, m: Any) -> None:
        self._due = time.monotonic() + self.every
        self._first_epoch = trainer.current_epoch

    def on_train_batch_start(self, trainer: pl.Trainer, m: Any, batch: Any, batch_idx: int) -> None:
        if trainer.world_size > 1:
            if batch_idx or trainer.current_epoch == self._first_epoch:
                return
        elif time.monotonic() < self._due or batch_idx % getattr(m, "accumulate", 1):
            return
        start = time.monotonic()
        self.recorder.record_steps(m)  # first: the checkpoint must know these steps are recorded
        part = self.path.with_suffix(".ckpt.part")
        trainer.save_checkpoint(part)
        if trainer.is_global_zero:
            os.replace(part, self.path)
        spent = time.monotonic() - start
        self.saves, self.seconds = self.saves + 1, self.seconds + spent
        self._due = time.monotonic() + max(self.every, spent / self.budget)


class RunId(LoopCallback):
    """Every rank learns the run's id from rank zero once the processes are connected (DDP, torchrun)."""

    def __init__(self, own: str | None):
        self.run_id = own

    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        if trainer.world_size > 1:
            self.run_id = trainer.strategy.broadcast(self.run_id, src=0)
