"""retort's performance figures, each a ratio against a baseline measured in the same run.

    scripts/bench                 # all figures, about ten minutes on 2 cores (tracking: seven)
    scripts/bench --repeats 7     # more pairs for steadier medians

Figures (goals from the issues; the bench reports, it never fails):
- loop overhead: ``retort run`` fit time (tracking on: per-step losses recorded, best checkpoint kept)
  over a hand-written PyTorch loop in the seed's style with a torch DataLoader, same model, loss,
  optimizer, data, batch size and epochs, and a validation pass per epoch. Goal <= 1.0x on digits-mlp,
  <= 1.05x on a model whose step takes about 20 ms.
- tracking overhead: what recording every step and the resumable checkpoint add over both off, as the time
  training spends in them over the fit time (resolves 0.1 %), and end to end with the two sides taking turns
  epoch by epoch in two processes (``turns.py``); the cost of a resumable checkpoint, and what a SIGKILL loses
  (values, and training a resume redoes): ``scripts/bench_tracking.py``, whose docstring says how each is
  measured. Goals <= 3 % on digits-mlp and <= 1 % on a model whose step takes about 20 ms.
- telemetry overhead: fit time with the ``perf/*`` values (``tracking.telemetry``) over without. Goal <= 1.01x.
- whole processes: ``retort run digits-mlp`` and a hand-written script (torch.optim.Adam, a DataLoader, a
  validation pass per epoch, one thread each) at 10 and 110 epochs; the per-epoch cost of the difference.
  Goal <= 1.0x.
- run set-up: seconds MLflow set-up adds to a run on an existing store (creating the run with every
  param and tag, recipe, environment, data input, code state). Goal <= 0.5 s.
- start-up: wall time of ``retort --help`` and ``retort recipes`` (goal < 0.5 s each).
A and B run alternately in one process (A B A B ...) and the median of the per-pair ratios is quoted; the
tracking rows that take turns quote the median of their rounds' ratios of summed epoch times, and the range.
``--only tracking`` (or loop, telemetry, process, setup, startup) runs some rows.
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
sys.path.insert(0, str(REPO / "scripts"))

from bench_tracking import (  # noqa: E402
    MLP_20MS,
    TWENTY_MS,
    checkpoint_cost,
    kill_loss,
    overhead_line,
    report,
    share_line,
    tracking_overhead,
    tracking_share,
)
from spent import inside  # noqa: E402


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


HAND_SCRIPT = """
import sys, torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(0)
epochs = int(sys.argv[1])
x, y = load_digits(return_X_y=True)
xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
xtr, xva, ytr, yva = train_test_split(xtr, ytr, test_size=0.25, stratify=ytr, random_state=0)
scaler = StandardScaler().fit(xtr)
rows = lambda a: torch.tensor(scaler.transform(a), dtype=torch.float32)
train = DataLoader(TensorDataset(rows(xtr), torch.tensor(ytr)), batch_size=64, shuffle=True)
val = DataLoader(TensorDataset(rows(xva), torch.tensor(yva)), batch_size=1024)
test = DataLoader(TensorDataset(rows(xte), torch.tensor(yte)), batch_size=1024)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.2),
                      nn.Linear(64, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()


def evaluate(loader):
    model.eval()
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for xb, yb in loader:
            out = model(xb)
            total += loss_fn(out, yb).item() * len(xb)
            correct += (out.argmax(1) == yb).sum().item()
            n += len(xb)
    return total / n, correct / n


for epoch in range(epochs):
    model.train()
    total, batches = 0.0, 0
    for xb, yb in train:
        loss = loss_fn(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()
        batches += 1
    val_loss, val_acc = evaluate(val)
    print(f"epoch {epoch + 1}  train loss {total / batches:.4f}  val loss {val_loss:.4f}  val accuracy {val_acc:.4f}")
print("test loss %.4f  test accuracy %.4f" % evaluate(test))
"""


def process_overhead(repeats: int, tmp: Path, epochs: tuple[int, int] = (10, 110)) -> dict:
    """Whole processes as a user meets them: ``retort run digits-mlp`` (tracking on) and a hand-written script
    (torch.optim.Adam, a DataLoader, a validation pass per epoch), one thread each, at two epoch counts: the
    difference is the cost of the extra epochs, start-up cancelled."""
    script = tmp / "hand_written.py"
    script.write_text(HAND_SCRIPT)
    exe = str(Path(sys.executable).with_name("retort"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def seconds(cmd: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return time.perf_counter() - start

    def ours(e: int) -> float:
        return seconds([exe, "run", "digits-mlp", "-s", f"trainer.max_epochs={e}", "-s", "trainer.threads=1", "-q"])

    def theirs(e: int) -> float:
        return seconds([sys.executable, str(script), str(e)])

    few, many = epochs
    ours(few), theirs(few)  # warm the file cache and the store
    per_epoch = []
    for _ in range(repeats):
        a = (ours(many) - ours(few)) / (many - few)
        b = (theirs(many) - theirs(few)) / (many - few)
        per_epoch.append((a, b))
    ratios = [a / b for a, b in per_epoch]
    return {"figure": f"whole processes, digits-mlp, per epoch ({few} vs {many} epochs, 1 thread)",
            "retort_fit_s": statistics.median(a for a, _ in per_epoch),
            "hand_written_fit_s": statistics.median(b for _, b in per_epoch),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def telemetry_overhead(repeats: int, uri: str) -> dict:
    from retort import recipes

    on = recipes.load("digits-mlp", ["tracking.telemetry=true"])
    off = recipes.load("digits-mlp", ["tracking.telemetry=false"])
    retort_fit(on, uri)
    retort_fit(off, uri)
    pairs = [(retort_fit(on, uri), retort_fit(off, uri)) for _ in range(repeats)]
    ratios = [a / b for a, b in pairs]
    return {"figure": "telemetry (perf/*) on over off, digits-mlp", "retort_fit_s":
            statistics.median(a for a, _ in pairs), "hand_written_fit_s": statistics.median(b for _, b in pairs),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def telemetry_share(repeats: int, uri: str) -> float:
    """Time spent inside the telemetry's hooks over the fit time, in the same runs: steadier than on over off
    on a busy machine, where two fits differ by more than the telemetry costs."""
    from retort import recipes
    from retort.recipes.throughput import Throughput

    hooks = ("on_train_batch_start", "on_train_batch_end", "on_train_epoch_start", "on_train_epoch_end")
    recipe = recipes.load("digits-mlp")
    shares = []
    with inside([(Throughput, name) for name in hooks]) as spent:
        for _ in range(repeats):
            spent.reset()
            fit = retort_fit(recipe, uri)
            shares.append(spent.seconds / fit)
    return statistics.median(shares)


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


def first_line(cmd: list[str], repeats: int) -> float:
    """Seconds from starting ``cmd`` on a pseudo-terminal to the first thing it writes (the person at the
    terminal waits this long on a blank screen); the command is killed then, before it records anything."""
    import pty
    import signal

    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        pid, fd = pty.fork()
        if pid == 0:
            os.execv(cmd[0], cmd)
        os.read(fd, 1)
        times.append(time.perf_counter() - t)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    return statistics.median(times[1:])


ROWS = ("loop", "tracking", "telemetry", "process", "setup", "startup")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="A/B pairs per figure (default 5)")
    parser.add_argument("--only", default=",".join(ROWS), help=f"rows to run, comma-separated ({','.join(ROWS)})")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    only = set(args.only.split(","))

    exe = str(Path(sys.executable).with_name("retort"))
    rows, goals, figures = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["RETORT_SPOOL"] = str(Path(tmp) / "spool")
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments()  # migrate the store once, outside the timings
        if "loop" in only:
            rows.append(loop_overhead("digits-mlp as shipped (40 epochs)", [], args.repeats, uri))
            rows.append(loop_overhead("digits, MLP 1024-1024, batch 256 (5 epochs)",
                                      ["trainer.max_epochs=5", *MLP_20MS], args.repeats, uri))
            goals += [1.0, 1.05]
        if "tracking" in only:
            rounds = max(4, args.repeats // 2)  # a round is two processes taking turns: about 30 s
            rows.append(tracking_overhead(rounds, uri))
            rows.append(tracking_overhead(rounds, uri, TWENTY_MS, MLP_20MS, epochs=100))
            goals += [1.03, 1.01]
            figures["tracking_share"] = [tracking_share(uri, epochs=400),
                                         tracking_share(uri, TWENTY_MS, MLP_20MS, epochs=150)]
            figures["checkpoint"] = checkpoint_cost(uri)
            figures["kill"] = kill_loss(Path(tmp))
        if "telemetry" in only:
            rows.append(telemetry_overhead(args.repeats, uri))
            goals.append(1.01)
            figures["telemetry_share"] = telemetry_share(args.repeats, uri)
        if "process" in only:
            rows.append(process_overhead(max(1, args.repeats // 2), Path(tmp)))
            goals.append(1.0)
        if "setup" in only:
            figures["setup_s"] = run_setup(args.repeats, uri)
        if "startup" in only:
            figures["help_s"] = wall([exe, "--help"], args.repeats)
            figures["recipes_s"] = wall([exe, "recipes"], args.repeats)
            figures["first_line_s"] = first_line([exe, "run", "digits-mlp"], args.repeats)

    print(f"{'figure':<58} {'retort':>9} {'baseline':>9} {'ratio':>7}  (min-max)      goal")
    for row, goal in zip(rows, goals):
        if "rounds" in row:
            print(overhead_line(row, goal))
            continue
        step = f"   [hand-written step {row['hand_step_ms']:.2f} ms]" if "hand_step_ms" in row else ""
        print(f"{row['figure']:<58} {row['retort_fit_s']:>8.3f}s {row['hand_written_fit_s']:>8.3f}s "
              f"{row['ratio']:>6.3f}x  ({row['ratio_min']:.3f}-{row['ratio_max']:.3f})  <= {goal}x{step}")
    blank = f"{'':>9} {'':>7}  {'':<14}"
    if "telemetry_share" in figures:
        print(f"{'telemetry: time in its hooks over fit time, digits-mlp':<58} "
              f"{100 * figures['telemetry_share']:>8.2f}% {blank} <= 1 %")
    if "setup_s" in figures:
        print(f"{'run set-up on an existing store (MLflow)':<58} {figures['setup_s']:>8.3f}s {blank} <= 0.5 s")
    if "help_s" in figures:
        print(f"{'start-up: retort --help':<58} {figures['help_s']:>8.3f}s {blank} < 0.5 s")
        print(f"{'start-up: retort recipes':<58} {figures['recipes_s']:>8.3f}s {blank} < 0.5 s")
        first = figures["first_line_s"]
        print(f"{'start-up: first line of retort run on a terminal':<58} {first:>8.3f}s {blank} < 1 s")
    for share, goal in zip(figures.get("tracking_share", []), (1.03, 1.01)):
        print(share_line(share, goal))
    if "kill" in figures:
        print(report(figures["checkpoint"], figures["kill"]))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, **figures}, indent=2))


if __name__ == "__main__":
    main()
