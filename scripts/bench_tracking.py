"""What recording costs and what a kill loses (rows of ``scripts/bench``; run alone: ``.venv/bin/python
scripts/bench_tracking.py``).

- tracking overhead: fit time with everything that makes a run survive kills and outages (``train/loss`` and
  ``lr`` recorded every step, the resumable checkpoint every ``tracking.resume_every``) over the same recipe
  with per-step values and the checkpoint off (epoch values only). The heartbeat and the spool, which every
  run has, run on both sides. Both sides run in the same warm process, in pairs whose order alternates (A B,
  B A, ...) so that a drift in the machine's speed favours neither; the median of the per-pair ratios is
  quoted. Goals: <= 1.03x on digits-mlp, <= 1.01x on a model whose step takes about 20 ms.
- resumable checkpoint: the cost of one save (digits-mlp, saving as often as the 2% budget allows) and so its
  share of training at the default ``tracking.resume_every`` (10 s).
- what a SIGKILL loses: ``retort run`` (a whole process) killed at a random moment of training, then ``retort
  sync``: the per-step values it had trained (print_loss prints each once done) less those recorded, and the
  training a resume must redo (the steps since its last resumable checkpoint, in steps and seconds). The
  runs here keep a checkpoint every 2 s, to keep the bench short; the loss scales with ``resume_every``.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MLP_20MS = ("model.hidden=[1024, 1024]", "data.batch_size=256", "model.dropout=0.0")  # about 20 ms a step


def paired(a: Callable[[], float], b: Callable[[], float], repeats: int) -> list[tuple[float, float]]:
    """``repeats`` (a, b) timings, the order alternating pair by pair (A B, B A, ...), after one warm-up of each."""
    a(), b()
    pairs = []
    for i in range(repeats):
        if i % 2:
            y = b()
            x = a()
        else:
            x = a()
            y = b()
        pairs.append((x, y))
    return pairs


def row(figure: str, pairs: list[tuple[float, float]]) -> dict:
    ratios = [x / y for x, y in pairs]
    return {"figure": figure, "retort_fit_s": statistics.median(x for x, _ in pairs),
            "hand_written_fit_s": statistics.median(y for _, y in pairs), "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}


def fit_seconds(recipe, uri: str) -> float:
    from retort import recipes

    return recipes.run(recipe, tracking_uri=uri, quiet=True).fit_seconds


def tracking_overhead(repeats: int, uri: str, name: str = "digits-mlp", overrides: tuple[str, ...] = ()) -> dict:
    from retort import recipes

    on = recipes.load("digits-mlp", [*overrides, "tracking.log_every_n_steps=1"])
    off = recipes.load("digits-mlp", [*overrides, "tracking.log_every_n_steps=0", "tracking.resume_every=null"])
    pairs = paired(lambda: fit_seconds(on, uri), lambda: fit_seconds(off, uri), repeats)
    return row(f"tracking overhead, {name}: every step over off", pairs)


def checkpoint_cost(uri: str) -> dict:
    """Milliseconds per resumable checkpoint of digits-mlp, and its share of training at the default interval."""
    import pytorch_lightning as pl

    from retort import recipes
    from retort.recipes.hooks import Resumable
    from retort.recipes.schema import TrackingOptions

    seen: list[Resumable] = []

    class Find(pl.Callback):
        def on_train_end(self, trainer, m):
            seen.extend(c for c in trainer.callbacks if isinstance(c, Resumable))

    recipe = recipes.load("digits-mlp", ["tracking.resume_every=0"])  # as often as the 2% budget allows
    fit = recipes.run(recipe, tracking_uri=uri, quiet=True, callbacks=[Find()]).fit_seconds
    [saver] = seen
    each = saver.seconds / max(1, saver.saves)
    every = TrackingOptions.model_fields["resume_every"].default
    return {"saves": saver.saves, "save_ms": 1000 * each, "share_at_budget": saver.seconds / fit,
            "share_at_default": each / every, "default_s": every}


def kill_loss(tmp: Path, kills: int = 3, every: float = 2.0) -> dict:
    """SIGKILL ``retort run`` at a random moment of training; after ``retort sync``, the steps it had trained
    (each printed by print_loss once done) that are missing from the record, and those a resume must train
    again (after its last resumable checkpoint), in steps and seconds."""
    import torch
    from mlflow import MlflowClient

    exe = str(Path(sys.executable).with_name("retort"))
    rng = random.Random(0)
    lost, seconds, redo, redo_s = [], [], [], []
    for i in range(kills):
        folder = tmp / f"kill{i}"
        folder.mkdir()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RETORT_SPOOL": str(folder / "spool")}
        env.pop("MLFLOW_TRACKING_URI", None)
        proc = subprocess.Popen([exe, "run", "digits-mlp", "-s", "trainer.max_epochs=400", "-s",
                                 "callbacks=[{name: print_loss}]", "-s", "tracking.system_metrics=false",
                                 "-s", f"tracking.resume_every={every}"],
                                cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        trained, first, deadline = 0, None, None
        for line in proc.stdout:
            if "  batch " in line:
                trained += 1
                now = time.monotonic()
                if first is None:
                    first, deadline = now, now + rng.uniform(2.0, 8.0)
                if now >= deadline:
                    proc.send_signal(signal.SIGKILL)
                    break
        elapsed = time.monotonic() - first
        proc.wait()
        per_step = elapsed / trained
        [kept] = list((folder / "spool").rglob("*.ckpt")) or [None]
        saved = torch.load(kept, weights_only=False)["retort"]["batches_seen"] if kept else 0
        subprocess.run([exe, "sync"], cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)
        client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
        [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
        recorded = len(client.get_metric_history(run.info.run_id, "train/loss"))
        lost.append(trained - recorded)
        seconds.append((trained - recorded) * per_step)
        redo.append(trained - saved)
        redo_s.append((trained - saved) * per_step)
    return {"figure": f"SIGKILL mid-training, digits-mlp ({kills} kills, a checkpoint every {every:g} s)",
            "values_lost_max": max(lost), "seconds_lost_max": max(seconds), "values_lost": lost,
            "redo_steps": redo, "redo_seconds_max": max(redo_s)}


def main() -> None:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="A/B pairs per figure (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["RETORT_SPOOL"] = str(Path(tmp) / "spool")
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        rows = [tracking_overhead(args.repeats, uri),
                tracking_overhead(args.repeats, uri, "MLP 1024-1024, batch 256 (about 20 ms a step)",
                                  ("trainer.max_epochs=10", *MLP_20MS))]
        cost = checkpoint_cost(uri)
        killed = kill_loss(Path(tmp))
    for r, goal in zip(rows, (1.03, 1.01)):
        print(f"{r['figure']:<58} {r['retort_fit_s']:>8.3f}s {r['hand_written_fit_s']:>8.3f}s {r['ratio']:>6.3f}x  "
              f"({r['ratio_min']:.3f}-{r['ratio_max']:.3f})  <= {goal}x")
    print(report(cost, killed))


def report(cost: dict, killed: dict) -> str:
    return "\n".join([
        f"{'resumable checkpoint, digits-mlp: one save':<58} {cost['save_ms']:>7.1f}ms  "
        f"{100 * cost['share_at_default']:.3f}% of training at every {cost['default_s']:g} s "
        f"({100 * cost['share_at_budget']:.1f}% at the 2% budget, {cost['saves']} saves)",
        f"{killed['figure'] + ': values (seconds) lost, worst':<58} {killed['values_lost_max']:>9} "
        f"({killed['seconds_lost_max']:.2f} s)  values {killed['values_lost']}",
        f"{'  ... training a resume redoes, worst':<58} {killed['redo_seconds_max']:>8.2f}s  "
        f"steps {killed['redo_steps']}"])


if __name__ == "__main__":
    main()
