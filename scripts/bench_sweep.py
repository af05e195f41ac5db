"""Sweep figures, each a ratio measured side by side in one run (the bench reports; it never fails).

    .venv/bin/python scripts/bench_sweep.py            # all figures, about 10 minutes on 2 cores
    .venv/bin/python scripts/bench_sweep.py --quick    # fewer trials and seeds, to try it out
    .venv/bin/python scripts/bench_sweep.py --only packed   # packed trials alone: about 2 minutes on 2 cores

Figures (goals from issues 4 and 12):

- per-trial overhead: digits-mlp trials of about 2 s (epochs calibrated to that; one torch thread, whose
  fit times hold steady where two threads on two cores stall whenever anything else runs), no pruning,
  20 trials. Per trial: its span in the study (ask to tell: sampling, the whole recipe run with its record,
  pruning reports) over its fit time, summed over the trials. Goal <= 1.10. Also the whole sweep's wall
  time over the sum of fit times, which adds the sweep's fixed costs (reported in seconds): for the engine
  in a warm process (``retort.recipes.sweep.sweep``: study, parent run, best recipe, importances, plots) and
  for the ``retort sweep`` command as typed (interpreter start and imports of torch, Lightning and MLflow
  included, about 5 s on 2 cores).
- workers: trials per minute of ``retort sweep --workers 2`` over ``--workers 1``, the same 16 trials, 3 pairs; with
  each worker's fair share of the cores as threads (one worker: torch's default, all cores) and with one
  thread per trial; pairs run alternately, the median ratio quoted. Trials per minute while the sweep runs
  trials (first trial's start to last trial's end: the rate a long sweep sustains; goal >= 1.7x on two
  cores), and over the whole command (start-up and conclusion included).
- search: hyperband pruning against no pruning, TPE, the same trial count and seed, digits-mlp with a
  27-epoch budget, one torch thread; compute = epochs trained (seconds of fit also shown). Per seed, the
  unpruned sweep's best validation loss is the target; the figure is the unpruned sweep's total compute
  over the pruned sweep's compute up to the trial that first reaches the target (0 when none does).
  Median over seeds. Goal >= 3x.
- packed trials: the same small trials (digits-mlp, about 1 s of fit each with a packed worker's share)
  by ``retort sweep --workers K`` packed on one device against ``--workers 1`` running them one after
  another with the whole device, which is what a user would otherwise run. On the CPU the shared resource
  is the threads: K workers of cpus / K threads each against one worker with torch's default (all cores),
  and, to tell packing's own gain from the threads', against one worker with cpus / K threads
  (``OMP_NUM_THREADS``). On a GPU (``--device cuda``, the default where there is one): GPU 0 with
  ``--trials-per-gpu K``, each worker an even share of its memory, against one worker alone on it. The
  trials' span (first trial's start to last trial's end: the rate a sweep sustains; goal >= 1.5x against
  the whole device) and the whole command's wall time (start-up and conclusion, the same on both sides,
  included), alternating rounds, median ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

SPACE = ("sweep.space={optimizer.lr: {low: 1.0e-4, high: 1.0e-1, log: true}, "
         "data.batch_size: {choices: [16, 32, 64, 128]}}")
LR_ONLY = "sweep.space={optimizer.lr: {low: 1.0e-4, high: 1.0e-1, log: true}}"  # trials of equal cost


def trials_of(storage: str, study: str) -> list:
    import optuna

    from retort.recipes.sweep.storage import open_storage

    loaded = optuna.load_study(study_name=study, storage=open_storage(storage))
    return sorted(loaded.get_trials(deepcopy=False), key=lambda t: t.number)


def calibrate(folder: Path, target: float, threads: int | None = None, device: str | None = None) -> int:
    """Epochs of digits-mlp whose fit takes about ``target`` seconds here (with ``threads`` torch threads, on
    ``device``: ``cuda``, else the recipe's CPU)."""
    from retort import recipes

    uri = f"sqlite:///{folder / 'calibrate.db'}"
    sets = ["trainer.max_epochs=20", "tracking.system_metrics=false"]
    if device:
        sets.append(f"trainer.accelerator={device}")
    recipe = recipes.load("digits-mlp", [*sets, f"trainer.threads={threads}"] if threads else sets)
    recipes.run(recipe, tracking_uri=uri, quiet=True)  # warm-up: imports, first-call costs
    fit = min(recipes.run(recipe, tracking_uri=uri, quiet=True).fit_seconds for _ in range(2))
    return max(2, round(20 * target / fit))


def spans(done: list) -> dict[str, float]:
    """From a study's trials: fit seconds, trial spans (ask to tell), and the first start and last end."""
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    return {"fits": sum(t.user_attrs["fit_seconds"] for t in done),
            "spans": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done),
            "first": first.timestamp(), "last": last.timestamp(), "trials_s": (last - first).total_seconds()}


def overhead(folder: Path, epochs: int, trials: int) -> dict[str, float]:
    from retort.recipes import sweep as sw
    from retort.recipes.sweep.storage import default_journal

    uri = f"sqlite:///{folder / 'overhead.db'}"
    sets = [f"trainer.max_epochs={epochs}", "trainer.threads=1", "sweep.pruner=none", LR_ONLY]
    start = time.time()
    result = sw.sweep("digits-mlp", overrides=sets, trials=trials, study="engine", tracking_uri=uri, quiet=True)
    engine = spans(trials_of(result.storage, result.study))
    engine.update(wall=result.wall_seconds, before=engine["first"] - start,
                  after=start + result.wall_seconds - engine["last"])
    cmd = [str(Path(sys.executable).with_name("retort")), "sweep", "digits-mlp", "--trials", str(trials),
           "--study", "command", "--tracking-uri", uri, "-q", *[a for s in sets for a in ("-s", s)]]
    start = time.time()
    subprocess.run(cmd, check=True, capture_output=True, cwd=folder)
    wall = time.time() - start
    command = spans(trials_of(str(default_journal(uri, "command")), "command"))
    command.update(wall=wall, before=command["first"] - start, after=start + wall - command["last"])
    return {"engine": engine, "command": command}


def workers(folder: Path, epochs: int, trials: int, threads: int | None = None, repeats: int = 2) -> list[dict]:
    """Trials per minute of the command with 1 and 2 workers, run alternately ``repeats`` times (load from
    other processes drifts; each pair is measured side by side). ``threads``: torch threads per trial,
    default each worker's fair share of the cores. Per pair and worker count: the rate while trials run
    (first start to last end) and over the whole command."""
    from retort.recipes.sweep.storage import default_journal

    pairs = []
    for r in range(repeats):
        rate = {}
        for k in (1, 2):
            name = f"workers{k}-{threads}-{r}"
            uri = f"sqlite:///{folder / name}.db"
            cmd = [str(Path(sys.executable).with_name("retort")), "sweep", "digits-mlp", "--trials", str(trials),
                   "--workers", str(k), "--study", name, "--tracking-uri", uri, "-q",
                   "-s", f"trainer.max_epochs={epochs}", "-s", "sweep.pruner=none", "-s", LR_ONLY]
            if threads:
                cmd += ["-s", f"trainer.threads={threads}"]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=folder)
            wall = time.perf_counter() - start
            s = spans(trials_of(str(default_journal(uri, name)), name))
            rate[k] = {"running": trials / s["trials_s"] * 60, "command": trials / wall * 60}
        pairs.append(rate)
    return pairs


def packed(folder: Path, k: int, trials: int, epochs: int, cuda: bool, repeats: int) -> list[dict]:
    """``retort sweep`` of ``trials`` trials of ``epochs`` epochs on one device (the CPU, or GPU 0): ``k`` workers
    packed on it (``--trials-per-gpu k`` on a GPU), against one worker with the whole device and, on the CPU,
    one worker with a packed worker's share of the threads (``OMP_NUM_THREADS``); alternately, ``repeats``
    times. Per repeat and setting: the command's wall time, the trials' span (first start to last end), and a
    trial's ``retort.threads`` and ``retort.gpu_memory`` tags."""
    from mlflow import MlflowClient

    from retort.recipes.sweep.share import threads
    from retort.recipes.sweep.storage import default_journal
    from retort.tracking.vocabulary import StudyAttr

    share = threads(os.cpu_count() or 1, k)[-1]
    settings = [("whole", 1, None), *([("share", 1, share)] if not cuda else []), ("packed", k, None)]
    rounds = []
    for r in range(repeats):
        got = {}
        for label, n, omp in settings:
            name = f"packed-{label}-{r}"
            uri = f"sqlite:///{folder / name}.db"
            # python -m: also where retort is imported from a source folder (scripts/gpu-check), no console script
            cmd = [sys.executable, "-m", "retort.recipes.cli", "sweep", "digits-mlp", "--trials", str(trials),
                   "--workers", str(n), "--study", name, "--tracking-uri", uri, "-q",
                   "-s", f"trainer.max_epochs={epochs}", "-s", "sweep.pruner=none", "-s", LR_ONLY]
            if cuda:
                cmd += ["--devices", "0", "--trials-per-gpu", str(n), "-s", "trainer.accelerator=cuda"]
            env = {**os.environ, **({"OMP_NUM_THREADS": str(omp)} if omp else {})}
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=folder, env=env)
            wall = time.perf_counter() - start
            done = trials_of(str(default_journal(uri, name)), name)
            tags = MlflowClient(tracking_uri=uri).get_run(done[-1].user_attrs[StudyAttr.RUN_ID]).data.tags
            got[label] = {"wall": wall, "trials_s": spans(done)["trials_s"], "threads": tags.get("retort.threads"),
                          "gpu_memory": tags.get("retort.gpu_memory"), "workers": n,
                          "complete": sum(t.state.name == "COMPLETE" for t in done)}
        rounds.append(got)
    return rounds


def packed_rows(rounds: list[dict], k: int, trials: int, epochs: int, cuda: bool) -> list[tuple]:
    """The figures of :func:`packed`: each baseline's seconds over the packed workers', median over repeats;
    the goal is on the trials against the whole device, what a user would otherwise run."""
    device = "GPU 0" if cuda else "the CPU"
    first = rounds[0]
    packed_how = f"{k} x {first['packed']['threads']} thread(s)" + (
        f", {first['packed']['gpu_memory']}" if first["packed"]["gpu_memory"] else "")
    rows = []
    for base in ("whole", "share"):
        if base not in first:
            continue
        t = first[base]["threads"]
        against = f"1 worker x {t} thread{'s' * (t != '1')}" + (" (the whole device)" if base == "whole" else "")
        for what, key in (("while running trials", "trials_s"), ("whole command", "wall")):
            ratio = statistics.median(r[base][key] / r["packed"][key] for r in rounds)
            detail = ", ".join(f"{r[base][key]:.1f} vs {r['packed'][key]:.1f}" for r in rounds)
            if key == "wall":  # start-up and conclusion: the same fixed cost on both sides
                fixed = [(r[base]["wall"] - r[base]["trials_s"], r["packed"]["wall"] - r["packed"]["trials_s"])
                         for r in rounds]
                detail += "; outside the trials " + ", ".join(f"{a:.1f} vs {b:.1f}" for a, b in fixed)
            rows.append((f"packed trials on {device}: {k} workers over {against}, one after another ({what})",
                         f"{ratio:.2f}x", f"{trials} trials of {epochs} epochs, {packed_how}; seconds: {detail}",
                         ">= 1.5" if base == "whole" and key == "trials_s" else "-"))
    return rows


def search(folder: Path, seed: int, trials: int, epochs: int) -> dict[str, float]:
    from retort.recipes import sweep as sw

    runs = {}
    for pruner in ("none", "hyperband"):
        uri = f"sqlite:///{folder / f'search-{seed}-{pruner}.db'}"
        sets = [f"trainer.max_epochs={epochs}", "trainer.threads=1", f"sweep.pruner={pruner}", "sweep.sampler=tpe",
                SPACE]
        result = sw.sweep("digits-mlp", overrides=sets, trials=trials, seed=seed, study=f"s{seed}-{pruner}",
                          tracking_uri=uri, quiet=True)
        runs[pruner] = trials_of(result.storage, result.study)
    target = min(t.value for t in runs["none"] if t.state.name == "COMPLETE")

    def compute(ts: list, key: str, until: float | None = None) -> float:
        total = 0.0
        for t in ts:
            total += t.user_attrs.get(key, 0)
            if until is not None and t.state.name == "COMPLETE" and t.value <= until:
                return total
        return total if until is None else math.inf

    epochs_u = compute(runs["none"], "epochs")
    epochs_p_total = compute(runs["hyperband"], "epochs")
    epochs_p = compute(runs["hyperband"], "epochs", until=target)
    best_p = min((t.value for t in runs["hyperband"] if t.state.name == "COMPLETE"), default=math.inf)
    return {"target": target, "best_pruned": best_p, "epochs_unpruned": epochs_u, "epochs_pruned_total": epochs_p_total,
            "epochs_pruned_to_target": epochs_p, "ratio": epochs_u / epochs_p,
            "ratio_total": epochs_u / epochs_p_total,
            "seconds_unpruned": compute(runs["none"], "fit_seconds"),
            "seconds_pruned_to_target": compute(runs["hyperband"], "fit_seconds", until=target),
            "pruned": sum(t.state.name == "PRUNED" for t in runs["hyperband"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer trials and seeds")
    parser.add_argument("--seeds", type=int, default=5, help="search: seeds (median over them)")
    parser.add_argument("--only", choices=("overhead", "workers", "search", "packed"), action="append",
                        help="run only these figures (repeatable)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="packed trials: the device they share (default: cuda where there is a GPU)")
    parser.add_argument("--packed", type=int, metavar="K",
                        help="packed trials: workers on the one device (default: 4 on a GPU, else min(cpus, 4))")
    args = parser.parse_args()
    only = set(args.only or ("overhead", "workers", "search", "packed"))
    n_overhead, n_workers, n_search, seeds = (4, 4, 8, 2) if args.quick else (20, 16, 20, args.seeds)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="retort-bench-sweep-") as tmp:
        folder = Path(tmp)
        if only != {"packed"}:
            epochs, epochs1 = calibrate(folder, 2.0), calibrate(folder, 2.0, threads=1)
            print(f"digits-mlp: {epochs} epochs take about 2 s to fit here with torch's threads, {epochs1} with "
                  f"one (cpus: {os.cpu_count()})", flush=True)
        if "overhead" in only:
            o = overhead(folder, epochs1, n_overhead)
            e, c = o["engine"], o["command"]
            rows.append(("per-trial overhead: trial spans / fit times (engine)", f"{e['spans'] / e['fits']:.2f}x",
                         f"{n_overhead} trials: {e['spans']:.1f} s / {e['fits']:.1f} s, "
                         f"{(e['spans'] - e['fits']) / n_overhead:.2f} s a trial", "<= 1.10"))
            rows.append(("per-trial overhead: trial spans / fit times (command)", f"{c['spans'] / c['fits']:.2f}x",
                         f"{c['spans']:.1f} s / {c['fits']:.1f} s", "<= 1.10"))
            rows.append(("whole sweep: wall / fit times, engine (warm process)", f"{e['wall'] / e['fits']:.2f}x",
                         f"{e['wall']:.1f} s / {e['fits']:.1f} s; fixed: {e['before']:.1f} s before the first "
                         f"trial, {e['after']:.1f} s after the last", "-"))
            rows.append(("whole sweep: wall / fit times, `retort sweep` command", f"{c['wall'] / c['fits']:.2f}x",
                         f"{c['wall']:.1f} s / {c['fits']:.1f} s; fixed: {c['before']:.1f} s before the first "
                         f"trial (interpreter, imports), {c['after']:.1f} s after the last", "-"))
            for row in rows[-4:]:
                print(row, flush=True)
        if "workers" in only:
            for label, threads, n in (("fair thread shares", None, epochs),
                                      ("1 thread per trial", 1, epochs1)):
                pairs = workers(folder, n, n_workers, threads=threads, repeats=1 if args.quick else 3)
                for what, key, goal in (("while running trials", "running", ">= 1.7"),
                                        ("whole command", "command", "-")):
                    ratio = statistics.median(p[2][key] / p[1][key] for p in pairs)
                    rows.append((f"trials per minute, 2 workers / 1 ({label}; {what})", f"{ratio:.2f}x",
                                 f"{n_workers} trials of {n} epochs, pairs: "
                                 + ", ".join(f"{p[1][key]:.1f} vs {p[2][key]:.1f}" for p in pairs), goal))
                    print(rows[-1], flush=True)
        if "search" in only:
            per_seed = []
            for seed in range(seeds):
                s = search(folder, seed, n_search, 27)
                per_seed.append(s)
                print(f"  seed {seed}: target {s['target']:.4f}, pruned best {s['best_pruned']:.4f} "
                      f"({s['pruned']} of {n_search} pruned); epochs {s['epochs_unpruned']:.0f} unpruned, "
                      f"{s['epochs_pruned_to_target']:.0f} pruned to target ({s['epochs_pruned_total']:.0f} in all); "
                      f"ratio {s['ratio']:.2f}x; fit seconds {s['seconds_unpruned']:.1f} vs "
                      f"{s['seconds_pruned_to_target']:.1f}", flush=True)
            ratio = statistics.median(s["ratio"] for s in per_seed)
            reached = sum(math.isfinite(s["epochs_pruned_to_target"]) for s in per_seed)
            rows.append(("compute to the unpruned best, unpruned / hyperband (median)",
                         f"{ratio:.2f}x" if math.isfinite(ratio) and ratio > 0 else "-",
                         f"{n_search} trials x 27 epochs, {seeds} seeds, target reached in {reached}; "
                         f"total-compute ratio {statistics.median(s['ratio_total'] for s in per_seed):.2f}x",
                         ">= 3"))
        if "packed" in only:
            import torch

            cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
            k = args.packed or (4 if cuda else min(os.cpu_count() or 1, 4))
            from retort.recipes.sweep.share import threads

            # a small trial: about 1 s of fit with a packed worker's share (the CPU's threads, or the GPU alone)
            small = calibrate(folder, 1.0, threads=None if cuda else threads(os.cpu_count() or 1, k)[-1],
                              device="cuda" if cuda else None)
            n = 2 * k if args.quick else 4 * k
            rounds = packed(folder, k, n, small, cuda, repeats=1 if args.quick else 2)
            got = packed_rows(rounds, k, n, small, cuda)
            rows.extend(got)
            for row in got:
                print(row, flush=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{width}}  {'result':>7}  goal     detail")
    for name, value, detail, goal in rows:
        print(f"{name:<{width}}  {value:>7}  {goal:<7}  {detail}")


if __name__ == "__main__":
    main()
