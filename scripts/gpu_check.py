"""One short check of retort on a GPU: a recipe with bf16 and torch.compile against a hand-written loop with
the same precision and compile, the telemetry's own cost, 16-mixed loss scaling, and the GPU record.

    scripts/gpu-check                 # a few minutes on one GPU; on a machine without one, the CPU parts
    OUT=/some/folder scripts/gpu-check   # also writes gpu-check.json there

Figures (the check reports, it never fails on a figure; it exits 1 only when something did not run):
- samples/s and MFU of ``retort run`` (an MLP 1024-8192-8192-16 on 131,072 synthetic rows kept on the GPU,
  batch 8192, bf16-mixed, compiled, TF32) over a hand-written loop: same model, loss, data, batches,
  torch.optim.Adam (fused), bf16 autocast, torch.compile, a validation pass per epoch. Goal: MFU within 5%.
- telemetry cost: fit time with ``tracking.telemetry`` on over off (eager, alternating pairs). Goal <= 1.01x.
- 16-mixed: the loss scale and its overflows are recorded.
- the record: CUDA, cuDNN and driver tags, GPU model and count, this run's GPU readings through NVML.
- packed trials (GPU only): ``retort sweep --workers 4`` of small digits-mlp trials packed on GPU 0 against
  one worker running them one after another (scripts/bench_sweep.py's figure, one pair; goal >= 1.5x), and
  two workers packed under ``--gpu-memory 2GiB``: the trials whose model needs about 4 GiB fail out of memory
  by themselves while their neighbour's trials complete; the CUDA context's own memory is measured against
  the 1 GiB per worker that the budget check sets aside.
Without CUDA the same steps run small on the CPU (no compile, no MFU), each skipped part said in one line.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

GPU = {"n_samples": 131072, "n_features": 1024, "hidden": [8192, 8192], "batch": 8192, "eval_batch": 16384,
       "epochs": 6}
CPU = {"n_samples": 8192, "n_features": 64, "hidden": [256, 256], "batch": 512, "eval_batch": 1024, "epochs": 3}


def say(line: str) -> None:
    print(line, flush=True)


def recipe_dict(size: dict, *, cuda: bool, precision: str, compile: bool, telemetry: bool = True,
                epochs: int | None = None) -> dict:
    return {
        "name": "gpu-check", "seed": 0,
        "data": {"name": "synthetic_classification", "n_samples": size["n_samples"],
                 "n_features": size["n_features"], "n_informative": 32, "n_classes": 16,
                 "batch_size": size["batch"], "eval_batch_size": size["eval_batch"], "val_fraction": 0.125,
                 "test_fraction": 0.125, "drop_last": True},
        "model": {"name": "mlp", "hidden": size["hidden"]},
        "loss": "logitcrossentropy",
        "optimizer": {"name": "adam", "lr": 1.0e-4},
        "metrics": ["accuracy"],
        "trainer": {"max_epochs": epochs or size["epochs"], "accelerator": "cuda" if cuda else "cpu", "devices": 1,
                    "precision": precision, "compile": compile, "tf32": cuda, "deterministic": False},
        "tracking": {"experiment": "gpu-check", "telemetry": telemetry, "checkpoint": False,
                     "system_metrics_interval": 1.0},
    }


BUDGET_SWEEP = """\
name: packed-budget
seed: 0
data: {name: digits, batch_size: 64}
model: {name: mlp, hidden: [64]}
optimizer: {name: adam, lr: 0.001}
trainer: {max_epochs: 2, accelerator: cuda, devices: 1}
tracking: {experiment: packed-budget, checkpoint: false}
sweep:
  metric: val/loss
  sampler: grid
  pruner: none
  space:
    model.hidden: {choices: [[64], [16384, 16384]]}
    optimizer.lr: {choices: [0.001, 0.01]}
"""


def packed_budget(folder: Path, uri: str) -> dict:
    """Two workers packed on GPU 0, 2 GiB each: a 4-trial grid where the wide model needs about 4 GiB (a
    16384 x 16384 layer's weights, gradients and Adam's two moments). Per trial: its width, status, failure,
    budget tag and worker."""
    import subprocess

    from mlflow import MlflowClient

    recipe = folder / "packed-budget.yaml"
    recipe.write_text(BUDGET_SWEEP)
    out = subprocess.run([sys.executable, "-m", "retort.recipes.cli", "sweep", str(recipe), "--trials", "4",
                          "--workers", "2", "--devices", "0", "--trials-per-gpu", "2", "--gpu-memory", "2GiB",
                          "--tracking-uri", uri, "-q"], capture_output=True, text=True, cwd=folder, timeout=300)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("packed-budget")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    trials = [{"wide": "16384" in r.data.params.get("model.hidden", ""), "status": r.info.status,
               "failure": r.data.tags.get("retort.failure", "")[:120],
               "gpu_memory": r.data.tags.get("retort.gpu_memory"),
               "worker": r.data.tags.get("retort.worker")} for r in runs if "retort.trial" in r.data.tags]
    return {"rc": out.returncode, "stderr": out.stderr[-1000:], "trials": trials}


def context_mib() -> float | None:
    """Device memory this process holds outside torch's allocator (its CUDA context and libraries), MiB."""
    import torch

    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(0).uuid)
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        mine = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == os.getpid()]
        return (mine[0] - torch.cuda.memory_reserved(0)) / 2**20 if mine and mine[0] else None
    except Exception:
        return None


def retort_run(raw: dict, uri: str) -> dict:
    from mlflow import MlflowClient

    from retort import recipes
    from retort.recipes.schema import resolve

    result = recipes.run(resolve(raw), tracking_uri=uri, quiet=True)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result.run_id)

    def later_epochs(key: str) -> float | None:
        values = [m.value for m in sorted(client.get_metric_history(result.run_id, key), key=lambda m: m.step)]
        return statistics.median(values[1:] if len(values) > 1 else values) if values else None

    return {"run_id": result.run_id, "fit_s": result.fit_seconds, "tags": run.data.tags,
            "metrics": run.data.metrics, "samples_per_s": later_epochs("perf/samples_per_second"),
            "mfu": later_epochs("perf/mfu"), "step_s": later_epochs("perf/step_seconds"),
            "data_wait": later_epochs("perf/data_wait_fraction")}


def hand_written(raw: dict, *, cuda: bool, compile: bool) -> dict:
    """The loop a user writes: data on the device, random batches, autocast, compile, fused Adam, validation."""
    import torch

    from retort import plugins
    from retort.recipes.runner import build
    from retort.recipes.schema import resolve
    from retort.tracking.telemetry import flops_per_step, number_format, peak_flops

    r = resolve(raw)
    splits = build(r).splits
    dev = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    from retort.recipes.schema import plugin_spec

    model = plugins.build("model", plugin_spec("model", r.model), splits.info).to(dev)
    loss_fn = plugins.build("loss", r.loss)
    opt = torch.optim.Adam(model.parameters(), lr=r.optimizer["lr"], fused=True)
    fwd = torch.compile(model) if compile else model
    x, y = (t.to(dev) for t in splits.train)
    xv, yv = (t.to(dev) for t in splits.val)
    bs, ebs = r.data["batch_size"], r.data["eval_batch_size"]
    steps = len(x) // bs
    dtype = torch.bfloat16 if r.trainer["precision"].startswith("bf16") else None
    flops = flops_per_step(model, x[:bs])
    peak = peak_flops(torch.cuda.get_device_name(dev), number_format(r.trainer["precision"], True)) if cuda else None
    epoch_s, compile_s = [], 0.0
    for epoch in range(r.trainer["max_epochs"]):
        model.train()
        perm = torch.randperm(len(x), device=dev)
        start = time.perf_counter()
        total = torch.zeros((), device=dev)
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(fwd(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            if epoch == 0 and i == 0 and compile:
                if cuda:
                    torch.cuda.synchronize()
                compile_s = time.perf_counter() - start  # the first step compiles: set-up, kept apart
                start = time.perf_counter()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        epoch_s.append(seconds / (steps - 1) * steps if epoch == 0 and compile else seconds)
        model.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            val = sum(float(loss_fn(fwd(xv[j:j + ebs]), yv[j:j + ebs])) * len(xv[j:j + ebs])
                      for j in range(0, len(xv), ebs)) / len(xv)
        _ = (float(total) / steps, val)
    later = statistics.median(epoch_s[1:] if len(epoch_s) > 1 else epoch_s)
    step_s = later / steps
    return {"samples_per_s": steps * bs / later, "step_s": step_s, "compile_s": compile_s,
            "mfu": flops / step_s / peak if flops and peak else None}


def main() -> int:
    import torch

    out_dir = os.environ.get("OUT")
    cuda = torch.cuda.is_available()
    size = GPU if cuda else CPU
    report: dict = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "cuda": cuda}
    if cuda:
        report["device"] = torch.cuda.get_device_name(0)
        say(f"device: {report['device']} ({torch.cuda.device_count()} visible), torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    else:
        torch.set_num_threads(min(4, os.cpu_count() or 1))
        say(f"device: CPU only, torch {torch.__version__}")
        say("skipped: no CUDA device: torch.compile, MFU, peak memory, 16-mixed loss scaling, NVML readings "
            "(the same steps run small on the CPU)")
    try:
        import pynvml  # noqa: F401

        nvml = True
    except ImportError:
        nvml = False
        say("skipped: nvidia-ml-py is not installed: no per-GPU utilization, power or driver version")
    rows, failures = [], []
    with tempfile.TemporaryDirectory(prefix="retort-gpu-check-") as tmp:
        os.chdir(tmp)
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments()
        precision = "bf16-mixed"

        ours: dict = {}

        def part(name: str, fn) -> None:
            """Run one part; a part that breaks is one FAILED line, and the others still run."""
            began = time.perf_counter()
            try:
                fn()
                say(f"{name}: done in {time.perf_counter() - began:.0f} s")
            except Exception as exc:
                import traceback

                traceback.print_exc()
                failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
                say(f"{name}: FAILED after {time.perf_counter() - began:.0f} s: {type(exc).__name__}: {exc}"[:400])

        def bf16_compile() -> None:  # a recipe with bf16 and compile against the hand-written loop with the same
            ours.update(retort_run(recipe_dict(size, cuda=cuda, precision=precision, compile=cuda), uri))
            theirs = hand_written(recipe_dict(size, cuda=cuda, precision=precision, compile=cuda), cuda=cuda,
                                  compile=cuda)
            report["bf16_compile"] = {"retort": {k: v for k, v in ours.items() if k not in ("tags", "metrics")},
                                      "hand_written": theirs,
                                      "compile_s": ours["metrics"].get("perf/compile_seconds")}
            rows.append(("samples/s, bf16" + (" + compile" if cuda else ""), ours["samples_per_s"],
                         theirs["samples_per_s"], ">= 0.95x"))
            if cuda:
                rows.append(("MFU, bf16 + compile", ours["mfu"], theirs["mfu"], "within 5%"))
                rows.append(("compile seconds (apart from training)", ours["metrics"].get("perf/compile_seconds"),
                             theirs["compile_s"], ""))
                rows.append(("peak memory MB", ours["metrics"].get("perf/peak_memory_megabytes"), None, ""))
            rows.append(("data wait fraction", ours["data_wait"], None, ""))

        def telemetry_cost() -> None:  # on over off, eager, alternating
            pairs = []
            for _ in range(2):
                on = retort_run(recipe_dict(size, cuda=cuda, precision=precision, compile=False, epochs=4), uri)
                off = retort_run(recipe_dict(size, cuda=cuda, precision=precision, compile=False, epochs=4,
                                             telemetry=False), uri)
                pairs.append(on["fit_s"] / off["fit_s"])
            report["telemetry_on_over_off"] = pairs
            rows.append(("telemetry on / off, fit time", statistics.median(pairs), 1.0, "<= 1.01x"))

        def fp16_scaling() -> None:  # the loss scale and its overflows are recorded
            m = retort_run(recipe_dict(size, cuda=cuda, precision="16-mixed", compile=False, epochs=2), uri)["metrics"]
            report["fp16"] = {k: m.get(k) for k in ("perf/loss_scale", "perf/loss_scale_overflows")}
            rows.append(("16-mixed loss scale / overflows", m.get("perf/loss_scale"),
                         m.get("perf/loss_scale_overflows"), "recorded"))
            if "perf/loss_scale" not in m:
                failures.append("16-mixed recorded no loss scale")

        def the_record() -> None:  # tags and this run's GPU readings
            tags, metrics = ours["tags"], ours["metrics"]
            wanted = ["retort.precision", "retort.devices"]
            if cuda:
                wanted += ["cuda.version", "cudnn.version", "gpu.model", "gpu.count"]
                wanted += ["gpu.driver_version"] if nvml else []
            report["tags"] = {k: tags.get(k) for k in wanted}
            report["system_metrics"] = sorted(k for k in metrics if k.startswith("system/gpu"))
            failures.extend(f"tag {k} missing" for k in wanted if k not in tags)
            if cuda and not report["system_metrics"]:
                failures.append("no system/gpu_* readings")

        def packed_trials() -> None:  # K small trials on one GPU against one after another; a memory budget holds
            sys.path.insert(0, str(REPO / "scripts"))
            from bench_sweep import calibrate, packed, packed_rows

            report["cuda_context_mib"] = context_mib()
            rows.append(("CUDA context MiB (1024 set aside a worker)", report["cuda_context_mib"], None, ""))
            budget = packed_budget(Path(tmp), uri)
            report["packed_budget"] = budget
            wide = [t for t in budget["trials"] if t["wide"]]
            narrow = [t for t in budget["trials"] if not t["wide"]]
            if not (wide and all(t["failure"].startswith("out of memory") for t in wide)):
                failures.append(f"packed under --gpu-memory 2GiB: the wide trials did not fail out of memory: {wide}")
            if not (narrow and all(t["status"] == "FINISHED" for t in narrow)):
                failures.append(f"packed under --gpu-memory 2GiB: a narrow trial did not finish: {narrow}")
            if not all((t["gpu_memory"] or "").startswith("2 GiB of") for t in budget["trials"]):
                failures.append(f"packed under --gpu-memory 2GiB: retort.gpu_memory tags: {budget['trials']}")
            k, epochs = 4, calibrate(Path(tmp), 1.0, device="cuda")
            rounds = packed(Path(tmp), k, 3 * k, epochs, cuda=True, repeats=1)
            report["packed"] = {"k": k, "epochs": epochs, "rounds": rounds}
            for name, value, detail, _ in packed_rows(rounds, k, 3 * k, epochs, cuda=True):
                say(f"{name}: {value} ({detail})")
            for what, key, goal in (("whole command", "wall", "<= 0.67x"), ("trials running", "trials_s", "")):
                rows.append((f"seconds, {k} packed / 1 alone, {what}", rounds[0]["packed"][key],
                             rounds[0]["whole"][key], goal))

        part("bf16" + (" + compile" if cuda else "") + " recipe against the hand-written loop", bf16_compile)
        part("telemetry on over off", telemetry_cost)
        if cuda:
            part("16-mixed loss scaling", fp16_scaling)
        if ours:
            part("the record", the_record)
        if cuda:
            part("packed trials on one GPU", packed_trials)

    say("")
    say(f"{'figure':<40} {'retort':>12} {'baseline':>12} {'ratio':>7}  goal")
    for name, a, b, goal in rows:
        ratio = f"{a / b:.3f}x" if isinstance(a, float) and isinstance(b, float) and b else ""
        fmt = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
        say(f"{name:<40} {fmt(a):>12} {fmt(b):>12} {ratio:>7}  {goal}")
    for k, v in report.get("tags", {}).items():
        say(f"tag {k}: {v}")
    say(f"GPU readings recorded: {', '.join(report.get('system_metrics', [])) or 'none'}")
    report["failures"] = failures
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str))
        say(f"wrote {Path(out_dir) / 'gpu-check.json'}")
    for f in failures:
        say(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
