"""System metrics sampled during a run: CPU, memory, and utilization, memory and power of the run's own GPUs.

A daemon thread takes a sample at the start, every ``interval`` seconds, and at the end, and hands the
values to the run's buffered record under MLflow's ``system/`` names (the MLflow UI shows them in its
System Metrics tab). MLflow's own monitor publishes nothing for runs shorter than its interval and
queries the run at every sample; this one costs the training loop nothing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any


def sample(gpus: Any = None) -> dict[str, float]:
    """One reading of this machine and this process, and of ``gpus`` (a :class:`telemetry.GpuReader`)."""
    import psutil

    vm = psutil.virtual_memory()
    proc = psutil.Process()
    values = {
        "system/cpu_utilization_percentage": psutil.cpu_percent(interval=None),
        "system/system_memory_usage_megabytes": (vm.total - vm.available) / 2**20,
        "system/system_memory_usage_percentage": vm.percent,
        "system/process_memory_rss_megabytes": proc.memory_info().rss / 2**20,
    }
    if gpus is not None:
        values.update(_gpu_sample(gpus))
    return values


def _gpu_sample(gpus: Any) -> dict[str, float]:
    """This run's GPUs only: through NVML where it is installed, else the memory torch sees."""
    import torch

    if gpus.available:
        return {f"system/gpu_{i}_{k}": v for i, reading in gpus.read().items() for k, v in reading.items()}
    out: dict[str, float] = {}
    for i in gpus.indices:
        with contextlib.suppress(Exception):
            free, total = torch.cuda.mem_get_info(i)
            out[f"system/gpu_{i}_memory_usage_megabytes"] = (total - free) / 2**20
            out[f"system/gpu_{i}_memory_usage_percentage"] = 100 * (total - free) / total
    return out


class SystemMonitor:
    """Samples into ``record`` (a :class:`tracking.record.RunRecord`) until :meth:`stop`."""

    def __init__(self, record: Any, interval: float = 10.0):
        self.record, self.interval = record, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retort-system-metrics", daemon=True)
        self._step = 0
        self._start = time.monotonic()
        self.gpus: Any = None  # the run's GPUs, set once the trainer knows them

    def start(self) -> SystemMonitor:
        import psutil

        psutil.cpu_percent(interval=None)  # the first reading primes the counter
        self._thread.start()
        return self

    def _take(self) -> None:
        self._step += 1
        self.record.log(sample(self.gpus), step=self._step)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def stop(self) -> None:
        """Take a last sample (so every run has at least one) and end the thread."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._take()
