"""Where each sweep worker runs: the GPUs it sees, as its own ``CUDA_VISIBLE_DEVICES``.

Workers take devices round-robin over groups of ``gpus_per_trial`` devices (worker i on group i mod the
number of groups), so that the devices fill before any is shared; ``trials_per_gpu`` says how many workers
a group may hold. No devices (a machine without GPUs): no placement, nothing changes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from retort.plugins.errors import RecipeError

VISIBLE = "CUDA_VISIBLE_DEVICES"


def parse_devices(text: str, option: str = "--devices") -> list[str]:
    """``"0,1,3"`` (indices or GPU UUIDs, as CUDA reads them) -> ``["0", "1", "3"]``; ``""`` -> none."""
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if len(set(devices)) != len(devices):
        raise RecipeError(f"a device is named twice in {text!r}; name each once, e.g. 0,1,2,3", field=option)
    return devices


def visible_devices(explicit: str | None = None) -> list[str]:
    """The devices workers can be placed on: ``explicit`` (``--devices``), else this process's
    ``CUDA_VISIBLE_DEVICES`` (entries up to the first negative one, where CUDA stops reading), else
    ``torch.cuda.device_count()`` (it asks NVML and leaves CUDA uninitialized, so this process can still be
    placed)."""
    if explicit is not None:
        return parse_devices(explicit)
    env = os.environ.get(VISIBLE)
    if env is not None:
        devices = []
        for d in parse_devices(env, VISIBLE):
            if d.startswith("-"):
                break
            devices.append(d)
        return devices
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def assign(devices: Sequence[str], workers: int, gpus_per_trial: int = 1, trials_per_gpu: int = 1) -> list[str]:
    """Each worker's ``CUDA_VISIBLE_DEVICES`` value, worker 0 first; ``[]`` when there are no devices.

    Raises :class:`RecipeError` when the devices cannot hold the workers as asked."""
    if gpus_per_trial < 1:
        raise RecipeError(f"must be at least 1, got {gpus_per_trial}", field="--gpus-per-trial")
    if trials_per_gpu < 1:
        raise RecipeError(f"must be at least 1, got {trials_per_gpu}", field="--trials-per-gpu")
    if not devices:
        return []
    if gpus_per_trial > len(devices):
        raise RecipeError(f"{gpus_per_trial} asked, only {len(devices)} device(s) here ({','.join(devices)})",
                          field="--gpus-per-trial")
    groups = [",".join(devices[i:i + gpus_per_trial])
              for i in range(0, len(devices) - gpus_per_trial + 1, gpus_per_trial)]
    if workers > len(groups) * trials_per_gpu:
        raise RecipeError(f"{workers} workers, but {len(devices)} device(s) in groups of {gpus_per_trial} hold "
                          f"{len(groups) * trials_per_gpu} at --trials-per-gpu {trials_per_gpu}; raise "
                          f"--trials-per-gpu to {-(-workers // len(groups))} or lower --workers", field="--workers")
    return [groups[i % len(groups)] for i in range(workers)]


def describe(places: Sequence[str]) -> str:
    """``worker 0 on GPU 0, worker 1 on GPU 1``: the line printed once at the start of a sweep."""
    return ", ".join(f"worker {i} on GPU{'s' * (',' in p)} {p}" for i, p in enumerate(places))
