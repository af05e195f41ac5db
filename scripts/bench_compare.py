"""Benchmark ``retort compare`` on a generated store of 1,000 runs of one experiment.

The runs are written straight into a fresh SQLite store with ``MlflowClient.log_batch`` (no training):
digits-mlp's 67 params with lr, batch size and seed varied, the tags a run carries, per-epoch
``train/loss_epoch``, ``val/loss``, ``val/accuracy``, per-step ``train/loss`` and ``lr``, and
``test/*`` once, about 1,000 metric values per run as a real 20-epoch run logs them. Then, side by side
and alternating (median of ``--repeat``):

- ``retort compare --experiment bench`` (a subprocess, imports included) against its floor: a bare
  Python that imports MLflow and reads the same runs with ``search_runs`` pages;
- best values from one SQL ``GROUP BY`` against one ``get_metric_history`` call per run (in-process);
- the HTML report of 200 runs: wall time and size.

usage: .venv/bin/python scripts/bench_compare.py [--runs 1000] [--report-runs 200] [--repeat 3] [--store DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent


def generate(uri: str, experiment: str, runs: int, epochs: int = 20, steps_per_epoch: int = 23,
             seed: int = 0) -> float:
    """Write ``runs`` runs into ``experiment``; returns the seconds it took."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from retort import recipes

    rng = random.Random(seed)
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment)
    base = recipes.load("digits-mlp").flat()
    start = time.perf_counter()
    for i in range(runs):
        lr = 10 ** rng.uniform(-4, -1)
        batch = rng.choice([16, 32, 64, 128])
        params = {**base, "optimizer.lr": lr, "data.batch_size": batch, "seed": i % 3}
        tags = {"retort.version": "0.1.0", "retort.recipe": "digits-mlp", "retort.seed": str(i % 3),
                "retort.command": "retort run digits-mlp", "mlflow.source.name": "retort"}
        run = client.create_run(exp_id, run_name=f"bench-{i:04d}", tags=tags)
        t0 = 1_700_000_000_000 + i * 60_000
        quality = 1.0 / (1.0 + abs(math.log10(lr) + 2.5)) + rng.gauss(0, 0.02)
        metrics = []
        step = 0
        for e in range(1, epochs + 1):
            decay = math.exp(-e * quality / 4)
            for _ in range(steps_per_epoch):
                step += 1
                metrics.append(Metric("train/loss", 2.3 * decay + rng.random() * 0.1, t0 + step, step))
                metrics.append(Metric("lr", lr, t0 + step, step))
            val = 2.3 * decay + 0.2 * (e / epochs) ** 2 + rng.gauss(0, 0.01)
            metrics += [Metric("train/loss_epoch", 2.3 * decay, t0 + step, e), Metric("val/loss", val, t0 + step, e),
                        Metric("val/accuracy", min(1.0, 1 - val / 2.5), t0 + step, e)]
        metrics += [Metric("test/loss", val, t0 + step + 1, epochs), Metric("test/accuracy", 1 - val / 2.5,
                                                                              t0 + step + 1, epochs)]
        plist = [Param(k, str(v)) for k, v in params.items()]
        for j in range(0, len(plist), 100):
            client.log_batch(run.info.run_id, params=plist[j: j + 100])
        for j in range(0, len(metrics), 1000):
            client.log_batch(run.info.run_id, metrics=metrics[j: j + 1000])
        client.set_terminated(run.info.run_id, "FINISHED", end_time=t0 + 50_000)
    return time.perf_counter() - start


FLOOR = """
import gc
import sys
gc.disable()  # as retort compare does
from mlflow import MlflowClient
c = MlflowClient(tracking_uri=sys.argv[1])
exp = c.get_experiment_by_name(sys.argv[2])
n, token = 0, None
while True:
    page = c.search_runs([exp.experiment_id], max_results=1000, page_token=token)
    n += len(page)
    token = page.token
    if not token:
        break
print(n)
gc.freeze()
"""


PHASES = """
import gc, io, sys, time
gc.disable()
t = [time.perf_counter()]
from retort.tracking.compare import compare, print_table, select
from mlflow import MlflowClient
t.append(time.perf_counter())
sel = select(sys.argv[1], experiments=[sys.argv[2]])
t.append(time.perf_counter())
cmp = compare(sel)
t.append(time.perf_counter())
print_table(cmp, io.StringIO())
t.append(time.perf_counter())
print(" ".join(f"{b - a:.3f}" for a, b in zip(t, t[1:])))
"""


def phases(uri: str, experiment: str, repeat: int) -> list[float]:
    """Median seconds of: imports, reading the runs (search_runs), values and sorting, the rich table."""
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", PHASES, uri, experiment], cwd=REPO, capture_output=True, text=True,
                             check=True)
        runs.append([float(x) for x in out.stdout.split()])
    return [statistics.median(column) for column in zip(*runs)]


def timed(cmd: list[str], cwd: Path) -> float:
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--report-runs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--store", type=Path, help="folder for the generated store (default: a temporary one); "
                                                  "reused when it already holds one")
    args = parser.parse_args()
    folder = args.store or Path(tempfile.mkdtemp(prefix="bench-compare-"))
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    uri = f"sqlite:///{db}"
    if not db.exists():
        s1 = generate(uri, "bench", args.runs)
        s2 = generate(uri, "bench-report", args.report_runs, seed=1)
        print(f"generated {args.runs} + {args.report_runs} runs in {s1 + s2:.0f} s ({db}, "
              f"{db.stat().st_size / 1e6:.0f} MB)")

    retort = str(BIN / "retort")
    compare_cmd = [retort, "compare", "--experiment", "bench", "--tracking-uri", uri]
    floor_cmd = [sys.executable, "-c", FLOOR, uri, "bench"]
    last_cmd = [*compare_cmd, "--summary", "last"]
    timed(compare_cmd, folder)  # warm the page cache
    t_cmp, t_floor, t_last = [], [], []
    for _ in range(args.repeat):
        t_cmp.append(timed(compare_cmd, folder))
        t_floor.append(timed(floor_cmd, folder))
        t_last.append(timed(last_cmd, folder))
    cmp_s, floor_s, last_s = (statistics.median(t) for t in (t_cmp, t_floor, t_last))
    print(f"retort compare, {args.runs} runs (last and best of 5 metrics): {cmp_s:.2f} s "
          f"(goal < 3 s); floor (import mlflow + search_runs pages): {floor_s:.2f} s; ratio {cmp_s / floor_s:.2f}x")
    print(f"retort compare --summary last (no history read): {last_s:.2f} s; ratio to floor {last_s / floor_s:.2f}x")
    imports, read, values, table = phases(uri, "bench", args.repeat)
    print(f"in one process: imports {imports:.2f} s, store and search_runs {read:.2f} s, best values and sorting "
          f"{values:.2f} s, rich table {table:.2f} s")

    from retort.tracking.compare import extremes, select

    sel = select(uri, experiments=["bench"])
    ids = [r.run_id for r in sel.runs]
    t_sql, t_client = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        a = extremes(sel, ids, ["val/loss"], backend="sql")
        t_sql.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = extremes(sel, ids, ["val/loss"], backend="client")
        t_client.append(time.perf_counter() - t0)
    assert a == b, "the SQL and client backends disagree"
    sql_s, client_s = statistics.median(t_sql), statistics.median(t_client)
    print(f"best val/loss of {len(ids)} runs: one SQL GROUP BY {sql_s:.3f} s, one get_metric_history per run "
          f"{client_s:.3f} s ({client_s / sql_s:.0f}x)")

    html = folder / "report.html"
    t_html = [timed([retort, "compare", "--experiment", "bench-report", "--tracking-uri", uri, "--html", str(html),
                     "-q"], folder) for _ in range(args.repeat)]
    print(f"HTML report of {args.report_runs} runs: {statistics.median(t_html):.2f} s, "
          f"{html.stat().st_size / 1e6:.2f} MB (goal < 5 MB)")


if __name__ == "__main__":
    main()
