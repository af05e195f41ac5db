"""What recording costs and what a kill loses (rows of ``scripts/bench``; run alone: ``.venv/bin/python
scripts/bench_tracking.py``).

- tracking overhead, the goal's figure: what tracking every step adds (``train/loss`` and ``lr`` recorded every
  step, the resumable checkpoint every ``tracking.resume_every``) over the same recipe with per-step values and
  the checkpoint off (epoch values only), as the time training spends inside the recorder's hooks (buffering,
  the spool, flushes to the store) and the checkpoint's, on less off, over the fit time (``tracking_share``).
  Fits of 400 epochs of digits-mlp (about 11 s) and 150 of a model whose step takes about 20 ms, so that
  flushes (every 5 s) and checkpoints (every 10 s) happen. Goals: <= 3 % on digits-mlp, <= 1 % on the 20 ms
  step. The heartbeat and the spool, which every run has, run on both sides; system metrics are off on both.
- the same end to end: fit time on over off, the two taking turns epoch by epoch in two processes
  (``turns.py``), 4 rounds balanced over the leader and the process slots; the median of the rounds' ratios
  and their range. Its floor is the speed of a process itself: the same recipe on both sides spread
  0.946-1.021 over 4 rounds on this machine, so this row checks the first to several per cent; it cannot
  show 1 %.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MLP_20MS = ("model.hidden=[1024, 1024]", "data.batch_size=256", "model.dropout=0.0")  # about 20 ms a step
TWENTY_MS = "MLP 1024-1024, batch 256 (about 20 ms a step)"


def _tracking_side(args: tuple[list[str], str], turns) -> dict:
    """One side of the tracking figure in its own process: ``digits-mlp`` with ``overrides``, taking turns."""
    from retort import recipes

    overrides, uri = args
    result = recipes.run(recipes.load("digits-mlp", overrides), tracking_uri=uri, quiet=True,
                         callbacks=[turns.callback()])
    return {"fit": result.fit_seconds}


def tracking_overhead(repeats: int, uri: str, name: str = "digits-mlp", overrides: tuple[str, ...] = (),
                      epochs: int = 300) -> dict:
    """Tracking every step (and the resumable checkpoint at its default interval) over both off, the two taking
    turns epoch by epoch in two processes for ``epochs`` epochs, ``repeats`` rounds balanced over the leader
    and the process slots: per round the ratio of the sums of the epochs' times (a flush every few seconds and
    a checkpoint every ten count in full), and the median of the rounds."""
    from turns import compare, take_rounds

    base = [*overrides, f"trainer.max_epochs={epochs}", "tracking.system_metrics=false"]
    on = [*base, "tracking.log_every_n_steps=1"]
    off = [*base, "tracking.log_every_n_steps=0", "tracking.resume_every=null"]
    rounds, fits = [], []
    for a, b in take_rounds(_tracking_side, (on, uri), (off, uri), repeats):
        rounds.append((a["turns"], b["turns"]))
        fits.append((a["fit"], b["fit"]))
    return {"figure": f"tracking overhead, {name}: every step over off", **compare(rounds), "fits": fits}


def tracking_share(uri: str, name: str = "digits-mlp", overrides: tuple[str, ...] = (), epochs: int = 150,
                   repeats: int = 3) -> dict:
    """The time training spends in what tracking every step adds, as a share of the fit: the time inside the
    recorder's hooks (which buffer the values, write them to the spool and flush them to the store) and the
    resumable checkpoint's, with every step recorded and the checkpoint on, less the same with both off (the
    recorder still writes each epoch's values), each over its own fit time; the median of ``repeats`` runs of
    each. Unlike two fits' times, this is not blurred by the machine's speed: it resolves 0.1 %."""
    from spent import inside

    from retort import recipes
    from retort.recipes.hooks import Recorder, Resumable

    hooks = [(Recorder, "on_train_batch_end"), (Recorder, "on_train_epoch_end"), (Recorder, "on_exception"),
             (Resumable, "on_train_batch_start"), (Resumable, "on_train_start")]
    base = [*overrides, f"trainer.max_epochs={epochs}", "tracking.system_metrics=false"]
    on = recipes.load("digits-mlp", [*base, "tracking.log_every_n_steps=1"])
    off = recipes.load("digits-mlp", [*base, "tracking.log_every_n_steps=0", "tracking.resume_every=null"])
    shares: dict[str, list[float]] = {"on": [], "off": []}
    with inside(hooks) as spent:
        for _ in range(repeats):
            for side, recipe in (("on", on), ("off", off)):
                spent.reset()
                fit = recipes.run(recipe, tracking_uri=uri, quiet=True).fit_seconds
                shares[side].append(spent.seconds / fit)
    on_share, off_share = statistics.median(shares["on"]), statistics.median(shares["off"])
    return {"figure": f"tracking every step, {name}: time in it over fit time", "on": on_share, "off": off_share,
            "added": on_share - off_share}


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
    parser.add_argument("--repeats", type=int, default=4, help="rounds of turns per figure (default 4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["RETORT_SPOOL"] = str(Path(tmp) / "spool")
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        rows = [tracking_overhead(args.repeats, uri),
                tracking_overhead(args.repeats, uri, TWENTY_MS, MLP_20MS, epochs=100)]
        shares = [tracking_share(uri, epochs=400), tracking_share(uri, TWENTY_MS, MLP_20MS, epochs=150)]
        cost = checkpoint_cost(uri)
        killed = kill_loss(Path(tmp))
    for r, s, goal in zip(rows, shares, (1.03, 1.01)):
        print(share_line(s, goal))
        print(overhead_line(r, goal))
    print(report(cost, killed))


def overhead_line(r: dict, goal: float) -> str:
    rounds = ", ".join(f"{x:.3f}" for x in r["rounds"])
    return (f"{r['figure']:<58} {r['ratio']:>6.3f}x  (rounds {rounds}; {r['pairs']} epoch pairs, epoch "
            f"{1000 * r['a_epoch']:.1f} ms against {1000 * r['b_epoch']:.1f} ms)  <= {goal}x")


def share_line(r: dict, goal: float) -> str:
    return (f"{r['figure']:<58} {100 * r['added']:>6.2f}%  (on {100 * r['on']:.2f} %, off {100 * r['off']:.2f} %)  "
            f"<= {100 * (goal - 1):g} %")


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
