"""How fast each epoch trained and how well it used the hardware, recorded per epoch (step = epoch).

``perf/samples_per_second`` (and ``perf/tokens_per_second`` for integer token inputs), ``perf/step_seconds``,
``perf/data_wait_fraction`` (the share of the epoch's training time spent between one step's end and the
next step's start: fetching the batch and moving it to the device), ``perf/peak_memory_megabytes`` (CUDA),
``perf/mfu`` (where the device's peak is known), ``perf/loss_scale`` and ``perf/loss_scale_overflows``
(16-mixed), and once ``perf/compile_seconds`` (torch.compile, kept out of the throughput figures).

Per step it costs two clock readings: no device synchronisation (one per epoch, at its last batch) and no
call into the record. Under DDP every rank measures its own and rank zero records the sums (samples) and
the means (the rest) over ranks, and each rank's GPU readings under ``system/rank<r>/``, with the tag
``retort.rank<r>.device`` naming its node and device.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytorch_lightning as pl
import torch

from retort.recipes.hooks import LoopCallback


def _compile_seconds() -> float:
    """Seconds torch.compile has spent in this process (dynamo's own clock; 0 where it has none)."""
    try:
        from torch._dynamo.utils import calculate_time_spent, compilation_time_metrics

        backward = sum(compilation_time_metrics.get("backward._backward_impl", []))
        return float(calculate_time_spent().get("total_wall_time", 0.0)) + backward
    except Exception:
        return 0.0


class Throughput(LoopCallback):
    """Measures each training epoch; writes ``perf/*`` into ``record`` (None on ranks other than zero)."""

    def __init__(self, record: Any, *, peak_tflops: float | None = None, compiled: bool = False,
                 tf32: bool = False, monitor: Any = None):
        self.record, self.peak_tflops, self.compiled, self.tf32 = record, peak_tflops, compiled, tf32
        self.monitor = monitor  # the run's SystemMonitor: told which GPUs are this run's
        self.flops: float | None = None
        self.tokens: int | None = None
        self.peak: float | None = None
        self.counted = False
        self.gpus: Any = None
        self.cuda = False
        self.scaler: Any = None
        self._compile_start = 0.0
        self._compile_reported = False
        self._scales: list[torch.Tensor] = []
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.start = self.last_end = now
        self.wait = 0.0
        self.steps = self.samples = 0
        self.step_times: list[float] = []

    # --- set-up ------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, m: Any) -> None:
        from retort.tracking.telemetry import GpuReader, gpu_tags, number_format, peak_flops
        from retort.tracking.vocabulary import Tag

        device = trainer.strategy.root_device
        self.cuda = device.type == "cuda"
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # 16-mixed: its scale, read each step
        self.scaler = scaler if getattr(scaler, "_scale", False) is not False else None
        indices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        self.gpus = GpuReader(indices)
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            self.peak = peak_flops(name, number_format(str(trainer.precision), self.tf32), self.peak_tflops)
        elif self.peak_tflops is not None:
            self.peak = self.peak_tflops * 1e12
        tags = gpu_tags(indices)
        if trainer.world_size > 1:
            import socket

            where = f"node {trainer.node_rank} ({socket.gethostname()}) {device}"
            if device.type == "cuda":
                where += f" {torch.cuda.get_device_name(device)}"
            names = trainer.strategy.all_gather_object(where) if hasattr(trainer.strategy, "all_gather_object") \
                else _all_gather_object(where)
            tags.update({f"retort.rank{r}.device": w for r, w in enumerate(names)})
            if device.type == "cuda":
                tags[Tag.GPU_COUNT] = str(trainer.world_size)
        if self.record is not None:
            self.record.set_tags(tags)
            if self.monitor is not None:
                self.monitor.gpus = self.gpus
        self._compile_start = _compile_seconds()

    # --- per step: two clock readings ------------------------------------------------------------

    def on_train_epoch_start(self, trainer: pl.Trainer, m: Any) -> None:
        self._reset(time.perf_counter())
        self._scales = []

    def on_train_batch_start(self, trainer: pl.Trainer, m: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self.wait += now - self.last_end
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        self.samples += len(x)
        if not self.counted:
            self.counted = True
            from retort.tracking.telemetry import flops_per_step, tokens_per_sample

            self.flops = flops_per_step(getattr(m, "net", m), x) if self.peak is not None else None
            self.tokens = tokens_per_sample(x)
            counting, now = now, time.perf_counter()
            self.start += now - counting  # counting is set-up, not training
        self.step_start = now

    def on_train_batch_end(self, trainer: pl.Trainer, m: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.cuda and batch_idx + 1 == trainer.num_training_batches:
            torch.cuda.synchronize()  # once an epoch: the epoch's time is the device's, not the queue's
        now = time.perf_counter()
        self.step_times.append(now - self.step_start)
        self.last_end = now
        self.steps += 1
        if self.scaler is not None and self.scaler._scale is not None:  # a copy on the device: no sync
            self._scales.append(self.scaler._scale.detach().clone())

    # --- per epoch -------------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: pl.Trainer, m: Any) -> None:
        if not self.steps:
            return
        compile_s, excess = 0.0, 0.0
        if self.compiled and not self._compile_reported:
            # the first epoch's steps that compiled (the first, and one per new batch shape) are set-up: they
            # are taken out at the epoch's median step time, and dynamo's clock (validation's compiling too)
            # is reported apart
            steady = statistics.median(self.step_times)
            excess = sum(max(0.0, t - steady) for t in self.step_times)
            compile_s = max(_compile_seconds() - self._compile_start, excess)
            self._compile_reported = True
        seconds = max(self.last_end - self.start - excess, 1e-9)
        mem = torch.cuda.max_memory_allocated(trainer.strategy.root_device) / 2**20 \
            if trainer.strategy.root_device.type == "cuda" else float("nan")
        readings = self.gpus.read() if self.gpus is not None and self.gpus.available else {}
        gpu = next(iter(readings.values()), {})
        row = [float(self.samples), seconds, self.wait, float(self.steps), mem,
               gpu.get("utilization_percentage", float("nan")), gpu.get("memory_usage_megabytes", float("nan")),
               gpu.get("power_watts", float("nan"))]
        rows = [row]
        if trainer.world_size > 1:
            gathered = trainer.strategy.all_gather(torch.tensor(row, dtype=torch.float64,
                                                                device=trainer.strategy.root_device))
            rows = gathered.reshape(trainer.world_size, len(row)).tolist()
        if self.record is None:
            return
        values = self._figures(rows)
        if compile_s:
            values["perf/compile_seconds"] = compile_s
        if self._scales:
            scales = torch.stack(self._scales).float().cpu()
            values["perf/loss_scale"] = float(scales[-1])
            values["perf/loss_scale_overflows"] = float((scales[1:] < scales[:-1]).sum())
        if len(rows) > 1:
            for r, rank_row in enumerate(rows):
                for key, value in zip(("utilization_percentage", "memory_usage_megabytes", "power_watts"),
                                      rank_row[5:]):
                    if value == value:  # not NaN
                        values[f"system/rank{r}/gpu_{key}"] = value
        self.record.log({k: v for k, v in values.items() if v == v}, step=trainer.current_epoch + 1)

    def _figures(self, rows: list[list[float]]) -> dict[str, float]:
        n = len(rows)
        samples_per_s = sum(r[0] / r[1] for r in rows)  # every rank trains its own share at once
        step_s = sum(r[1] / r[3] for r in rows) / n
        values = {
            "perf/samples_per_second": samples_per_s,
            "perf/step_seconds": step_s,
            "perf/data_wait_fraction": sum(r[2] / r[1] for r in rows) / n,
            "perf/peak_memory_megabytes": max(r[4] for r in rows),
        }
        if self.tokens is not None:
            values["perf/tokens_per_second"] = samples_per_s * self.tokens
        if self.flops is not None and self.peak:
            values["perf/mfu"] = self.flops / step_s / self.peak
        return values


def _all_gather_object(obj: Any) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
