"""``retort compare``: the runs side by side, as a terminal table, CSV, or a self-contained HTML report.

The table shows only the params that differ between the runs and, for each metric, its last and best
value (``--summary`` picks one of last, best, min, max). "Best" is the minimum for metrics whose name
contains loss, mse, mae, rmse or mape and the maximum otherwise; a sweep's own metric follows the
sweep's direction. ``test/*`` metrics are written once per run, so they get one column. Rows sort by
the sweep's metric (its last value: what the sweep tells Optuna), else the first ``--metric``, else
the best ``val/loss``; runs that did not finish (pruned, failed) come after those that did. Runs that
differ only by seed fold into one row: the mean and sample standard deviation (n-1) of each value.

Speed: one ``search_runs`` page (1000 runs) gives every run's params, tags and *last* metric values.
Best, min and max need the metric history, but never one call per run: on an SQL store (SQLite,
PostgreSQL, MySQL) one ``GROUP BY`` query per 500 runs reads MIN and MAX of the displayed metrics from
MLflow's ``metrics`` table, read-only; on any other store (an MLflow tracking server) the histories of
the displayed metrics only are read, eight requests at a time. The HTML report reads whole histories of
the curve metrics the same two ways.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from retort.plugins.errors import RecipeError
from retort.tracking import mlflow_sql
from retort.tracking.vocabulary import Metric, Tag

HELP = "compare runs: the params that differ, each metric's last and best value; CSV; an HTML report"
EXAMPLES = """examples:
  retort compare --experiment digits              # every run of an experiment, best val/loss first
  retort compare RUN_ID RUN_ID RUN_ID             # named runs (ids as printed by `retort run`)
  retort compare --sweep PARENT_RUN_ID --html sweep.html
  retort compare --experiment digits --metric val/accuracy --summary best
  retort compare --experiment digits --no-group-by-seed --csv runs.csv
  retort compare                                  # the experiment of the latest run"""

SUMMARIES = ("last", "best", "min", "max")
LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse", "mape")
PAGE = 1000  # search_runs page size (a tracking server's default maximum)
ONCE = ("test/",)  # metrics written once at the end of a run: last == best, one column
SEED = "seed"
FOLD = 14  # on a terminal, long params and names fold to this width


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs to compare (full MLflow run ids)")
    parser.add_argument("--experiment", "-e", action="append", default=[], metavar="E",
                        help="every run of this experiment (name or id; repeatable)")
    parser.add_argument("--sweep", action="append", default=[], metavar="PARENT_RUN_ID",
                        help="the trials of a sweep (child runs of its parent run), sorted by the sweep's metric")
    parser.add_argument("--metric", "-m", action="append", default=[], metavar="M",
                        help="show this metric (repeatable; the first one sorts). Default: val/*, test/* and "
                             "train/loss_epoch")
    parser.add_argument("--summary", choices=SUMMARIES,
                        help="one value per metric: last, best (min for losses/errors, else max), min or max. "
                             "Default: last and best")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--group-by-seed", dest="group_by_seed", action="store_true", default=None,
                       help="fold runs that differ only by seed into one row: mean ± std (n-1) and a count "
                            "(default: on when some runs differ only by seed)")
    group.add_argument("--no-group-by-seed", dest="group_by_seed", action="store_false",
                       help="one row per run")
    parser.add_argument("--csv", nargs="?", const="-", metavar="FILE",
                        help="write CSV instead of the table (to FILE, or to standard output)")
    parser.add_argument("--html", metavar="FILE",
                        help="also write a self-contained HTML report: curves, parallel coordinates, parameter "
                             "importance, sweep history, recipe diffs")


# --- the runs -------------------------------------------------------------------------------------

@dataclass
class Run:
    run_id: str
    name: str
    experiment_id: str
    status: str
    state: str  # the status, or the sweep's trial state (PRUNED) when the run is tagged with one
    start_time: int
    params: dict[str, str]
    tags: dict[str, str]
    last: dict[str, float]

    @property
    def seed(self) -> str | None:
        return self.params.get(SEED, self.tags.get(Tag.SEED))

    @property
    def parent(self) -> str | None:
        return self.tags.get(Tag.PARENT_RUN_ID)


@dataclass
class Sweep:
    run: Run
    metric: str
    direction: str  # minimize | maximize


@dataclass
class Selection:
    uri: str
    client: Any
    runs: list[Run]
    experiments: dict[str, str]  # id -> name, of the selected runs
    sweep: Sweep | None = None


def _to_run(r: Any) -> Run:
    tags = dict(r.data.tags)
    status = r.info.status
    trial = tags.get(Tag.TRIAL_STATE, "").upper()
    state = trial if trial in ("PRUNED", "FAIL", "FAILED") and status != "RUNNING" else status
    if state == "FAIL":
        state = "FAILED"
    return Run(run_id=r.info.run_id, name=r.info.run_name or tags.get(Tag.RUN_NAME, ""),
               experiment_id=r.info.experiment_id, status=status, state=state, start_time=r.info.start_time or 0,
               params=dict(r.data.params), tags=tags, last=dict(r.data.metrics))


def _all_experiments(client: Any) -> list[Any]:
    from mlflow.entities import ViewType

    out, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ALL, max_results=PAGE, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def search(client: Any, experiment_ids: Sequence[str], filter_string: str = "", deleted: bool = False) -> list[Run]:
    """Every run matching ``filter_string``, read in pages of :data:`PAGE`."""
    from mlflow.entities import ViewType

    view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
    runs, token = [], None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string, run_view_type=view, max_results=PAGE,
                                  page_token=token)
        runs += [_to_run(r) for r in page]
        token = page.token
        if not token:
            return runs


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _find_experiment(client: Any, name_or_id: str, experiments: list[Any], uri: str) -> Any:
    for exp in experiments:
        if exp.name == name_or_id:
            return exp
    for exp in experiments:
        if exp.experiment_id == name_or_id:
            return exp
    names = ", ".join(sorted(e.name for e in experiments)) or "none"
    raise RecipeError(f"no experiment {name_or_id!r} in {uri}; experiments: {names}", field="--experiment")


def select(uri: str, run_ids: Sequence[str] = (), experiments: Sequence[str] = (), sweeps: Sequence[str] = (),
           quiet: bool = True) -> Selection:
    """The runs named by ids, experiments and sweeps (their union, in that order), read from ``uri``.

    A sweep's parent run (a parent of other runs, or tagged ``retort.sweep=parent``) is left out of an
    experiment's runs (its trials are there); with nothing named, the runs of the experiment holding the
    most recent run.
    """
    from retort.tracking.store import open_store

    client = open_store(uri)
    all_exps = _all_experiments(client)
    exp_ids = [e.experiment_id for e in all_exps]
    names = {e.experiment_id: e.name for e in all_exps}
    runs: list[Run] = []
    sweep: Sweep | None = None

    wanted = list(dict.fromkeys(run_ids))
    if wanted:
        found: dict[str, Run] = {}
        for i in range(0, len(wanted), 100):
            chunk = [r for r in wanted[i: i + 100] if re.fullmatch(r"[\w-]+", r)]
            if chunk:
                where = f"attributes.run_id IN ({', '.join(_quote(r) for r in chunk)})"
                found.update((r.run_id, r) for r in search(client, exp_ids, where, deleted=True))
        missing = [r for r in wanted if r not in found]
        if missing:
            raise RecipeError(f"no run {', '.join(repr(m) for m in missing)} in {uri}", field="RUN_ID")
        runs += [found[r] for r in wanted]

    for parent_id in sweeps:
        parent = search(client, exp_ids, f"attributes.run_id = {_quote(parent_id)}", deleted=True) \
            if re.fullmatch(r"[\w-]+", parent_id) else []
        if not parent:
            raise RecipeError(f"no run {parent_id!r} in {uri} (a sweep is named by its parent run id, which "
                              f"`retort sweep` prints as parent_run_id)", field="--sweep")
        children = search(client, exp_ids, f"tags.mlflow.parentRunId = {_quote(parent_id)}")
        if not children:
            raise RecipeError(f"run {parent_id!r} has no child runs: it is not a sweep's parent run, or the "
                              f"sweep has no trials yet", field="--sweep")
        runs += sorted(children, key=lambda r: r.start_time)
        sweep = sweep or sweep_of(parent[0])

    for name in experiments:
        exp = _find_experiment(client, name, all_exps, uri)
        found_runs = search(client, [exp.experiment_id])
        parents = {r.parent for r in found_runs if r.parent}
        found_runs = [r for r in found_runs if r.run_id not in parents and r.tags.get(Tag.SWEEP) != "parent"]
        if not found_runs:
            raise RecipeError(f"experiment {exp.name!r} has no runs in {uri}", field="--experiment")
        runs += sorted(found_runs, key=lambda r: r.start_time)

    if not (wanted or sweeps or experiments):
        latest = client.search_runs(exp_ids, "", max_results=1, order_by=["attributes.start_time DESC"]) \
            if exp_ids else []
        if not latest:
            raise RecipeError(f"the store {uri} has no runs; run something first", field="--tracking-uri")
        exp_id = latest[0].info.experiment_id
        if not quiet:
            print(f"comparing experiment {names.get(exp_id)!r}, which holds the latest run "
                  f"(name others with --experiment, --sweep or run ids)", file=sys.stderr)
        return select(uri, experiments=[exp_id])

    runs = list({r.run_id: r for r in runs}.values())
    used = {r.experiment_id: names.get(r.experiment_id, r.experiment_id) for r in runs}
    return Selection(uri=uri, client=client, runs=runs, experiments=used, sweep=sweep)


def sweep_of(parent: Run) -> Sweep:
    """The sweep's metric and direction: the parent's tags, else its params, else val/loss minimized."""
    metric = parent.tags.get(Tag.SWEEP_METRIC) or parent.params.get("sweep.metric") or Metric.VAL_LOSS
    direction = parent.tags.get(Tag.SWEEP_DIRECTION) or parent.params.get("sweep.direction")
    if direction not in ("minimize", "maximize"):
        direction = "minimize" if lower_is_better(metric) or metric == Metric.VAL_LOSS else "maximize"
    return Sweep(run=parent, metric=metric, direction=direction)


# --- metric values --------------------------------------------------------------------------------

def lower_is_better(metric: str) -> bool:
    name = metric.lower()
    return any(word in name for word in LOWER_IS_BETTER)


def written_once(metric: str) -> bool:
    return metric.startswith(ONCE)


def _client_histories(client: Any, run_ids: Sequence[str], keys: Sequence[str]) -> dict[tuple[str, str], list]:
    from concurrent.futures import ThreadPoolExecutor

    pairs = [(r, k) for r in run_ids for k in keys]
    with ThreadPoolExecutor(8) as pool:
        found = pool.map(lambda p: client.get_metric_history(*p), pairs)
        return {p: list(h) for p, h in zip(pairs, found) if h}


def extremes(sel: Selection, run_ids: Sequence[str], keys: Sequence[str],
             backend: str = "auto") -> dict[tuple[str, str], tuple[float, float]]:
    """``{(run_id, key): (min, max)}`` over each run's whole history of ``key``, NaNs left out.

    ``backend``: "sql" (one GROUP BY query per 500 runs), "client" (one history call per run and key),
    or "auto" (SQL on SQL stores, falling back to the client if the query fails).
    """
    if not run_ids or not keys:
        return {}
    if backend in ("auto", "sql") and mlflow_sql.is_sql(sel.uri):
        try:
            return mlflow_sql.extremes(sel.uri, run_ids, keys)
        except Exception:
            if backend == "sql":
                raise
    out = {}
    for pair, history in _client_histories(sel.client, run_ids, keys).items():
        values = [m.value for m in history if not math.isnan(m.value)]
        if values:
            out[pair] = (min(values), max(values))
    return out


def histories(sel: Selection, run_ids: Sequence[str], keys: Sequence[str],
              backend: str = "auto") -> dict[tuple[str, str], list[tuple[int, float]]]:
    """``{(run_id, key): [(step, value), ...]}`` by step; of repeated steps the latest value; NaN kept."""
    out: dict[tuple[str, str], dict[int, tuple[int, float]]] = {}
    if not run_ids or not keys:
        return {}
    rows: Iterable[tuple[str, str, int, int, float]] | None = None
    if backend in ("auto", "sql") and mlflow_sql.is_sql(sel.uri):
        try:
            rows = mlflow_sql.history_rows(sel.uri, run_ids, keys)
        except Exception:
            if backend == "sql":
                raise
    if rows is None:
        rows = [(r, k, m.step, m.timestamp, m.value)
                for (r, k), h in _client_histories(sel.client, run_ids, keys).items() for m in h]
    for run_id, key, step, stamp, value in rows:
        series = out.setdefault((run_id, key), {})
        if step not in series or stamp >= series[step][0]:
            series[step] = (stamp, value)
    return {pair: [(s, v) for s, (_, v) in sorted(series.items())] for pair, series in out.items()}


# --- the comparison -------------------------------------------------------------------------------

@dataclass
class Column:
    key: str  # CSV header
    header: str  # table header
    kind: str  # run_id, name, state, experiment, param, seeds, n, run_ids, metric
    metric: str | None = None
    summary: str | None = None
    stat: str | None = None  # mean | std for grouped metric columns


@dataclass
class Comparison:
    sel: Selection
    metrics: list[str]
    summaries: dict[str, list[str]]  # metric -> summaries shown
    params: list[str]  # params that differ (seed left out when grouped)
    grouped: bool
    sort_metric: str | None
    sort_summary: str
    direction: dict[str, str]  # metric -> minimize | maximize
    values: dict[tuple[str, str, str], float]  # (run_id, metric, summary) -> value
    rows: list[list[Run]]  # one list of runs per row (one run unless grouped), sorted
    columns: list[Column] = field(default_factory=list)

    def value(self, run: Run, metric: str, summary: str) -> float | None:
        return self.values.get((run.run_id, metric, summary))

    def row_values(self, row: list[Run], metric: str, summary: str) -> list[float]:
        found = [self.value(r, metric, summary) for r in row]
        return [v for v in found if v is not None and not math.isnan(v)]

    def sort_value(self, row: list[Run]) -> float | None:
        if self.sort_metric is None:
            return None
        values = self.row_values(row, self.sort_metric, self.sort_summary)
        return statistics.fmean(values) if values else None

    @property
    def best_run(self) -> Run | None:
        """The best finished run by the sort metric (the first run when nothing sorts)."""
        runs = [r for row in self.rows for r in row]
        if self.sort_metric is None:
            return runs[0] if runs else None
        sign = 1 if self.direction[self.sort_metric] == "minimize" else -1
        scored = [(sign * v, r.state != "FINISHED", i, r) for i, r in enumerate(runs)
                  if (v := self.value(r, self.sort_metric, self.sort_summary)) is not None and not math.isnan(v)]
        scored.sort(key=lambda t: (t[1], t[0], t[2]))
        return scored[0][3] if scored else (runs[0] if runs else None)


def default_metrics(runs: Sequence[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.last})
    val = [k for k in keys if k.startswith("val/")]
    val.sort(key=lambda k: (k != Metric.VAL_LOSS, k))
    test = [k for k in keys if k.startswith("test/")]
    test.sort(key=lambda k: (k != Metric.TEST_LOSS, k))
    train = [k for k in keys if k == Metric.TRAIN_LOSS_EPOCH]
    chosen = val + test + train
    if chosen:
        return chosen
    rest = [k for k in keys if k not in ("lr", Metric.TRAIN_LOSS) and not k.startswith("system/")]
    return rest or keys


LABELS = ("tracking.run_name",)  # params that only name a run (shown as its name), never compared


def _differing(runs: Sequence[Run]) -> list[str]:
    runs = [r for r in runs if r.params] or list(runs)  # a run without params (a sweep's parent) differs in all
    keys = sorted({k for r in runs for k in r.params} - set(LABELS))
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def compare(sel: Selection, metrics: Sequence[str] = (), summary: str | None = None,
            group_by_seed: bool | None = None, backend: str = "auto") -> Comparison:
    """The comparison of ``sel``'s runs: columns, values, rows sorted best first."""
    runs = sel.runs
    have = sorted({k for r in runs for k in r.last})
    for m in metrics:
        if m not in have:
            raise RecipeError(f"no run has a metric {m!r}; metrics: {', '.join(have) or 'none'}", field="--metric")
    shown = list(dict.fromkeys(metrics)) or default_metrics(runs)

    sweep = sel.sweep
    if sweep is not None and sweep.metric in have:
        sort_metric: str | None = sweep.metric
    elif metrics:
        sort_metric = metrics[0]
    else:
        sort_metric = Metric.VAL_LOSS if Metric.VAL_LOSS in have else None
    if sort_metric and (sort_metric not in shown or not metrics):  # the sorting metric first, unless chosen
        shown = [sort_metric] + [m for m in shown if m != sort_metric]
    direction = {m: "minimize" if lower_is_better(m) else "maximize" for m in shown}
    if sweep is not None and sweep.metric in direction:
        direction[sweep.metric] = sweep.direction

    summaries = {m: ["last"] if written_once(m) else ([summary] if summary else ["last", "best"]) for m in shown}
    # A sweep's trials sort by the value Optuna was told: the metric at the trial's last epoch.
    by_sweep = sweep is not None and sort_metric == sweep.metric
    sort_summary = "last" if sort_metric and (written_once(sort_metric) or by_sweep) else "best"
    sort_summary = summary or sort_summary

    need = [m for m in shown if any(s != "last" for s in summaries[m]) or (m == sort_metric and sort_summary != "last")]
    ext = extremes(sel, [r.run_id for r in runs], need, backend)
    values: dict[tuple[str, str, str], float] = {}
    for r in runs:
        for m in shown:
            if m in r.last:
                values[(r.run_id, m, "last")] = r.last[m]
            lo_hi = ext.get((r.run_id, m))
            if written_once(m) and m in r.last:
                lo_hi = (r.last[m], r.last[m])
            if lo_hi is not None:
                values[(r.run_id, m, "min")], values[(r.run_id, m, "max")] = lo_hi
                values[(r.run_id, m, "best")] = lo_hi[0] if direction[m] == "minimize" else lo_hi[1]

    params = _differing(runs)
    keyed = [p for p in params if p != SEED]
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for r in runs:  # a run without params (a sweep's parent) is a group of its own
        key = tuple(r.params.get(p) for p in keyed) if r.params else ("run", r.run_id)
        groups.setdefault(key, []).append(r)
    grouped = group_by_seed if group_by_seed is not None else any(len(g) > 1 for g in groups.values())
    rows = list(groups.values()) if grouped else [[r] for r in runs]
    if grouped:
        params = keyed
        for g in rows:
            g.sort(key=lambda r: (_num(r.seed), r.start_time))

    cmp = Comparison(sel=sel, metrics=shown, summaries=summaries, params=params, grouped=grouped,
                     sort_metric=sort_metric, sort_summary=sort_summary, direction=direction, values=values,
                     rows=rows)
    if sort_metric:
        sign = 1 if direction[sort_metric] == "minimize" else -1

        def key(row: list[Run]) -> tuple[Any, ...]:
            v = cmp.sort_value(row)
            unfinished = any(r.state != "FINISHED" for r in row) and not grouped
            return (unfinished, v is None, sign * v if v is not None else 0.0, min(r.start_time for r in row))

        cmp.rows.sort(key=key)
    cmp.columns = _columns(cmp)
    return cmp


def _num(text: str | None) -> tuple[int, float, str]:
    try:
        return (0, float(text), "")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return (1, 0.0, str(text))


def _columns(cmp: Comparison) -> list[Column]:
    runs = [r for row in cmp.rows for r in row]
    cols: list[Column] = []
    if cmp.grouped:
        cols += [Column("n", "n", "n"), Column("seeds", "seeds", "seeds")]
    else:
        cols += [Column("run_id", "run id", "run_id"), Column("name", "name", "name")]
    if any(r.state != "FINISHED" for r in runs):
        cols.append(Column("state", "state", "state"))
    if len(cmp.sel.experiments) > 1:
        cols.append(Column("experiment", "experiment", "experiment"))
    cols += [Column(p, p, "param") for p in cmp.params]
    for m in cmp.metrics:
        for s in cmp.summaries[m]:
            key = m if written_once(m) else f"{m}:{s}"
            header = m if written_once(m) else f"{m}\n{s}"
            if cmp.grouped:
                cols += [Column(f"{key} mean", header, "metric", m, s, "mean"),
                         Column(f"{key} std", header, "metric", m, s, "std")]
            else:
                cols.append(Column(key, header, "metric", m, s))
    if cmp.grouped:
        cols.append(Column("run_ids", "run ids", "run_ids"))
    return cols


def _cell(cmp: Comparison, row: list[Run], col: Column) -> Any:
    """The raw value of one cell (floats stay floats)."""
    first = row[0]
    if col.kind == "run_id":
        return first.run_id
    if col.kind == "name":
        return first.name
    if col.kind == "state":
        states = [r.state for r in row]
        if len(set(states)) == 1:
            return states[0]
        return ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
    if col.kind == "experiment":
        return ", ".join(dict.fromkeys(cmp.sel.experiments.get(r.experiment_id, "") for r in row))
    if col.kind == "param":
        return first.params.get(col.key, "")
    if col.kind == "n":
        return len(row)
    if col.kind == "seeds":
        return ", ".join("-" if r.seed is None else str(r.seed) for r in row)
    if col.kind == "run_ids":
        return " ".join(r.run_id for r in row)
    assert col.metric and col.summary
    if not cmp.grouped:
        return cmp.value(first, col.metric, col.summary)
    values = cmp.row_values(row, col.metric, col.summary)
    if col.stat == "mean":
        return statistics.fmean(values) if values else None
    return statistics.stdev(values) if len(values) > 1 else None


def table_rows(cmp: Comparison) -> list[list[Any]]:
    return [[_cell(cmp, row, c) for c in cmp.columns] for row in cmp.rows]


def fmt(value: Any, digits: int = 4) -> str:
    """A cell for people: 4 significant digits, ``nan`` kept, nothing for a missing value."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def fmt_mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std, 2)}"


def caption(cmp: Comparison) -> str:
    runs = sum(len(row) for row in cmp.rows)
    words = [f"{runs} runs" if not cmp.grouped else f"{runs} runs in {len(cmp.rows)} groups (mean ± std over seeds)"]
    if cmp.sel.sweep is not None:
        words.append(f"sweep {cmp.sel.sweep.run.run_id}")
    if cmp.sort_metric:
        what = cmp.sort_metric if written_once(cmp.sort_metric) else f"{cmp.sort_metric} {cmp.sort_summary}"
        words.append(f"sorted by {what} ({cmp.direction[cmp.sort_metric]})")
    hidden = "" if cmp.params else "; no params differ"
    return ", ".join(words) + hidden


def write_csv(cmp: Comparison, out: Any) -> None:
    import csv

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.key for c in cmp.columns])
    for row in table_rows(cmp):
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])


def print_table(cmp: Comparison, file: Any = None) -> None:
    """The rich table. On a pipe it is as wide as it needs (nothing cut or wrapped); on a terminal numbers
    never wrap and long params fold."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    file = file or sys.stdout
    tty = file.isatty() if hasattr(file, "isatty") else False
    # std joins its mean in one cell; a group's run ids only in the CSV (--no-group-by-seed lists runs)
    shown = [c for c in cmp.columns if not (c.stat == "std" or c.kind == "run_ids")]
    best: dict[str, float] = {}
    for c in shown:
        if c.kind == "metric" and c.metric:
            vals = [v for v in (_cell(cmp, row, c) for row in cmp.rows) if v is not None and not math.isnan(v)]
            if vals:
                best[c.key] = min(vals) if cmp.direction[c.metric] == "minimize" else max(vals)
    rows: list[list[str]] = []
    marks: list[list[bool]] = []
    for row in cmp.rows:
        texts, bests = [], []
        for c in shown:
            v = _cell(cmp, row, c)
            if c.kind == "metric" and cmp.grouped:
                v_std = _cell(cmp, row, Column(c.key, c.header, c.kind, c.metric, c.summary, "std"))
                texts.append(fmt_mean_std(v, v_std))
            else:
                texts.append(fmt(v))
            bests.append(c.kind == "metric" and v is not None and v == best.get(c.key))
        rows.append(texts)
        marks.append(bests)

    table = Table(box=box.MINIMAL_HEAVY_HEAD, caption=caption(cmp), caption_justify="left")
    whole = ("metric", "n", "state", "run_id")  # never cut; names and params fold to FOLD characters
    needed = 2
    for i, c in enumerate(shown):
        widest = max([len(r[i]) for r in rows] + [len(line) for line in c.header.split("\n")])
        needed += 3 + (widest if c.kind in whole else min(widest, FOLD))
        justify = "right" if c.kind in ("metric", "n") else "left"
        if tty:
            table.add_column(c.header, justify=justify, no_wrap=c.kind in whole, overflow="fold")
        else:  # every cell fits: fixed widths spare rich measuring each cell (1000 rows: -25%)
            table.add_column(c.header, justify=justify, no_wrap=True, width=widest)
    # A terminal too narrow for the numbers gets the table wider than itself (pipe it to `less -S`)
    # rather than numbers broken over lines.
    width = max(Console(file=file).width, needed) if tty else 100_000
    console = Console(file=file, width=width, highlight=False, markup=False, emoji=False)  # cells are plain text
    for texts, bests in zip(rows, marks):
        if tty:
            table.add_row(*(Text(t, style="bold green" if b else "") for t, b in zip(texts, bests)))
        else:
            table.add_row(*texts)
    console.print(table)


# --- the command ----------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> int:
    import gc

    # search_runs builds ~80 SQLAlchemy objects per run and CPython's cyclic collector rescans the growing
    # heap again and again: 1000 runs took 2.0 s with it and 0.7 s without. The command is short-lived; at
    # its end the heap is frozen, else the interpreter's exit-time collection scans it all (1.3 s more).
    gc.disable()
    try:
        return _main(args)
    finally:
        gc.freeze()
        gc.enable()


def _main(args: argparse.Namespace) -> int:
    from retort.tracking.store import resolve_uri

    uri = resolve_uri(args.tracking_uri)
    sel = select(uri, args.run_ids, args.experiment, args.sweep, quiet=args.quiet)
    cmp = compare(sel, args.metric, args.summary, args.group_by_seed)
    if args.html:
        from retort.tracking.report import write_report

        try:
            path = write_report(cmp, args.html)
        except OSError as exc:
            raise RecipeError(f"cannot write {args.html}: {exc.strerror}", field="--html") from None
        if not args.quiet:
            print(f"report: {path}", file=sys.stderr)
    if args.csv == "-":
        write_csv(cmp, sys.stdout)
    elif args.csv:
        try:
            with open(args.csv, "w", newline="") as out:
                write_csv(cmp, out)
        except OSError as exc:
            raise RecipeError(f"cannot write {args.csv}: {exc.strerror}", field="--csv") from None
        if not args.quiet:
            print(f"csv: {args.csv}", file=sys.stderr)
    else:
        print_table(cmp)
    return 0
