"""retort's performance figures, each a ratio against a baseline measured in the same run.

    scripts/bench                 # all figures, about two minutes on 2 cores
    scripts/bench --repeats 7     # more pairs for steadier medians

Figures (goals from the issues; the bench reports, it never fails):
- loop overhead: ``retort run`` fit time (tracking on: per-step losses recorded, best checkpoint kept)
  over a hand-written PyTorch loop in the seed's style with a torch DataLoader, same model, loss,
  optimizer, data, batch size and epochs, and a validation pass per epoch. Goal <= 1.0x on digits-mlp,
  <= 1.05x on a model whose step takes about 20 ms.
- tracking overhead: fit time logging train/loss and lr every step over logging them off (epoch values
  only), digits-mlp. Goal <= 1.03x.
- run set-up: seconds MLflow set-up adds to a run on an existing store (creating the run with every
  param and tag, recipe, environment, data input, code state). Goal <= 0.5 s.
- start-up: wall time of ``retort --help`` and ``retort recipes`` (goal < 0.5 s each).
A and B run alternately in one process (A B A B ...) and the median of the per-pair ratios is quoted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def hand_written_fit(recipe, splits) -> float:
    """The seed's loop: for epoch, for batch: forward, loss, gradients, update; epoch average; validate."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from retort import plugins
    from retort.recipes.schema import plugin_spec

    torch.manual_seed(recipe.seed)
    model = plugins.build("model", plugin_spec("model", recipe.model), splits.info)
    loss_fn = plugins.build("loss", recipe.loss)
    opt = plugins.build("optimizer", plugin_spec("optimizer", recipe.optimizer), model.parameters())
    bs = recipe.data["batch_size"]
    train = DataLoader(TensorDataset(*splits.train), batch_size=bs, shuffle=True)
    val = DataLoader(TensorDataset(*splits.val), batch_size=bs)
    start = time.perf_counter()
    for _epoch in range(recipe.trainer["max_epochs"]):
        model.train()
        epoch_loss, n = 0.0, 0
        for x, y in train:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            epoch_loss += loss.item()
            n += 1
        model.eval()
        with torch.no_grad():
            val_loss = sum(loss_fn(model(x), y).item() * len(x) for x, y in val) / len(splits.val[0])
        _line = f"epoch {_epoch + 1}  train loss {epoch_loss / n:.4f}  val loss {val_loss:.4f}"
    return time.perf_counter() - start


def retort_fit(recipe, uri: str) -> float:
    from retort import recipes

    return recipes.run(recipe, tracking_uri=uri, quiet=True).fit_seconds


def loop_overhead(name: str, overrides: list[str], repeats: int, uri: str) -> dict:
    from retort import recipes
    from retort.recipes.runner import build

    recipe = recipes.load("digits-mlp", overrides)
    splits = build(recipe).splits
    hand_written_fit(recipe, splits)  # warm-up both paths (imports, allocator, first-run costs)
    retort_fit(recipe, uri)
    pairs = []
    for _ in range(repeats):
        a = retort_fit(recipe, uri)
        b = hand_written_fit(recipe, splits)
        pairs.append((a, b))
    steps = recipe.trainer["max_epochs"] * -(-splits.info.n_train // recipe.data["batch_size"])
    ratios = [a / b for a, b in pairs]
    return {
        "figure": f"loop overhead, {name}",
        "retort_fit_s": statistics.median(a for a, _ in pairs),
        "hand_written_fit_s": statistics.median(b for _, b in pairs),
        "hand_step_ms": 1000 * statistics.median(b for _, b in pairs) / steps,
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios), "ratio_max": max(ratios),
    }


def tracking_overhead(repeats: int, uri: str) -> dict:
    from retort import recipes

    on = recipes.load("digits-mlp", ["tracking.log_every_n_steps=1"])
    off = recipes.load("digits-mlp", ["tracking.log_every_n_steps=0"])
    retort_fit(on, uri)
    retort_fit(off, uri)
    pairs = [(retort_fit(on, uri), retort_fit(off, uri)) for _ in range(repeats)]
    ratios = [a / b for a, b in pairs]
    return {"figure": "tracking overhead, digits-mlp: every step over off", "retort_fit_s":
            statistics.median(a for a, _ in pairs), "hand_written_fit_s": statistics.median(b for _, b in pairs),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def run_setup(repeats: int, uri: str) -> float:
    """Seconds to create a run's record on an existing store: what MLflow adds before training starts."""
    import tempfile

    from retort import recipes
    from retort.recipes.runner import _record_context, build
    from retort.tracking import RunRecord
    from retort.tracking.context import run_tags

    recipe = recipes.load("digits-mlp")
    built = build(recipe)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        record = RunRecord.start(uri, "bench-setup", params=recipe.flat(), tags=run_tags(recipe))
        with tempfile.TemporaryDirectory() as tmp:
            _record_context(record, recipe, built, Path(tmp))
        times.append(time.perf_counter() - start)
        record.finish("FINISHED")
    return statistics.median(times[1:])


def wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="A/B pairs per figure (default 5)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    exe = str(Path(sys.executable).with_name("retort"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments()  # migrate the store once, outside the timings
        rows.append(loop_overhead("digits-mlp as shipped (40 epochs)", [], args.repeats, uri))
        rows.append(loop_overhead("digits, MLP 1024-1024, batch 256 (5 epochs)",
                                  ["trainer.max_epochs=5", "model.hidden=[1024, 1024]", "data.batch_size=256",
                                   "model.dropout=0.0"], args.repeats, uri))
        rows.append(tracking_overhead(args.repeats, uri))
        setup_s = run_setup(args.repeats, uri)
        help_s = wall([exe, "--help"], args.repeats)
        recipes_s = wall([exe, "recipes"], args.repeats)

    print(f"{'figure':<58} {'retort':>9} {'baseline':>9} {'ratio':>7}  (min-max)      goal")
    goals = [1.0, 1.05, 1.03]
    for row, goal in zip(rows, goals):
        step = f"   [hand-written step {row['hand_step_ms']:.2f} ms]" if "hand_step_ms" in row else ""
        print(f"{row['figure']:<58} {row['retort_fit_s']:>8.2f}s {row['hand_written_fit_s']:>8.2f}s "
              f"{row['ratio']:>6.3f}x  ({row['ratio_min']:.3f}-{row['ratio_max']:.3f})  <= {goal}x{step}")
    print(f"{'run set-up on an existing store (MLflow)':<58} {setup_s:>8.3f}s {'':>9} {'':>7}  {'':<14} <= 0.5 s")
    print(f"{'start-up: retort --help':<58} {help_s:>8.3f}s {'':>9} {'':>7}  {'':<14} < 0.5 s")
    print(f"{'start-up: retort recipes':<58} {recipes_s:>8.3f}s {'':>9} {'':>7}  {'':<14} < 0.5 s")
    if args.json:
        figures = {"loop": rows, "setup_s": setup_s, "help_s": help_s, "recipes_s": recipes_s}
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
