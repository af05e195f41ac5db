"""What a sweep's pruner sees of a trial: the metric each epoch, over the trial's seeds one after another."""

from __future__ import annotations

import math
from typing import Any

from retort.tracking.vocabulary import StudyAttr

RUN_ID = StudyAttr.RUN_ID

_PRUNING: type | None = None


def pruning_class() -> type:
    """retort's pruning callback (Lightning's ``optuna-integration`` one needs ``lightning.pytorch``): reports
    the metric each epoch and, when the pruner says so, stops the trainer; the run then ends normally.

    One instance follows a trial through its seeds, one fit after another. Each seed's curve is its running
    best of the metric per epoch. At epoch ``e`` of the trial's seed ``i`` (0-based) the pruner gets, at step
    ``i * max_epochs + e`` (the epochs the trial has trained), the mean over seeds ``0..i`` of each seed's
    running best at epoch ``e`` (a seed that stopped earlier counts with its last value). With one seed that is
    the running best at step ``e``; at the end of seed ``i``, the mean of the finished seeds' values. Trials
    are compared at equal steps, so on equal seeds and epochs. Under DDP only rank zero holds the trial (the
    others get ``trial=None``) and shares each epoch's decision."""
    global _PRUNING
    if _PRUNING is not None:
        return _PRUNING
    import statistics

    import pytorch_lightning as pl

    from retort.recipes.hooks import LoopCallback, RunId

    class Pruning(LoopCallback):
        def __init__(self, trial: Any, metric: str, maximize: bool, max_epochs: int = 1, seeds: int = 1):
            self.trial, self.metric, self.maximize = trial, metric, maximize
            self.max_epochs, self.seeds = max_epochs, seeds
            self.curves: list[list[tuple[int, float]]] = []  # per seed run so far: (epoch, running best)
            self.pruned_at: str | None = None  # where: "epoch 3", with seeds "epoch 3 of seed 1 (step 13)"
            self.reported: float | None = None  # the last value the pruner got
            self.bad: float | None = None   # a non-finite value at the last epoch
            self.run_id: str | None = None  # the trial's run (with seeds: their parent run, set by the worker)

        @property
        def values(self) -> list[float]:
            """Each seed's value so far: its best epoch's value of the metric."""
            return [curve[-1][1] for curve in self.curves if curve]

        @property
        def best(self) -> float | None:
            """The trial's value: the mean of :attr:`values`."""
            return statistics.fmean(self.values) if self.values else None

        def on_fit_start(self, trainer: pl.Trainer, m: Any) -> None:
            self.curves.append([])
            self.bad = None
            if self.seeds > 1:
                return
            for cb in trainer.callbacks:
                if isinstance(cb, RunId) and cb.run_id:  # the Optuna trial records its MLflow run at once
                    self.run_id = cb.run_id
                    if self.trial is not None:
                        self.trial.set_user_attr(RUN_ID, cb.run_id)

        def on_train_epoch_end(self, trainer: pl.Trainer, m: Any) -> None:
            where = self._decide(trainer, m) if self.trial is not None else None
            if trainer.world_size > 1:  # DDP: rank zero decides, every rank stops at the same epoch (ranks.py)
                where = trainer.strategy.broadcast(where, src=0)
            if where is not None:
                # never raise inside fit: Lightning would close the run as failed (PITFALLS)
                self.pruned_at = where
                trainer.should_stop = True

        def _decide(self, trainer: pl.Trainer, m: Any) -> str | None:
            """Report this epoch to the trial; where it is pruned, or None."""
            value = m.epoch_summary().get(self.metric)
            if value is None:
                return None
            if not math.isfinite(value):
                self.bad = float(value)  # the loop fails a non-finite training loss; the pruner never sees it
                return None
            value, self.bad = float(value), None
            curve, epoch = self.curves[-1], trainer.current_epoch + 1
            if curve and not (value > curve[-1][1] if self.maximize else value < curve[-1][1]):
                value = curve[-1][1]
            curve.append((epoch, value))
            at = [next((v for e, v in reversed(c) if e <= epoch), None) for c in self.curves]
            mean = statistics.fmean(v for v in at if v is not None)
            step = (len(self.curves) - 1) * self.max_epochs + epoch
            self.trial.report(mean, step)  # the running best: a curve the pruner can rank early
            self.reported = mean
            if not self.trial.should_prune():
                return None
            return f"epoch {epoch}" if self.seeds == 1 else \
                f"epoch {epoch} of seed {len(self.curves)} of {self.seeds} (step {step})"

    _PRUNING = Pruning
    return Pruning
