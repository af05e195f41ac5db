"""The loop's contract: which events happen, in which order, and who acts on each.

One fit of a recipe, as Lightning drives it (``tests/test_events.py`` runs a real fit and checks this
order against the hooks Lightning actually calls)::

    FIT_START                      Recorder: the run id on every rank; throughput: FLOPs counted once
    TRAIN_START                    Interruption: arms the signal guard (SIGINT/SIGTERM stop at a batch edge)
    for epoch in 1:max_epochs
        EPOCH_START                module: a new epoch's order of batches (seed + epoch), step losses cleared
        for (x, y) in train_loader
            BATCH_START            Interruption: a signal seen here saves last.ckpt and stops
            (training_step)        module: forward, loss, backward (accumulated), clip, update, schedule
            BATCH_END              module: keeps the detached loss; the live bar; telemetry's clock
        VALIDATION_END             module: val/loss and val/<metric> over the validation split
        EPOCH_END                  plain callbacks first: Recorder writes the epoch's values, the epoch line
                                   prints, BestWeights keeps the best state, the sweep's pruning reports;
                                   then the module (train/loss_epoch into callback_metrics, an epoch-interval
                                   schedule steps, a non-finite average fails the run); then the callback
                                   plugins that monitor a value (early stopping, checkpoints)
    TRAIN_END                      Interruption: disarms
    TEST_END                       module: test/loss and test/<metric> with the best epoch's weights

**The one channel.** Per-epoch values reach every consumer through
:meth:`retort.recipes.module.RecipeModule.epoch_summary`: ``{"train/loss_epoch": ..., "val/loss": ...,
"val/<metric>": ...}`` for the current epoch, computed once (one reduction over ranks) and cached. The
recorder, the epoch line, the best weights and the sweep's pruning call it in EPOCH_END; callback plugins
read the same values from ``trainer.callback_metrics``, which the module fills from it.
"""

from __future__ import annotations

from enum import Enum


class Event(Enum):
    """The loop's events in the order they happen; each value is the Lightning hook that carries it."""

    FIT_START = "on_fit_start"
    TRAIN_START = "on_train_start"
    EPOCH_START = "on_train_epoch_start"
    BATCH_START = "on_train_batch_start"
    BATCH_END = "on_train_batch_end"
    VALIDATION_END = "on_validation_epoch_end"
    EPOCH_END = "on_train_epoch_end"
    TRAIN_END = "on_train_end"
    TEST_END = "on_test_epoch_end"


def expected(epochs: int, batches: int, *, validate: bool = True, test: bool = True) -> list[Event]:
    """The sequence of events of a fit of ``epochs`` epochs of ``batches`` batches, then a test."""
    out = [Event.FIT_START, Event.TRAIN_START]
    for _ in range(epochs):
        out.append(Event.EPOCH_START)
        out += [Event.BATCH_START, Event.BATCH_END] * batches
        if validate:
            out.append(Event.VALIDATION_END)
        out.append(Event.EPOCH_END)
    out.append(Event.TRAIN_END)
    if test:
        out.append(Event.TEST_END)
    return out
