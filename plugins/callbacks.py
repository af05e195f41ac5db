"""Built-in callbacks: stopping rules, checkpoints and monitors, as Lightning callbacks.

Monitors read ``trainer.callback_metrics`` (``train/loss_epoch``, ``val/loss``, ``val/<metric>``). Callbacks
that record values (learning rate, gradient norm) append them to the module's ``history`` through
``pl_module.record(key, value, step)``; the recorder writes them to MLflow at the epoch's end.
"""

from __future__ import annotations

import gc
import math
import time
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from retort.plugins import PluginError, register


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


def _monitor_value(trainer: pl.Trainer, monitor: str) -> float | None:
    value = trainer.callback_metrics.get(monitor)
    return None if value is None else float(value)


class FluxEarlyStopping(pl.Callback):
    """Flux's ``early_stopping``: an epoch counts against patience when the score does not beat the best
    by ``min_delta``; an equal score counts as improvement (Lightning's does not)."""

    def __init__(self, monitor: str, patience: int, min_delta: float, mode: str):
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.best = math.inf if mode == "min" else -math.inf
        self.count = 0
        self.stopped_epoch: int | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        score = _monitor_value(trainer, self.monitor)
        if score is None:
            return
        delta = (self.best - score) if self.mode == "min" else (score - self.best)
        if delta >= 0:
            self.best = score
        self.count = self.count + 1 if delta < self.min_delta else 0
        if self.count >= self.patience:
            self.stopped_epoch = trainer.current_epoch
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.count = state["best"], state["count"]


@register("callback", "early_stopping")
def early_stopping(*, monitor: str = "val/loss", patience: int = 5, min_delta: float = 0.0,
                   mode: Literal["min", "max"] = "min",
                   semantics: Literal["lightning", "flux"] = "lightning") -> pl.Callback:
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs (Lightning or Flux rule)."""
    if patience < 1:
        raise PluginError(f"patience must be at least 1, got {patience}", field="patience")
    if min_delta < 0:
        raise PluginError(f"min_delta must be >= 0, got {min_delta}", field="min_delta")
    if semantics == "flux":
        return FluxEarlyStopping(monitor, patience, min_delta, mode)
    return EarlyStopping(monitor=monitor, patience=patience, min_delta=min_delta, mode=mode,
                         check_on_train_epoch_end=True, verbose=False)


class Plateau(pl.Callback):
    """Flux's ``plateau``: stop after `width` consecutive epochs whose value moved at most `min_dist`."""

    def __init__(self, monitor: str, width: int, min_dist: float):
        self.monitor, self.width, self.min_dist = monitor, width, min_dist
        self.last: float | None = None
        self.count = 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        score = _monitor_value(trainer, self.monitor)
        if score is None:
            return
        if self.last is not None:
            self.count = self.count + 1 if abs(self.last - score) <= self.min_dist else 0
        self.last = score
        if self.count >= self.width:
            trainer.should_stop = True


@register("callback", "plateau")
def plateau(*, monitor: str = "val/loss", width: int = 5, min_dist: float = 1e-6) -> pl.Callback:
    """Stop once `monitor` changed by at most `min_dist` for `width` epochs in a row (Flux plateau)."""
    if width < 1:
        raise PluginError(f"width must be at least 1, got {width}", field="width")
    return Plateau(monitor, width, min_dist)


class StopOnNonFinite(pl.Callback):
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            raise NonFiniteLoss(f"training loss is {float(loss)} at epoch {trainer.current_epoch + 1}, "
                                f"batch {batch_idx + 1}")


@register("callback", "stop_on_nan")
def stop_on_nan() -> pl.Callback:
    """Fail the run at the first NaN/inf batch loss, naming its epoch and batch (one check per step)."""
    return StopOnNonFinite()


class PrintLoss(pl.Callback):
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        print(f"epoch {trainer.current_epoch + 1}  batch {batch_idx + 1}  loss {float(loss):.4f}", flush=True)


@register("callback", "print_loss")
def print_loss() -> pl.Callback:
    """Print every batch's loss (wrap it in `throttle` to print every few seconds)."""
    return PrintLoss()


class Throttle(pl.Callback):
    def __init__(self, inner: pl.Callback, seconds: float):
        self.inner, self.seconds = inner, seconds
        self._last = -math.inf

    def on_train_batch_end(self, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self._last = now
            self.inner.on_train_batch_end(*args)


@register("callback", "throttle")
def throttle(*, seconds: float = 10.0, callback: str | dict[str, Any] = "print_loss") -> pl.Callback:
    """Run another callback's per-batch hook at most once every `seconds` (Flux `throttle(f, s)`)."""
    from retort.plugins import build

    if seconds <= 0:
        raise PluginError(f"seconds must be > 0, got {seconds}", field="seconds")
    try:
        inner = build("callback", callback)
    except PluginError as exc:
        raise PluginError(str(exc), field="callback") from None
    return Throttle(inner, seconds)


@register("callback", "checkpoint")
def checkpoint(*, monitor: str = "val/loss", mode: Literal["min", "max"] = "min", save_top_k: int = 1,
               save_last: bool = False, every_n_epochs: int = 1) -> pl.Callback:
    """Keep the `save_top_k` best checkpoints by `monitor` (Lightning ModelCheckpoint, Flux Checkpointer)."""
    if every_n_epochs < 1:
        raise PluginError(f"every_n_epochs must be at least 1, got {every_n_epochs}", field="every_n_epochs")
    return ModelCheckpoint(monitor=monitor, mode=mode, save_top_k=save_top_k, save_last=save_last,
                           every_n_epochs=every_n_epochs, filename="epoch{epoch}", auto_insert_metric_name=False)


class LrMonitor(pl.Callback):
    def __init__(self, interval: str):
        self.interval = interval

    def _record(self, trainer: pl.Trainer, pl_module: Any, step: int) -> None:
        for i, opt in enumerate(trainer.optimizers):
            for j, group in enumerate(opt.param_groups):
                suffix = "" if (i, j) == (0, 0) else f"/{i}.{j}"
                pl_module.record(f"lr{suffix}", float(group["lr"]), step)
                if "momentum" in group:
                    pl_module.record(f"momentum{suffix}", float(group["momentum"]), step)
                elif "betas" in group:
                    pl_module.record(f"beta1{suffix}", float(group["betas"][0]), step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.interval == "step":
            self._record(trainer, pl_module, pl_module.batches_seen + 1)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.interval == "epoch":
            self._record(trainer, pl_module, trainer.current_epoch + 1)


@register("callback", "lr_monitor")
def lr_monitor(*, interval: Literal["step", "epoch"] = "epoch") -> pl.Callback:
    """Record every param group's learning rate and momentum/beta1 per step or epoch."""
    return LrMonitor(interval)


class GradNorm(pl.Callback):
    def __init__(self, norm_type: float, every_n_steps: int):
        self.norm_type, self.every = norm_type, every_n_steps

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        step = pl_module.batches_seen
        if step % self.every:
            return
        grads = [p.grad.detach() for p in pl_module.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, self.norm_type)
                                                         for g in grads]), self.norm_type)
            pl_module.record("train/grad_norm", norm, step)


@register("callback", "grad_norm")
def grad_norm(*, norm_type: float = 2.0, every_n_steps: int = 1) -> pl.Callback:
    """Record the global gradient norm (before clipping) as train/grad_norm every n steps."""
    if every_n_steps < 1:
        raise PluginError(f"every_n_steps must be at least 1, got {every_n_steps}", field="every_n_steps")
    return GradNorm(norm_type, every_n_steps)


class GarbageCollect(pl.Callback):
    def __init__(self, every_n_epochs: int):
        self.every = every_n_epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every == 0:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


@register("callback", "garbage_collect")
def garbage_collect(*, every_n_epochs: int = 1) -> pl.Callback:
    """Run Python's garbage collector (and empty the CUDA cache) every n epochs (FluxTraining GarbageCollect)."""
    if every_n_epochs < 1:
        raise PluginError(f"every_n_epochs must be at least 1, got {every_n_epochs}", field="every_n_epochs")
    return GarbageCollect(every_n_epochs)
