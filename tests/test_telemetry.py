"""How well a run used the hardware: FLOPs counted exactly, the peak table, and the perf/* record on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retort import recipes
from retort.recipes.runner import build
from retort.tracking.telemetry import GpuReader, flops_per_step, number_format, peak_flops, tokens_per_sample
from tests.test_run import history, tiny

# MLP 64-32-10 on a batch of 64: forward 2·64·(64·32 + 32·10); backward the weight gradients (as much again)
# and the input gradient of the second layer only (nothing asks for the input's)
MLP_FLOPS = 2 * 64 * (64 * 32 + 32 * 10) * 2 + 2 * 64 * 32 * 10


def test_flops_per_step_counts_forward_and_backward_without_touching_the_run():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
    x = torch.randn(64, 64)
    rng, stats = torch.get_rng_state(), model[1].running_mean.clone()
    assert flops_per_step(model, x) == MLP_FLOPS
    assert torch.equal(torch.get_rng_state(), rng)  # dropout on meta tensors drew nothing that stays drawn
    assert torch.equal(model[1].running_mean, stats) and model[0].weight.grad is None


@pytest.mark.parametrize(("name", "fmt", "tflops"), [
    ("NVIDIA H200", "bf16", 989.0), ("NVIDIA H100 PCIe", "bf16", 756.0), ("NVIDIA H100 80GB HBM3", "tf32", 494.7),
    ("NVIDIA A100-SXM4-80GB", "fp32", 19.5), ("NVIDIA L4", "fp16", 121.0), ("NVIDIA L40S", "bf16", 362.0),
    ("NVIDIA GeForce RTX 4090", "bf16", 165.2),
])
def test_peak_flops_from_the_table(name, fmt, tflops):
    assert peak_flops(name, fmt) == pytest.approx(tflops * 1e12)


def test_peak_flops_unknown_or_overridden():
    assert peak_flops("x86_64", "fp32") is None and peak_flops("NVIDIA H200", "fp64") is None
    assert peak_flops("x86_64", "fp32", override_tflops=2.5) == 2.5e12
    assert [number_format(p, tf32) for p, tf32 in [("bf16-mixed", False), ("16-mixed", False), ("32-true", True),
                                                   ("32-true", False), ("64-true", True)]] == \
        ["bf16", "fp16", "tf32", "fp32", "fp64"]


def test_tokens_only_for_integer_sequences():
    assert tokens_per_sample(torch.zeros(8, 128, dtype=torch.long)) == 128
    assert tokens_per_sample(torch.zeros(8, 64)) is None and tokens_per_sample(torch.zeros(8, dtype=torch.long)) is None


def test_no_gpu_reader_without_gpus():
    reader = GpuReader([])
    assert not reader.available and reader.read() == {}


def test_a_cpu_run_records_throughput_and_data_wait_per_epoch(client):
    r = tiny(tracking={"experiment": "tests", "peak_tflops": 1.0})
    result = recipes.run(r, quiet=True)
    samples = history(client, result.run_id, "perf/samples_per_second")
    step_s = history(client, result.run_id, "perf/step_seconds")
    assert [s for s, _ in samples] == [1, 2] == [s for s, _ in step_s]
    n_train = build(r).splits.info.n_train
    batches = -(-n_train // 64)
    for (_, per_s), (_, step) in zip(samples, step_s):
        assert per_s * step == pytest.approx(n_train / batches, rel=1e-9)
    for _, wait in history(client, result.run_id, "perf/data_wait_fraction"):
        assert 0 < wait < 1
    # MFU over the given peak: FLOPs of a batch of 64 per step time
    for (_, mfu), (_, step) in zip(history(client, result.run_id, "perf/mfu"), step_s):
        assert mfu * step * 1e12 == pytest.approx(MLP_FLOPS, rel=1e-9)
    metrics = client.get_run(result.run_id).data.metrics
    assert not any(k.startswith(("perf/peak_memory", "perf/tokens", "perf/compile", "perf/loss_scale", "system/gpu"))
                   for k in metrics)


def test_telemetry_off_records_no_perf_values(client):
    result = recipes.run(tiny(tracking={"experiment": "tests", "telemetry": False}), quiet=True)
    assert not any(k.startswith("perf/") for k in client.get_run(result.run_id).data.metrics)


def test_compile_keeps_the_state_dict_keys():
    plain = build(tiny()).module
    compiled = build(tiny(trainer={"max_epochs": 1, "accelerator": "cpu", "compile": True})).module
    assert plain.compiled_net is None and isinstance(compiled.compiled_net, torch._dynamo.eval_frame.OptimizedModule)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert compiled.compiled_net._orig_mod is compiled.net


def test_channels_last_converts_convolutions():
    r = tiny(model={"name": "cnn", "channels": [4, 8]}, trainer={"max_epochs": 1, "accelerator": "cpu",
                                                                "channels_last": True})
    conv = [m for m in build(r).module.net.modules() if isinstance(m, nn.Conv2d)][-1]  # 8x4x3x3
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
