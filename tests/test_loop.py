"""The loop's features through real short runs: accumulation, clipping, schedules, stopping rules, monitors."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
import yaml

from retort import plugins, recipes
from retort.recipes.runner import build
from retort.recipes.schema import plugin_spec, resolve

BASE = {
    "seed": 3,
    "data": {"name": "wine", "batch_size": 16},
    "model": {"name": "mlp", "hidden": [8]},
    "loss": "logitcrossentropy",
    "optimizer": {"name": "descent", "lr": 0.05},
    "trainer": {"max_epochs": 2, "accelerator": "cpu"},
    "tracking": {"experiment": "loop", "checkpoint": False},
}


def recipe(**changes):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for path, value in changes.items():
        node = raw
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return resolve(raw)


def losses(client, run_id: str, key: str = "train/loss") -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def reference_losses(r) -> list[float]:
    """The loop written out by hand: accumulation and clipping as the recipe asks."""
    pl.seed_everything(r.seed, verbose=False)
    built = build(r)
    model, loss_fn = built.module.net, built.module.loss_fn
    opt = plugins.build("optimizer", plugin_spec("optimizer", r.optimizer), model.parameters())
    loader = built.datamodule.train_dataloader()
    acc, o = r.optimizer["accumulate"], r.optimizer
    out = []
    for epoch in range(r.trainer["max_epochs"]):
        loader.set_epoch(epoch)
        n = len(loader)
        for i, (x, y) in enumerate(loader):
            loss = loss_fn(model(x), y)
            (loss / acc).backward()
            out.append(loss.item())
            if (i + 1) % acc == 0 or i + 1 == n:
                if o["clip_value"] is not None:
                    torch.nn.utils.clip_grad_value_(model.parameters(), o["clip_value"])
                if o["clip_norm"] is not None:
                    if o["clip_per_tensor"]:
                        for p in model.parameters():
                            torch.nn.utils.clip_grad_norm_([p], o["clip_norm"])
                    else:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), o["clip_norm"])
                opt.step()
                opt.zero_grad()
    return out


@pytest.mark.parametrize("changes", [
    {},
    {"optimizer.accumulate": 3},
    {"optimizer.clip_value": 0.01},
    {"optimizer.clip_norm": 0.05},
    {"optimizer.clip_norm": 0.05, "optimizer.clip_per_tensor": True},
])
def test_loop_matches_the_written_out_loop(client, changes):
    r = recipe(**changes)
    result = recipes.run(r, quiet=True)
    assert losses(client, result.run_id) == pytest.approx(reference_losses(r), rel=1e-6, abs=1e-8)


def test_clipping_changes_the_trajectory(client):
    plain = recipes.run(recipe(), quiet=True)
    clipped = recipes.run(recipe(**{"optimizer.clip_value": 0.01}), quiet=True)
    a, b = losses(client, plain.run_id), losses(client, clipped.run_id)
    assert a[0] == b[0] and a[5] != pytest.approx(b[5], rel=1e-3)


def test_epoch_schedule_with_warmup_sets_the_recorded_lr(client):
    r = recipe(**{"scheduler": {"name": "exp", "decay": 0.5, "warmup": 2, "warmup_start": 0.25},
                  "trainer.max_epochs": 5})
    result = recipes.run(r, quiet=True)
    per_epoch = math.ceil(build(r).splits.info.n_train / 16)
    lrs = losses(client, result.run_id, "lr")
    firsts = [lrs[e * per_epoch] for e in range(5)]
    # warmup 0.25 -> 1 over 2 epochs, then exp(0.5) from its own t = 0
    assert firsts == pytest.approx([0.05 * 0.25, 0.05 * 0.625, 0.05, 0.025, 0.0125])
    assert len(set(lrs[:per_epoch])) == 1  # constant within an epoch


def test_step_schedule_changes_lr_every_step(client):
    r = recipe(**{"scheduler": {"name": "cosine", "interval": "step"}, "trainer.max_epochs": 1})
    result = recipes.run(r, quiet=True)
    lrs = losses(client, result.run_id, "lr")
    n = len(lrs)
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * t / n)) / 2 for t in range(n)])


def test_plateau_schedule_reduces_when_the_monitor_stalls(client):
    # a relative threshold of 10 makes every epoch "no improvement" (the first too: inf·(1-10) = -inf)
    r = recipe(**{"scheduler": {"name": "plateau", "patience": 1, "factor": 0.5, "threshold": 10.0},
                  "trainer.max_epochs": 5})
    result = recipes.run(r, quiet=True)
    lrs = losses(client, result.run_id, "lr")
    per_epoch = len(lrs) // 5
    firsts = [lrs[e * per_epoch] / 0.05 for e in range(5)]
    assert firsts == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25])  # halved after every 2nd bad epoch (> patience 1)


FROZEN = {"optimizer": {"name": "descent", "lr": 0.0}, "trainer.max_epochs": 6}  # every epoch scores the same


def test_lightning_early_stopping_counts_an_equal_score_as_no_improvement(client):
    r = recipe(**FROZEN, callbacks=[{"name": "early_stopping", "patience": 2}])
    assert recipes.run(r, quiet=True).epochs == 3


def test_flux_early_stopping_counts_an_equal_score_as_improvement(client):
    r = recipe(**FROZEN, callbacks=[{"name": "early_stopping", "patience": 2, "semantics": "flux"}])
    assert recipes.run(r, quiet=True).epochs == 6


def test_flux_plateau_stops_after_width_flat_epochs(client):
    r = recipe(**FROZEN, callbacks=[{"name": "plateau", "width": 2}])
    assert recipes.run(r, quiet=True).epochs == 3


def test_monitors_record_lr_momentum_and_gradient_norm(client, monkeypatch):
    import itertools
    import time
    import types

    from retort.tracking import record

    # each value a millisecond apart, as on a busy machine: a second copy of a step's lr would not fold into the
    # first in the store (same key, step, value and timestamp) and would show as an extra value
    clock = itertools.count(int(time.time() * 1000))
    monkeypatch.setattr(record, "time", types.SimpleNamespace(time=lambda: next(clock) / 1000,
                                                              monotonic=time.monotonic))
    r = recipe(callbacks=[{"name": "lr_monitor", "interval": "step"}, "grad_norm"],
               optimizer={"name": "momentum", "lr": 0.01})
    result = recipes.run(r, quiet=True)
    n = len(losses(client, result.run_id))
    assert losses(client, result.run_id, "lr") == [0.01] * n
    norms = losses(client, result.run_id, "train/grad_norm")
    assert len(norms) == n
    pl.seed_everything(r.seed, verbose=False)
    built = build(r)
    x, y = next(iter(built.datamodule.train_dataloader()))
    built.module.loss_fn(built.module.net(x), y).backward()
    first = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in built.module.net.parameters()]))
    assert norms[0] == pytest.approx(float(first), rel=1e-5)


def test_throttle_runs_the_wrapped_callback_at_most_once_per_period(client, capsys):
    r = recipe(callbacks=[{"name": "throttle", "seconds": 1000, "callback": "print_loss"}])
    recipes.run(r, quiet=True)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(printed) == 1 and printed[0].startswith("epoch 1  batch 1  loss ")


def test_user_checkpoint_callback_is_recorded(client):
    r = recipe(callbacks=[{"name": "checkpoint", "save_top_k": 1}])
    result = recipes.run(r, quiet=True)
    files = [f.path for f in client.list_artifacts(result.run_id, "checkpoints")]
    assert len(files) == 1 and files[0].endswith(".ckpt")


def test_best_weights_are_what_the_test_split_sees(client, workdir):
    r = recipe(**{"tracking.checkpoint": True, "trainer.max_epochs": 3})
    result = recipes.run(r, quiet=True)
    path = client.download_artifacts(result.run_id, "checkpoints/best.ckpt", str(workdir))
    saved = torch.load(path, weights_only=True)
    best_val = min(losses(client, result.run_id, "val/loss"))
    assert saved["monitor"] == "val/loss" and saved["value"] == pytest.approx(best_val)


def test_a_batch_already_on_the_device_is_passed_through_as_it_is():
    # a DataLoader's default collate gives a list; in-memory splits a tuple: neither is walked and copied
    r = resolve({"data": {"name": "iris"}, "model": {"name": "linear"}, "loss": "logitcrossentropy",
                 "trainer": {"accelerator": "cpu"}})
    module = build(r).module
    cpu = torch.device("cpu")
    for batch in ([torch.ones(2, 4), torch.zeros(2)], (torch.ones(2, 4), torch.zeros(2))):
        assert module.transfer_batch_to_device(batch, cpu, 0) is batch
    nested = [[torch.ones(2, 4)], torch.zeros(2)]  # not flat tensors: Lightning's own walk, a new container
    moved = module.transfer_batch_to_device(nested, cpu, 0)
    assert moved is not nested and torch.equal(moved[0][0], nested[0][0])


def test_the_per_step_dispatch_skips_what_it_need_not_do(client):
    """Three of Lightning's per-step costs are skipped (0.12 ms a step, 12 % of digits-mlp's): the loop's
    callbacks have no per-batch hooks they do not define (``LoopCallback``), the profiler hands back one empty
    context, and the attributes set every step bypass nn.Module's registry checks (``RecipeModule._PLAIN``),
    right only while none of them is a parameter, buffer or submodule. Lightning still calls every hook a
    callback defines, and reads what it set."""
    from retort.recipes.hooks import PER_BATCH, LoopCallback, Recorder
    from retort.recipes.module import RecipeModule

    seen: list[str | None] = []
    contexts = set()
    backward: list[int] = []

    class Look(LoopCallback):
        def on_train_batch_end(self, trainer, m, outputs, batch, i) -> None:
            seen.append(m._current_fx_name)  # Lightning names the hook it is in
            contexts.update(id(trainer.profiler.profile(name)) for name in ("a", "b"))

    class After(Look):
        def on_after_backward(self, trainer, m) -> None:
            backward.append(m.batches_seen)

    assert Look.on_after_backward is None and Look.on_train_batch_start is None
    assert callable(After.on_after_backward) and callable(After.on_train_batch_end)
    assert Recorder.on_train_batch_start is None and callable(Recorder.on_train_batch_end)
    assert all(getattr(pl.Callback, hook) is not None for hook in PER_BATCH)  # the base class keeps its own

    r = resolve({"data": {"name": "iris"}, "model": {"name": "linear"}, "loss": "logitcrossentropy",
                 "trainer": {"accelerator": "cpu", "max_epochs": 2}})
    built = build(r)
    result = recipes.run(r, quiet=True, callbacks=[After()])
    module = built.module
    registered = {*dict(module.named_parameters()), *dict(module.named_buffers()), *dict(module.named_modules())}
    assert not {n.split(".")[0] for n in registered} & RecipeModule._PLAIN
    assert set(seen) == {"on_train_batch_end"} and len(seen) == 2 * math.ceil(built.splits.info.n_train / 64)
    assert len(contexts) == 1 and result.epochs == 2
    assert backward == list(range(len(seen)))  # before each step's count goes up
