"""The loop's contract (recipes/events.py) against the hooks Lightning really calls in a recorded run."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl

from retort import recipes
from retort.recipes.events import Event, expected


class Probe(pl.Callback):
    """Notes each event as it happens, and what the one channel holds at the end of each epoch."""

    def __init__(self) -> None:
        self.seen: list[Event] = []
        self.summaries: list[dict[str, float]] = []
        self.callback_metrics: list[dict[str, float]] = []

    def __getattribute__(self, name: str):
        events = {e.value: e for e in Event}
        if name in events:
            def note(trainer, module, *args, **kwargs):
                self.seen.append(events[name])
                if name == Event.EPOCH_END.value:
                    self.summaries.append(module.epoch_summary())
                if name in (Event.EPOCH_START.value, Event.TRAIN_END.value):  # after the last epoch's monitors
                    self.callback_metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})
            return note
        return super().__getattribute__(name)


def test_a_run_goes_through_the_events_in_the_documented_order(client):
    r = recipes.load("iris-rmsprop", ["trainer.max_epochs=2", "data.batch_size=32", "tracking.system_metrics=false"])
    probe = Probe()
    result = recipes.run(r, quiet=True, callbacks=[probe])
    batches = -(-result_train_rows(r) // 32)
    assert probe.seen == expected(2, batches)
    # the one channel: what every EPOCH_END consumer reads is what the recorder wrote, epoch by epoch
    assert [set(s) for s in probe.summaries] == [{"train/loss_epoch", "val/loss", "val/accuracy"}] * 2
    for key in ("train/loss_epoch", "val/loss", "val/accuracy"):
        history = sorted(client.get_metric_history(result.run_id, key), key=lambda m: m.step)
        assert [m.value for m in history] == pytest.approx([s[key] for s in probe.summaries], rel=1e-6)
    # monitors (early stopping, checkpoints, a plateau schedule) read the same values from callback_metrics
    assert probe.callback_metrics[0] == {}
    assert probe.callback_metrics[1:] == [pytest.approx(s, rel=1e-6) for s in probe.summaries]


def result_train_rows(r) -> int:
    from retort.recipes.runner import build

    return build(r).splits.info.n_train
