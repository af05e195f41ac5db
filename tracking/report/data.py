"""What the report shows, gathered in Python as plain JSON-able data: metric histories folded by seed group,
chart axes (:mod:`retort.tracking.axes`), parameter importance, the sweep's history, the runs.

Parameter importance is Optuna's fANOVA (``FanovaImportanceEvaluator``, a random forest fitted to the
finished runs' params against the sorting metric, seeded), with Spearman's rank correlation beside it for
numeric params, whose sign says which way the metric moves.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

from retort.tracking.axes import axis
from retort.tracking.compare import Comparison, Run, histories, written_once
from retort.tracking.compare.output import fmt_param
from retort.tracking.vocabulary import Tag

MAX_POINTS = 200  # per series: longer histories are averaged into this many buckets
MAX_AXES = 12  # parallel coordinates: params beyond this many (least important first) are left out
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac"]


def _finite(v: Any) -> float | None:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _r(v: Any) -> float | None:
    """A value for the page: 6 significant digits keep 200 runs' curves small."""
    v = _finite(v)
    return None if v is None else float(f"{v:.6g}")


def _float(text: str | None) -> float | None:
    if text is None or text.strip().lower() in ("true", "false", "nan", "inf", "-inf", ""):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _downsample(points: list[tuple[int, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return [(float(s), v) for s, v in points]
    out = []
    size = len(points) / MAX_POINTS
    for i in range(MAX_POINTS):
        chunk = points[int(i * size): int((i + 1) * size)] or points[-1:]
        vals = [v for _, v in chunk if math.isfinite(v)]
        out.append((statistics.fmean(s for s, _ in chunk), statistics.fmean(vals) if vals else math.nan))
    return out


def _row_label(cmp: Comparison, row: list[Run]) -> str:
    """A legend entry: a run's name and short id, or a group's params (4 significant digits) and seed count."""
    if not cmp.grouped:  # names can repeat (MLflow draws them from a seeded random generator): add the id
        return f"{row[0].name} · {row[0].run_id[:8]}" if row[0].name else row[0].run_id
    words = [f"{p} {fmt_param(str(row[0].params.get(p, '')))}" for p in cmp.params]
    n = len({r.seed for r in row})
    return (", ".join(words) or "all runs") + f" · {n} seed{'s' if n != 1 else ''}"


def _fold(series: list[list[tuple[float, float]]]) -> dict[str, list[float | None]]:
    """Runs' series of one metric folded by step: mean and sample std (None where fewer than 2 runs)."""
    by_step: dict[float, list[float]] = {}
    for points in series:
        for s, v in points:
            if math.isfinite(v):
                by_step.setdefault(s, []).append(v)
    steps = sorted(by_step)
    mean = [_r(statistics.fmean(by_step[s])) for s in steps]
    std = [_r(statistics.stdev(by_step[s])) if len(by_step[s]) > 1 else None for s in steps]
    return {"steps": [_r(s) for s in steps], "mean": mean, "std": std}


def importance(cmp: Comparison) -> dict[str, Any]:
    """fANOVA importance of the differing params for the sorting metric, over the finished runs."""
    metric = cmp.sort_metric
    method = "Optuna fANOVA (FanovaImportanceEvaluator, seed 0) on the finished runs"
    if metric is None:
        return {"method": method, "note": "no metric to explain (no val/loss and no --metric)", "items": []}
    runs = [r for row in cmp.rows for r in row if r.state == "FINISHED"]
    scored = [(r, v) for r in runs if (v := _finite(cmp.value(r, metric, cmp.sort_summary))) is not None]
    params = [p for p in cmp.params if len({r.params.get(p) for r, _ in scored}) > 1]
    if "seed" not in params and len({r.seed for r, _ in scored}) > 1 and all("seed" in r.params for r, _ in scored):
        params.append("seed")
    target = metric if written_once(metric) else f"{metric} {cmp.sort_summary}"
    base = {"method": method, "target": target, "items": []}
    if len(scored) < 3 or not params:
        return {**base, "note": f"needs at least 3 finished runs with {metric} and a param that differs "
                                f"(have {len(scored)} runs, {len(params)} params)"}
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists: dict[str, Any] = {}
    numeric: dict[str, bool] = {}
    for p in params:
        nums = [_float(r.params.get(p)) for r, _ in scored]
        if all(n is not None for n in nums):
            lo, hi = min(nums), max(nums)  # type: ignore[type-var]
            dists[p] = FloatDistribution(lo, hi, log=lo > 0 and hi / lo > 20)  # type: ignore[operator]
            numeric[p] = True
        else:
            dists[p] = CategoricalDistribution(sorted({str(r.params.get(p)) for r, _ in scored}))
            numeric[p] = False
    study = optuna.create_study(direction=cmp.direction[metric])
    for r, v in scored:
        values = {p: _float(r.params.get(p)) if numeric[p] else str(r.params.get(p)) for p in params}
        study.add_trial(optuna.trial.create_trial(params=values, distributions=dists, value=v))
    found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), normalize=True)
    ys = [v for _, v in scored]
    items = []
    for p, imp in found.items():
        rho = _spearman([_float(r.params.get(p)) or 0.0 for r, _ in scored], ys) if numeric[p] else None
        items.append({"param": p, "importance": _r(imp), "rho": _r(rho)})
    return {**base, "items": items}


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (ties share their mean rank); None where either side is constant."""
    import warnings

    from scipy.stats import spearmanr

    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(spearmanr(xs, ys).statistic)
    return rho if math.isfinite(rho) else None


def _trial_number(run: Run) -> int | None:
    try:
        return int(run.tags[Tag.TRIAL])
    except (KeyError, ValueError):
        return None


def recipe_text(cmp: Comparison, run: Run) -> tuple[str, str]:
    """The best run's resolved recipe: its recipe.yaml artifact, else its params as dotted lines."""
    import os
    import tempfile

    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one small file: no bar on stderr
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = cmp.sel.client.download_artifacts(run.run_id, "recipe.yaml", tmp)
            return Path(path).read_text(), "recipe.yaml artifact"
    except Exception:
        return "".join(f"{k}: {v}\n" for k, v in sorted(run.params.items())), "params (no recipe.yaml artifact)"
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def gather(cmp: Comparison) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-able data."""
    sel = cmp.sel
    runs = [r for row in cmp.rows for r in row]
    ids = [r.run_id for r in runs]
    curve_metrics = [m for m in cmp.metrics if not written_once(m)]
    sweep = sel.sweep
    hist_keys = list(dict.fromkeys(curve_metrics + ([sweep.metric] if sweep else [])))
    hist = histories(sel, ids, hist_keys)

    group_of = {r.run_id: i for i, row in enumerate(cmp.rows) for r in row}
    many = len(cmp.rows) > len(PALETTE)
    groups = []
    for i, row in enumerate(cmp.rows):
        t = i / max(1, len(cmp.rows) - 1)
        groups.append({"label": _row_label(cmp, row), "runs": [r.run_id for r in row],
                       "color": _viridis(t) if many else PALETTE[i]})

    summaries = [(m, s) for m in cmp.metrics for s in cmp.summaries[m]]
    best = cmp.best_run
    run_rows = []
    for r in runs:
        run_rows.append({
            "id": r.run_id, "name": r.name, "state": r.state, "group": group_of[r.run_id], "seed": r.seed,
            "params": {p: r.params.get(p) for p in cmp.params + (["seed"] if cmp.grouped else [])},
            "values": {f"{m}|{s}": _r(cmp.value(r, m, s)) for m, s in summaries},
            "trial": _trial_number(r), "start": r.start_time,
        })

    curves = []
    for m in curve_metrics:
        series = []
        for i, row in enumerate(cmp.rows):
            runs_series = [_downsample(hist[(r.run_id, m)]) for r in row if (r.run_id, m) in hist]
            if runs_series:
                series.append({"group": i, "runs": [r.run_id for r in row if (r.run_id, m) in hist],
                               **_fold(runs_series)})
        if series:
            curves.append({"metric": m, "direction": cmp.direction[m], "series": series, **_curve_axes(m, series)})

    axes = _axes(cmp, runs)
    data: dict[str, Any] = {
        "title": _title(cmp), "created": time.strftime("%Y-%m-%d %H:%M:%S"), "uri": sel.uri,
        "experiments": list(sel.experiments.values()), "grouped": cmp.grouped, "params": cmp.params,
        "sort": {"metric": cmp.sort_metric, "summary": cmp.sort_summary,
                 "direction": cmp.direction.get(cmp.sort_metric or "", "minimize")},
        "summaries": [f"{m}|{s}" for m, s in summaries], "best": best.run_id if best else None,
        "runs": run_rows, "groups": groups, "curves": curves, "axes": axes,
        "importance": importance(cmp), "sweep": None,
    }
    if sweep is not None:
        trials = [r for r in runs if r.parent == sweep.run.run_id]
        order = sorted(trials, key=lambda r: (_trial_number(r) is None, _trial_number(r) or 0, r.start_time))
        data["sweep"] = {
            "id": sweep.run.run_id, "name": sweep.run.name, "metric": sweep.metric, "direction": sweep.direction,
            "summary": cmp.sort_summary,
            "trials": [{"id": r.run_id, "name": r.name, "state": r.state,
                        "number": _trial_number(r) if _trial_number(r) is not None else i,
                        "value": _r(cmp.value(r, sweep.metric, cmp.sort_summary)),
                        "points": [[_r(s), _r(v)] for s, v in _downsample(hist.get((r.run_id, sweep.metric), []))]}
                       for i, r in enumerate(order)],
        }
        trials = data["sweep"]["trials"]
        data["sweep"]["history"] = {"x": axis([t["number"] for t in trials], integer=True),
                                    "y": axis([t["value"] for t in trials], n=5, log=False)}
        points = [p for t in trials for p in t["points"]]
        data["sweep"]["intermediate"] = {"x": axis([x for x, _ in points], integer=True),
                                         "y": axis([y for _, y in points], n=5, log=False)}
    return data


def _curve_axes(metric: str, series: list[dict[str, Any]]) -> dict[str, Any]:
    """A learning-curve chart's axes: steps (integers: epochs or batches) and the values with their bands,
    logarithmic when they are all positive and span over 30 times."""
    xs = [x for s in series for x in s["steps"]]
    ys = [v for s in series for m, sd in zip(s["mean"], s["std"]) if m is not None
          for v in (m, m - (sd or 0.0), m + (sd or 0.0))]
    log = bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 30
    per_epoch = "epoch" in metric or metric.startswith(("val/", "test/"))
    return {"x": axis(xs, integer=True), "y": axis(ys, n=5, log=log), "xlabel": "epoch" if per_epoch else "step"}


def _title(cmp: Comparison) -> str:
    """What the page compares: "sweep digits-mlp" (the study), "experiment digits", "experiments a, b"."""
    sweep = cmp.sel.sweep
    if sweep is not None:
        name = sweep.run.tags.get(Tag.STUDY) or sweep.run.name or sweep.run.run_id
        return f"sweep {name.removeprefix('sweep ')}"
    names = list(cmp.sel.experiments.values())
    return ("experiment " if len(names) == 1 else "experiments ") + ", ".join(names)


def _axes(cmp: Comparison, runs: list[Run]) -> list[dict[str, Any]]:
    params = list(cmp.params) + (["seed"] if cmp.grouped and len({r.seed for r in runs}) > 1 else [])
    params = params[:MAX_AXES]
    axes = []
    for p in params:
        vals = [r.params.get(p) for r in runs]
        nums = [_float(v) for v in vals]
        if all(n is not None for n in nums):
            lo, hi = min(nums), max(nums)  # type: ignore[type-var]
            log = lo > 0 and hi / lo > 20  # type: ignore[operator]
            integer = all(float(n).is_integer() for n in nums)  # type: ignore[arg-type]
            axes.append({"name": p, "kind": "log" if log else "num", "values": [_r(n) for n in nums],
                         "axis": axis(nums, n=5, log=log, integer=integer)})
        else:
            cats = sorted({str(v) for v in vals}, key=lambda c: (_float(c) is None, _float(c) or 0.0, c))
            axes.append({"name": p, "kind": "cat", "categories": cats, "values": [cats.index(str(v)) for v in vals]})
    if cmp.sort_metric:
        what = cmp.sort_metric if written_once(cmp.sort_metric) else f"{cmp.sort_metric} {cmp.sort_summary}"
        values = [_r(cmp.value(r, cmp.sort_metric, cmp.sort_summary)) for r in runs]
        axes.append({"name": what, "kind": "num", "metric": True, "values": values,
                     "axis": axis(values, n=5, log=False)})
    return axes


def _viridis(t: float) -> str:
    stops = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
    t = min(1.0, max(0.0, t)) * 0.92 * (len(stops) - 1)  # the palest yellow is hard to see on white
    i = min(int(t), len(stops) - 2)
    f = t - i
    c = [round(a + (b - a) * f) for a, b in zip(stops[i], stops[i + 1])]
    return "#" + "".join(f"{v:02x}" for v in c)


