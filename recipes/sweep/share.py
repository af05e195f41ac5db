"""What each sweep worker may use of what it shares with others: CPU threads, and GPU memory when trials pack.

Workers on one machine divide its CPU threads evenly (``cpus // k``, the remainder to the first workers),
set as torch's thread count before their first trial (a lone worker keeps torch's default; a recipe's
``trainer.threads`` wins over either). Workers packed on one GPU (``--trials-per-gpu`` above
1) divide its memory: each gets ``--gpu-memory`` on each of its GPUs, or by default an even share of
what is left once every sharer's CUDA context is set aside (:data:`CONTEXT` each). The budget is enforced in
the worker with ``torch.cuda.set_per_process_memory_fraction``, so a trial over it fails with an
out-of-memory error of its own (its trial becomes the sampler's constraint, :mod:`.memory`) instead of
taking a neighbour's memory. Budgets the device cannot hold are refused before anything is recorded; the
device's size is read through NVML, which leaves CUDA uninitialized in the parent (worker 0 is placed later).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from retort.plugins.errors import RecipeError

GIB = 2**30
#: Device memory a CUDA process holds outside torch's allocator (context, kernel images, library handles),
#: set aside per sharer when budgets are checked and the default share computed.
CONTEXT = GIB


@dataclass(frozen=True)
class Share:
    threads: int | None            # torch CPU threads (None: torch's default, for a lone worker)
    sharers: int = 1               # workers on this worker's GPU (or group of GPUs); 1 on the CPU
    gpu_memory: int | None = None  # bytes on each of its GPUs (--gpu-memory); None: an even share when packed


def threads(cpus: int, workers: int) -> list[int | None]:
    """An even split of ``cpus`` threads over ``workers``, at least one each: ``threads(16, 3) == [6, 5, 5]``;
    ``[None]`` for one worker (torch's default: physical cores, where ``cpus`` counts hyperthreads)."""
    if workers == 1:
        return [None]
    return [max(1, cpus // workers + (i < cpus % workers)) for i in range(workers)]


def gib(value: float) -> str:
    return f"{value / GIB:.4g} GiB"


def device_memory(devices: Sequence[str]) -> dict[str, int]:
    """Total memory of each device (a CUDA index or UUID, as placement names them), read through NVML.

    Raises :class:`RecipeError` (``--gpu-memory``) when NVML cannot read one: no driver, no such GPU."""
    import os

    try:
        import pynvml

        pynvml.nvmlInit()
        everyone = [pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total
                    for i in range(pynvml.nvmlDeviceGetCount())]
        sizes = {}
        for d in devices:
            if d.isdigit() and len(set(everyone)) > 1 and os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
                sizes[d] = min(everyone)  # CUDA's index order may not be NVML's on unlike GPUs: the smallest holds
                continue
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(d)) if d.isdigit() else pynvml.nvmlDeviceGetHandleByUUID(d)
            sizes[d] = pynvml.nvmlDeviceGetMemoryInfo(handle).total
        return sizes
    except Exception as exc:  # not installed, no driver, no such device
        raise RecipeError(f"cannot read the memory of GPU {','.join(devices)} ({type(exc).__name__}: {exc}); "
                          "a memory budget needs an NVIDIA GPU", field="--gpu-memory") from None


def shares(workers: int, places: Sequence[str], cpus: int, gpu_memory: int | None = None,
           memory: Mapping[str, int] | None = None) -> list[Share]:
    """Each of ``workers``' share, worker 0 first; ``places`` as :func:`.placement.assign` gave them (``[]``: no
    GPU), ``gpu_memory`` in bytes, ``memory`` each device's bytes (read with :func:`device_memory` when not
    given). Raises :class:`RecipeError` when the budgets do not fit, or there is no GPU to budget."""
    split = threads(cpus, workers)
    if gpu_memory is not None and gpu_memory < 2**20:  # a bare number is bytes: 20 meant 20GiB
        raise RecipeError(f"{gpu_memory} bytes is less than a MiB; give a unit, e.g. 20GiB", field="--gpu-memory")
    if not places:
        if gpu_memory is not None:
            raise RecipeError("no GPU here to budget (no --devices, CUDA_VISIBLE_DEVICES or GPU found); on the CPU "
                              "workers share the threads: leave it out", field="--gpu-memory")
        return [Share(t) for t in split]
    if gpu_memory is None:
        return [Share(t, places.count(p)) for t, p in zip(split, places)]
    budget = gpu_memory
    memory = memory if memory is not None else device_memory(sorted({d for p in places for d in p.split(",")}))
    for place in dict.fromkeys(places):
        n = places.count(place)
        size = min(memory[d] for d in place.split(","))
        if n * (budget + CONTEXT) > size:
            most = (size - n * CONTEXT) / n
            raise RecipeError(f"GPU {place} ({gib(size)}) cannot hold {n} worker{'s' * (n > 1)} at {gib(budget)} "
                              f"each plus {gib(CONTEXT)} each for CUDA's own; at most {gib(max(0, most))} each, or "
                              "fewer --trials-per-gpu", field="--gpu-memory")
    return [Share(t, places.count(p), budget) for t, p in zip(split, places)]


def apply(share: Share, devices: Sequence[int] | None = None) -> dict[str, str]:
    """In the worker, before its first trial: torch's thread count, and on CUDA the memory budget on each GPU
    it sees (``devices``: only those, as a DDP rank uses one). Returns the tags every trial's run gets
    (``retort.gpu_memory`` only where a budget is set)."""
    import torch

    from retort.tracking.vocabulary import Tag

    if share.threads is not None:
        torch.set_num_threads(share.threads)
    tags = {Tag.THREADS: str(torch.get_num_threads())}
    if (share.sharers > 1 or share.gpu_memory is not None) and torch.cuda.is_available():
        for i in range(torch.cuda.device_count()) if devices is None else devices:
            total = torch.cuda.get_device_properties(i).total_memory
            budget = share.gpu_memory or (total - share.sharers * CONTEXT) // share.sharers
            torch.cuda.set_per_process_memory_fraction(min(1.0, max(0.0, budget / total)), i)
        tags[Tag.GPU_MEMORY] = f"{gib(budget)} of {gib(total)}, shared by {share.sharers}"
    return tags


def release() -> None:
    """Lift this process's memory budget (worker 0 is the sweep's own process, which may go on after it)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            torch.cuda.set_per_process_memory_fraction(1.0, i)
