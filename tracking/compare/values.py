"""Metric values: each run's last value from the search, min, max and best from the whole history, and which
way is better.

"Best" is the minimum for metrics whose name contains loss, mse, mae, rmse or mape and the maximum otherwise.
``test/*`` metrics are written once per run (last == best). Best, min and max need the metric history, but
never one call per run: on an SQL store one ``GROUP BY`` query per 500 runs reads MIN and MAX of the shown
metrics (:mod:`retort.tracking.mlflow_sql`); on any other store (an MLflow tracking server) the histories of
the shown metrics only are read, eight requests at a time. The HTML report reads whole histories the same
two ways.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from retort.tracking import mlflow_sql
from retort.tracking.vocabulary import Metric

if TYPE_CHECKING:
    from retort.tracking.compare.select import Run, Selection

LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse", "mape")
ONCE = ("test/",)  # metrics written once at the end of a run: last == best, one column


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
