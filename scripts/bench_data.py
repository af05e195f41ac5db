"""retort's data figures, each a ratio against a baseline measured in the same run.

    scripts/bench data                 # every figure: a few minutes on 2 cores
    scripts/bench data --parts images  # the image DataLoader figure alone: about 1.5 minutes
    scripts/bench data --parts images --epochs 16 --repeats 8   # steadier, about 6 minutes
    scripts/bench data --parts images --set trainer.deterministic=false   # an override on both sides
    scripts/bench data --parts images --same hand   # the hand-written loop on both sides: the noise floor
    scripts/bench data --scale 20      # the memory figure with 20 MB and 200 MB of rows

Figures (goals from the issue; the bench reports, it never fails):
- memory: peak resident set of a process that trains one epoch on ``.npy`` rows read on demand, at 10x the
  rows over 1x (goal <= 1.10x); beside it the same with the rows memory-mapped (``np.load(mmap_mode="r")``)
  and loaded into memory (npz), which is why retort reads rows with positioned reads.
- on-demand speed: fit time of the same rows and model read on demand (DataLoader) over in memory (tensor
  slices).
- image DataLoader path: ``retort run`` on shapes-resnet against a hand-written loop with the same DataLoader
  settings (workers, batch size), model, loss, optimizer, schedule, determinism and validation pass (loss and
  accuracy), the two taking turns epoch by epoch in two processes (``turns.py`` says why and how). The goal
  (<= 1.05x: the same throughput within 5 %) is on the time per training sample in the epochs after the first,
  each epoch counted from its start to the next one's (training, validation, the epoch's end): per round (a
  pair of processes) the ratio of the sums, and the median of the rounds. Beside it the first epoch (it starts
  the DataLoader workers) and the time each step waits for data in both. By default 2 workers, 6 epochs, 4
  rounds (balanced over the leader and the process slots); ``--epochs 16 --repeats 8`` is steadier.
Other figures: A and B run alternately (A B A B ...) and the median of the per-pair ratios is quoted.
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
sys.path.insert(0, str(REPO / "scripts"))

from turns import Turns, compare, take_rounds  # noqa: E402

# a child process: train one epoch on the rows in FOLDER, read as HOW; print the peak resident set in MB
_CHILD = r"""
import resource, sys
import numpy as np, torch
from torch.utils.data import Dataset
from retort import plugins, recipes
from retort.plugins.data import Batch, DataSets
from retort.recipes.schema import resolve

folder, how, uri = sys.argv[1:4]

class Mapped(Dataset):
    reads_batches = True
    def __init__(self):
        self.x = np.load(f"{folder}/x.npy", mmap_mode="r")
        self.y = torch.from_numpy(np.load(f"{folder}/y.npy"))
    def __len__(self):
        return len(self.x)
    def __getitems__(self, idx):
        return Batch((torch.from_numpy(self.x[np.asarray(idx)]), self.y[idx]))
    def __getitem__(self, i):
        x, y = self.__getitems__([i])
        return x[0], y[0]

@plugins.register("data", "bench_mapped")
def mapped() -> DataSets:
    "Rows memory-mapped (the alternative measured)."
    return DataSets(Mapped(), task="binary", name="mapped")

data = {"on_demand": {"name": "npy", "path": folder}, "mapped": {"name": "bench_mapped"},
        "in_memory": {"name": "npz", "path": f"{folder}.npz", "scale": "none"}}[how]
recipe = resolve({"seed": 0, "data": {**data, "batch_size": 512, "eval_batch_size": 512},
                  "model": {"name": "linear"}, "loss": "logitbinarycrossentropy",
                  "trainer": {"max_epochs": 1, "accelerator": "cpu"},
                  "tracking": {"experiment": "bench-data", "checkpoint": False, "system_metrics": False}})
recipes.run(recipe, tracking_uri=uri, quiet=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def write_rows(folder: Path, megabytes: int, width: int = 1024, npz: bool = False) -> None:
    """``megabytes`` of float32 rows (two classes, shifted means) into folder/x.npy and folder/y.npy, in chunks."""
    import numpy as np

    rows = megabytes * 2**20 // (4 * width)
    folder.mkdir(parents=True)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32, shape=(rows, width))
    y = np.arange(rows) % 2
    rng = np.random.default_rng(0)
    for start in range(0, rows, 4096):
        stop = min(rows, start + 4096)
        x[start:stop] = rng.standard_normal((stop - start, width), dtype=np.float32) + y[start:stop, None] * 0.1
    x.flush()
    np.save(folder / "y.npy", y)
    if npz:
        np.savez(f"{folder}.npz", x=np.load(folder / "x.npy"), y=y)
    del x


def peak_rss(folder: Path, how: str, uri: str) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(folder), how, uri], capture_output=True, text=True,
                         env={**os.environ, "MALLOC_ARENA_MAX": "2"})
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.split()[-1])


def memory(tmp: Path, scale: int, uri: str) -> list[dict]:
    small, large = tmp / "rows1x", tmp / "rows10x"
    write_rows(small, scale, npz=True)
    write_rows(large, 10 * scale, npz=True)
    peak_rss(small, "on_demand", uri)  # warm-up: imports, the page cache
    rows = []
    for how in ("on_demand", "mapped", "in_memory"):
        a, b = peak_rss(large, how, uri), peak_rss(small, how, uri)
        rows.append({"figure": f"memory, {how.replace('_', ' ')}: peak RSS at {10 * scale} MB over {scale} MB",
                     "a": a, "b": b, "ratio": a / b, "unit": "MB", "goal": "<= 1.10x" if how == "on_demand" else ""})
    return rows


def on_demand_speed(tmp: Path, repeats: int, uri: str) -> dict:
    from retort import recipes
    from retort.recipes.schema import resolve

    write_rows(tmp / "speed", 20, width=256, npz=True)
    base = {"seed": 0, "model": {"name": "mlp", "hidden": [256]}, "loss": "logitbinarycrossentropy",
            "trainer": {"max_epochs": 2, "accelerator": "cpu"},
            "tracking": {"experiment": "bench-data", "checkpoint": False, "system_metrics": False}}
    disk = resolve({**base, "data": {"name": "npy", "path": str(tmp / "speed"), "batch_size": 256}})
    memory_ = resolve({**base, "data": {"name": "npz", "path": f"{tmp / 'speed'}.npz", "scale": "none",
                                        "batch_size": 256}})
    fit = lambda r: recipes.run(r, tracking_uri=uri, quiet=True).fit_seconds  # noqa: E731
    fit(disk), fit(memory_)
    pairs = [(fit(disk), fit(memory_)) for _ in range(repeats)]
    return _row("on-demand .npy rows over the same rows in memory (20 MB, MLP 256)", pairs, "")


def _row(figure: str, pairs: list[tuple[float, float]], goal: str, **extra: float) -> dict:
    ratios = [a / b for a, b in pairs]
    return {"figure": figure, "a": statistics.median(a for a, _ in pairs), "b": statistics.median(b for _, b in pairs),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios), "unit": "s",
            "goal": goal, **extra}


class _Waits:
    """Seconds each training step waits for its batch: from one batch's end to the next one's start."""

    def __init__(self) -> None:
        self.total, self.steps, self.last = 0.0, 0, 0.0

    def epoch(self) -> None:
        self.last = time.perf_counter()

    def batch(self) -> None:
        self.total += time.perf_counter() - self.last
        self.steps += 1

    def batch_end(self) -> None:
        self.last = time.perf_counter()


class _Augmented:
    """A user's training set: each image through the data set's own crop and flip."""

    def __init__(self, ds):
        import torch

        self.ds, self.g = ds, torch.Generator()

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds.sample(i, self.g)


def hand_written_images(recipe, built, turns: Turns) -> _Waits:
    """The seed's loop over the same data sets, written as a user would for this recipe: a torch DataLoader with
    the same settings, the same model, loss, optimizer and per-step schedule, a validation pass with the loss
    and accuracy each epoch, and the recipe's determinism (``torch.use_deterministic_algorithms``: retort's
    default, for exact reruns, costs a few per cent on either side)."""
    import torch
    from torch.utils.data import DataLoader

    from retort import plugins
    from retort.recipes.schema import plugin_spec

    d, epochs = recipe.data, recipe.trainer["max_epochs"]
    torch.manual_seed(recipe.seed)
    torch.use_deterministic_algorithms(bool(recipe.trainer["deterministic"]))
    model = plugins.build("model", plugin_spec("model", recipe.model), built.splits.info)
    loss_fn = plugins.build("loss", recipe.loss)
    opt = plugins.build("optimizer", plugin_spec("optimizer", recipe.optimizer), model.parameters())
    workers = {"num_workers": d["num_workers"]}
    if d["num_workers"]:
        workers.update(persistent_workers=d["persistent_workers"], prefetch_factor=d["prefetch_factor"])

    train = DataLoader(_Augmented(built.splits.train), batch_size=d["batch_size"], shuffle=True, **workers)
    val = DataLoader(built.splits.val, batch_size=d["eval_batch_size"], **workers)
    schedule = None
    if recipe.scheduler is not None:
        schedule = plugins.build("scheduler", plugin_spec("scheduler", recipe.scheduler), opt,
                                 total=len(train) * epochs)
    waits = _Waits()
    for _epoch in range(epochs):
        turns.next()
        waits.epoch()
        model.train()
        for x, y in train:
            waits.batch()
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if schedule is not None:
                schedule.step()
            waits.batch_end()
        model.eval()
        total, right, n = 0.0, 0, 0
        with torch.no_grad():
            for x, y in val:
                out = model(x)
                total += loss_fn(out, y).item() * len(x)
                right += int((out.argmax(1) == y).sum())
                n += len(x)
    turns.done()
    return waits


def _image_side(args: tuple[str, list[str], str], turns: Turns) -> dict:
    """One side of the image figure, in its own process: retort's ``recipes.run`` or the hand-written loop."""
    import pytorch_lightning as pl

    from retort import recipes
    from retort.recipes.runner import build

    side, overrides, uri = args
    recipe = recipes.load("shapes-resnet", overrides)
    if side == "hand":
        waits = hand_written_images(recipe, build(recipe), turns)
    else:
        waits = _Waits()

        class Waits(pl.Callback):
            def on_train_epoch_start(self, trainer, m) -> None:
                waits.epoch()

            def on_train_batch_start(self, trainer, m, batch, i) -> None:
                waits.batch()

            def on_train_batch_end(self, trainer, m, outputs, batch, i) -> None:
                waits.batch_end()

        recipes.run(recipe, tracking_uri=uri, quiet=True, callbacks=[turns.callback(), Waits()])
    return {"wait": waits.total / waits.steps}


def image_loader(repeats: int, uri: str, workers: int, epochs: int, overrides: list[str], a: str = "retort",
                 b: str = "hand") -> dict:
    """Time per training sample, epoch by epoch, with retort and the hand-written loop taking turns (one
    process each): the epochs after the first (what a long run spends), and the first apart (it starts the
    DataLoader workers). ``repeats`` rounds, balanced over the leader and the process slots. ``a`` and ``b``
    name the sides ("retort" or "hand"): the same on both is the figure's noise floor (``--same``)."""
    from retort import recipes
    from retort.recipes.runner import build

    overrides = [f"trainer.max_epochs={epochs}", f"data.num_workers={workers}",
                 f"data.persistent_workers={workers > 0}", "tracking.system_metrics=false", *overrides]
    recipe = recipes.load("shapes-resnet", overrides)
    samples = len(build(recipe).splits.train)  # generates the images once, before the figure
    rounds, first, waits = [], [], ([], [])
    for x, y in take_rounds(_image_side, (a, overrides, uri), (b, overrides, uri), repeats):
        rounds.append((x["turns"], y["turns"]))
        first.append(x["turns"][0] / y["turns"][0])
        waits[0].append(x["wait"])
        waits[1].append(y["wait"])
    c = compare(rounds)
    determinism = "deterministic" if recipe.trainer["deterministic"] else "not deterministic"
    sides = "" if (a, b) == ("retort", "hand") else f" ({a} against {b})"
    return {"figure": f"image DataLoader path{sides}, shapes-resnet, {workers} workers, {determinism}: time per "
                      f"sample, epochs 2-{epochs}", "a": c["a_epoch"], "b": c["b_epoch"], "unit": "s",
            "goal": "<= 1.05x" if a != b else "1.00x (noise floor)",
            **c, "first": statistics.median(first), "samples_s": samples / c["a_epoch"],
            "hand_samples_s": samples / c["b_epoch"], "wait_ms": 1000 * statistics.median(waits[0]),
            "hand_wait_ms": 1000 * statistics.median(waits[1]),
            "sides": ["retort" if a == "retort" else "hand-written", "retort" if b == "retort" else "hand-written"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4, help="A/B pairs, or rounds of turns, per figure (default 4)")
    parser.add_argument("--scale", type=int, default=20, help="MB of rows at 1x for the memory figure (default 20)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the image figure, at least 2 (default 6)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="DataLoader workers (default 2)")
    parser.add_argument("--parts", nargs="+", default=["memory", "speed", "images"],
                        help="which figures (default: memory speed images)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the image recipe for both sides (e.g. trainer.deterministic=false)")
    parser.add_argument("--same", choices=["hand", "retort"],
                        help="the image figure with this side on both sides: how far two identical sides differ")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        os.chdir(tmp)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments()  # migrate the store once, outside the figures
        if "memory" in args.parts:
            rows += memory(tmp, args.scale, uri)
        if "speed" in args.parts:
            rows.append(on_demand_speed(tmp, args.repeats, uri))
        for workers in args.workers if "images" in args.parts else []:
            sides = (args.same, args.same) if args.same else ("retort", "hand")
            rows.append(image_loader(args.repeats, uri, workers, args.epochs, args.overrides, *sides))
    print(f"{'figure':<72} {'A':>9} {'B':>9} {'ratio':>7}  goal")
    for row in rows:
        spread = f"  ({row['ratio_min']:.3f}-{row['ratio_max']:.3f})" if "ratio_min" in row else ""
        if "pairs" in row:
            spread = f"  (rounds {', '.join(f'{r:.3f}' for r in row['rounds'])})"
        print(f"{row['figure']:<72} {row['a']:>8.2f}{row['unit']:<1} {row['b']:>8.2f}{row['unit']:<1} "
              f"{row['ratio']:>6.3f}x  {row['goal']}{spread}")
        if "pairs" in row:
            print(f"{'':<4}{row['pairs']} epoch pairs taking turns: epoch (median) {row['a']:.3f} s against "
                  f"{row['b']:.3f} s, {row['samples_s']:.0f} against {row['hand_samples_s']:.0f} samples/s; the first "
                  f"epoch (starting the workers) {row['first']:.3f}x; data wait per step: {row['sides'][0]} "
                  f"{row['wait_ms']:.2f} ms, {row['sides'][1]} {row['hand_wait_ms']:.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
