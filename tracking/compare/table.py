"""The comparison itself: the params that differ, rows (runs, or groups of seeds), their order, columns
and cells.

Rows sort by the sweep's metric (its last value: what the sweep tells Optuna), else the first ``--metric``,
else the best ``val/loss``; runs that did not finish (pruned, failed) come after those that did. Runs that
differ only by seed fold into one row (:mod:`.seeds`): per metric the mean over seeds, their sample standard
deviation (n-1) and a confidence interval, and for the sorting metric how each group compares with the best
one, seed by seed. Descriptive params (name, description, ``sweep.*``, ``tracking.*``) neither differ nor
group unless asked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from retort.plugins.errors import RecipeError
from retort.tracking.compare import seeds
from retort.tracking.compare.select import Run, Selection
from retort.tracking.compare.values import default_metrics, extremes, lower_is_better, written_once
from retort.tracking.vocabulary import Metric, Param

SUMMARIES = ("last", "best", "min", "max")


@dataclass
class Column:
    key: str  # CSV header
    header: str  # table header
    kind: str  # run_id, name, state, experiment, param, seeds, n, run_ids, metric
    metric: str | None = None
    summary: str | None = None
    stat: str | None = None  # mean | std | low | high (the confidence interval) for grouped metric columns


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
    verdicts: list[seeds.Verdict | None] = field(default_factory=list)  # per row: against the first (best) row
    _spreads: dict[tuple[int, str, str], seeds.Spread] = field(default_factory=dict, repr=False)

    def value(self, run: Run, metric: str, summary: str) -> float | None:
        return self.values.get((run.run_id, metric, summary))

    def row_values(self, row: list[Run], metric: str, summary: str) -> list[float]:
        found = [self.value(r, metric, summary) for r in row]
        return [v for v in found if v is not None and not math.isnan(v)]

    def by_seed(self, row: list[Run], metric: str, summary: str) -> dict[str | None, float]:
        """A row's value of ``metric`` per seed (repeats of a seed averaged)."""
        found: dict[str | None, list[float]] = {}
        for r in row:
            v = self.value(r, metric, summary)
            if v is not None:
                found.setdefault(r.seed, []).append(v)
        return seeds.per_seed(found)

    def spread(self, row: list[Run], metric: str, summary: str) -> seeds.Spread:
        """A row's mean, std and confidence interval of ``metric`` over its seeds (computed once)."""
        key = (id(row), metric, summary)
        if key not in self._spreads:
            self._spreads[key] = seeds.spread(self.by_seed(row, metric, summary))
        return self._spreads[key]

    def sort_value(self, row: list[Run]) -> float | None:
        if self.sort_metric is None:
            return None
        return self.spread(row, self.sort_metric, self.sort_summary).mean

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


LABELS = (Param.RUN_NAME,)  # params that only name a run (shown as its name), never compared


def descriptive(param: str) -> bool:
    """Whether a param only describes a run (its name, description, sweep section, tracking settings)."""
    return param in Param.DESCRIPTIVE or param.startswith(Param.DESCRIPTIVE_PREFIXES)


def _differing(runs: Sequence[Run], with_descriptive: bool = False) -> list[str]:
    runs = [r for r in runs if r.params] or list(runs)  # a run without params (a sweep's parent) differs in all
    keys = sorted({k for r in runs for k in r.params} - set(LABELS))
    keys = [k for k in keys if with_descriptive or not descriptive(k)]
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def compare(sel: Selection, metrics: Sequence[str] = (), summary: str | None = None,
            group_by_seed: bool | None = None, backend: str = "auto", with_descriptive: bool = False) -> Comparison:
    """The comparison of ``sel``'s runs: columns, values, rows sorted best first. Descriptive params count
    (as differing params, and in grouping) only ``with_descriptive``."""
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

    params = _differing(runs, with_descriptive)
    keyed = [p for p in params if p != Param.SEED]
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
        if grouped and len(cmp.rows) > 1:
            best = cmp.by_seed(cmp.rows[0], sort_metric, sort_summary)
            cmp.verdicts = [None] + [seeds.verdict(cmp.by_seed(row, sort_metric, sort_summary), best,
                                                   direction[sort_metric]) for row in cmp.rows[1:]]
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
                cols += [Column(f"{key} {stat}", header, "metric", m, s, stat)
                         for stat in ("mean", "std", "low", "high")]
            else:
                cols.append(Column(key, header, "metric", m, s))
            if cmp.verdicts and m == cmp.sort_metric and s == cmp.sort_summary:
                cols.append(Column("vs best", "vs best", "verdict", m, s))
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
        return len({r.seed for r in row})
    if col.kind == "seeds":
        counts: dict[str | None, int] = {}
        for r in row:
            counts[r.seed] = counts.get(r.seed, 0) + 1
        return ", ".join(("-" if s is None else str(s)) + (f" ×{k}" if k > 1 else "") for s, k in counts.items())
    if col.kind == "run_ids":
        return " ".join(r.run_id for r in row)
    if col.kind == "verdict":
        verdict = cmp.verdicts[next(i for i, r in enumerate(cmp.rows) if r is row)]
        return "best" if verdict is None else str(verdict)
    assert col.metric and col.summary
    if not cmp.grouped:
        return cmp.value(first, col.metric, col.summary)
    return getattr(cmp.spread(row, col.metric, col.summary), col.stat or "mean")


def table_rows(cmp: Comparison) -> list[list[Any]]:
    return [[_cell(cmp, row, c) for c in cmp.columns] for row in cmp.rows]

