"""System metrics sampled during a run: CPU, memory, and per-GPU utilization and memory where GPUs exist.

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


def sample() -> dict[str, float]:
    """One reading of this machine and this process."""
    import psutil

    vm = psutil.virtual_memory()
    proc = psutil.Process()
    values = {
        "system/cpu_utilization_percentage": psutil.cpu_percent(interval=None),
        "system/system_memory_usage_megabytes": (vm.total - vm.available) / 2**20,
        "system/system_memory_usage_percentage": vm.percent,
        "system/process_memory_rss_megabytes": proc.memory_info().rss / 2**20,
    }
    values.update(_gpu_sample())
    return values


def _gpu_sample() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available():
        return {}
    out: dict[str, float] = {}
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out[f"system/gpu_{i}_memory_usage_megabytes"] = (total - free) / 2**20
        out[f"system/gpu_{i}_memory_usage_percentage"] = 100 * (total - free) / total
        with contextlib.suppress(Exception):  # needs nvidia-ml-py
            out[f"system/gpu_{i}_utilization_percentage"] = float(torch.cuda.utilization(i))
    return out


class SystemMonitor:
    """Samples into ``record`` (a :class:`tracking.record.RunRecord`) until :meth:`stop`."""

    def __init__(self, record: Any, interval: float = 10.0):
        self.record, self.interval = record, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retort-system-metrics", daemon=True)
        self._step = 0
        self._start = time.monotonic()

    def start(self) -> SystemMonitor:
        import psutil

        psutil.cpu_percent(interval=None)  # the first reading primes the counter
        self._thread.start()
        return self

    def _take(self) -> None:
        self._step += 1
        self.record.log(sample(), step=self._step)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def stop(self) -> None:
        """Take a last sample (so every run has at least one) and end the thread."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._take()
