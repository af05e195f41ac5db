"""How well a run used its hardware: the device's peak FLOP rate, FLOPs per step, the GPUs' own readings.

Model FLOPs utilization (MFU) is ``FLOPs per step × steps per second / peak FLOP/s``. FLOPs per step are
counted once, with ``torch.utils.flop_counter``, on a forward and backward pass over *meta* tensors of a
batch's shape: nothing is computed and no memory used, and the random state is restored after (dropout
on meta tensors advances it), so counting changes nothing in the run. The peak comes from
:data:`PEAK_TFLOPS` (dense tensor-core figures from the vendors' data sheets, no sparsity) unless the
recipe gives ``tracking.peak_tflops``.

GPU readings (utilization, memory, power) come from NVIDIA's management library (``nvidia-ml-py``) for
the devices this process uses only, found by UUID so that ``CUDA_VISIBLE_DEVICES`` renumbering does not
point them at a neighbour's GPU.
"""

from __future__ import annotations

import contextlib
from typing import Any

#: Dense peak TFLOP/s per device by number format: (GPU name fragment, bf16/fp16, tf32, fp32). The first
#: fragment found in ``torch.cuda.get_device_name()`` wins, so specific names come before general ones.
PEAK_TFLOPS: tuple[tuple[str, float, float, float], ...] = (
    ("GH200", 989.0, 494.7, 66.9),
    ("H200", 989.0, 494.7, 66.9),
    ("H100 PCIe", 756.0, 378.0, 51.2),
    ("H100 NVL", 835.0, 417.5, 60.0),
    ("H100", 989.0, 494.7, 66.9),  # SXM
    ("H800", 989.0, 494.7, 66.9),
    ("B200", 2250.0, 1100.0, 80.0),
    ("A100", 312.0, 156.0, 19.5),
    ("A800", 312.0, 156.0, 19.5),
    ("L40S", 362.0, 183.0, 91.6),
    ("L40", 181.0, 90.5, 90.5),
    ("L4", 121.0, 60.0, 30.3),
    ("A10G", 70.0, 35.0, 31.2),
    ("A10", 125.0, 62.5, 31.2),
    ("RTX 6000 Ada", 364.0, 182.0, 91.1),
    ("A6000", 154.8, 77.4, 38.7),
    ("RTX 4090", 165.2, 82.6, 82.6),
    ("RTX 3090", 71.0, 35.6, 35.6),
    ("V100", 125.0, 15.7, 15.7),  # no bf16 or tf32: fp16 tensor cores, fp32 for the rest
    ("T4", 65.0, 8.1, 8.1),
)


def number_format(precision: str, tf32: bool) -> str:
    """The format the matmuls of a Lightning ``precision`` run in: bf16, fp16, tf32, fp32 or fp64."""
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    if precision.startswith("64"):
        return "fp64"
    return "tf32" if tf32 else "fp32"


def peak_flops(device_name: str, fmt: str, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device in ``fmt``, or None where unknown (CPUs, unlisted GPUs, fp64)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    column = {"bf16": 1, "fp16": 1, "tf32": 2, "fp32": 3}.get(fmt)
    if column is None:
        return None
    for row in PEAK_TFLOPS:
        if row[0].lower() in device_name.lower():
            return float(row[column]) * 1e12
    return None


def flops_per_step(model: Any, batch_x: Any) -> float | None:
    """FLOPs of one forward and backward pass of ``model`` on a batch shaped like ``batch_x`` (meta tensors).

    None when the model cannot run on meta tensors (a custom op without a meta kernel)."""
    import torch
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    try:
        params = {n: torch.empty_like(p, device="meta").requires_grad_(p.requires_grad)
                  for n, p in model.named_parameters()}
        buffers = {n: torch.empty_like(b, device="meta") for n, b in model.named_buffers()}
        x = torch.empty_like(batch_x, device="meta")
        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=cuda), FlopCounterMode(display=False) as counter:
            out = functional_call(model, {**params, **buffers}, (x,))
            out = out[0] if isinstance(out, (tuple, list)) else out
            if out.requires_grad:
                out.float().sum().backward()
        return float(counter.get_total_flops())
    except Exception:
        return None


def tokens_per_sample(batch_x: Any) -> int | None:
    """Tokens in one sample of a sequence model's input (integer ids of shape (N, T, ...)), else None."""
    import torch

    if batch_x.ndim >= 2 and not torch.is_floating_point(batch_x) and not torch.is_complex(batch_x):
        return int(batch_x[0].numel())
    return None


def _nvml() -> Any:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # not installed, or no driver
        return None


def gpu_tags(indices: list[int]) -> dict[str, str]:
    """Versions and models of the CUDA devices this process uses (CUDA indices as torch numbers them)."""
    import torch

    if not indices or not torch.cuda.is_available():
        return {}
    from retort.tracking.vocabulary import Tag

    names = [torch.cuda.get_device_name(i) for i in indices]
    tags = {Tag.CUDA_VERSION: str(torch.version.cuda), Tag.CUDNN_VERSION: str(torch.backends.cudnn.version()),
            Tag.GPU_MODEL: ", ".join(sorted(set(names))), Tag.GPU_COUNT: str(len(indices))}
    nvml = _nvml()
    if nvml is not None:
        with contextlib.suppress(Exception):
            driver = nvml.nvmlSystemGetDriverVersion()
            tags[Tag.GPU_DRIVER] = driver.decode() if isinstance(driver, bytes) else str(driver)
    return tags


class GpuReader:
    """Utilization (%), memory used (MB) and power (W) of given CUDA devices, read through NVML.

    ``available`` is False without ``nvidia-ml-py`` or a driver; :meth:`read` then returns nothing."""

    def __init__(self, indices: list[int]):
        self.indices = list(indices)
        self.handles: dict[int, Any] = {}
        self.nvml = _nvml() if indices else None
        if self.nvml is not None:
            for i in self.indices:
                handle = self._handle(i)
                if handle is not None:
                    self.handles[i] = handle

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def _handle(self, index: int) -> Any:
        import torch

        nvml = self.nvml
        props = torch.cuda.get_device_properties(index)
        with contextlib.suppress(Exception):
            uuid = str(props.uuid)
            return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        with contextlib.suppress(Exception):
            bus = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
            return nvml.nvmlDeviceGetHandleByPciBusId(bus)
        return None

    def read(self) -> dict[int, dict[str, float]]:
        """CUDA index -> {utilization_percentage, memory_usage_megabytes, power_watts}."""
        nvml, out = self.nvml, {}
        for i, h in self.handles.items():
            values: dict[str, float] = {}
            with contextlib.suppress(Exception):
                values["utilization_percentage"] = float(nvml.nvmlDeviceGetUtilizationRates(h).gpu)
            with contextlib.suppress(Exception):
                values["memory_usage_megabytes"] = nvml.nvmlDeviceGetMemoryInfo(h).used / 2**20
            with contextlib.suppress(Exception):
                values["power_watts"] = nvml.nvmlDeviceGetPowerUsage(h) / 1000.0
            out[i] = values
        return out
