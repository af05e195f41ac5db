"""The HTML report of ``retort compare --html``: one self-contained page, no network when opened.

Python gathers the numbers (metric histories, parameter importance, recipe diffs) into one JSON blob
inlined in the page; a few hundred lines of inline JavaScript draw the plots as SVG. Sections:

- learning curves, one chart per metric; runs that differ only by seed are one line (the mean per step)
  in a band of ±1 sample standard deviation;
- parallel coordinates: one line per run through the params that differ, ending on the sorting metric;
- parameter importance: Optuna's fANOVA (``FanovaImportanceEvaluator``, a random forest fitted to the
  finished runs' params against the sorting metric, seeded) with Spearman's rank correlation beside it
  for numeric params, whose sign says which way the metric moves;
- for a sweep: the optimization history (value per trial, best so far) and every trial's intermediate
  values of the sweep's metric, pruned trials marked;
- the runs table (every run id and name) and the resolved-recipe diff between the best run and each
  other run, field by field from the runs' params (every dotted recipe field is a param), with the best
  run's ``recipe.yaml`` artifact in full.

When the script has drawn everything it sets ``#report-status[data-state=ok]``; any error is caught by
``window.onerror`` into ``#report-errors`` and sets ``data-state=error`` (the browser test reads both).
"""

from __future__ import annotations

import html
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from retort.tracking.compare import Comparison, Run, fmt, fmt_mean_std, histories, written_once
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
    if not cmp.grouped:  # names can repeat (MLflow draws them from a seeded random generator): add the id
        return f"{row[0].name} {row[0].run_id[:8]}" if row[0].name else row[0].run_id
    words = [f"{p}={row[0].params.get(p, '')}" for p in cmp.params]
    return (" ".join(words) or "all runs") + f" (n={len(row)})"


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


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    rx, ry = _ranks(xs), _ranks(ys)
    if len(set(rx)) < 2 or len(set(ry)) < 2:
        return None
    return statistics.correlation(rx, ry)


def _trial_number(run: Run) -> int | None:
    try:
        return int(run.tags[Tag.TRIAL])
    except (KeyError, ValueError):
        return None


def _recipe_text(cmp: Comparison, run: Run) -> tuple[str, str]:
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
            curves.append({"metric": m, "direction": cmp.direction[m], "series": series})

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
    return data


def _title(cmp: Comparison) -> str:
    if cmp.sel.sweep is not None:
        return f"sweep {cmp.sel.sweep.run.name or cmp.sel.sweep.run.run_id}"
    return ", ".join(cmp.sel.experiments.values())


def _axes(cmp: Comparison, runs: list[Run]) -> list[dict[str, Any]]:
    params = list(cmp.params) + (["seed"] if cmp.grouped and len({r.seed for r in runs}) > 1 else [])
    params = params[:MAX_AXES]
    axes = []
    for p in params:
        vals = [r.params.get(p) for r in runs]
        nums = [_float(v) for v in vals]
        if all(n is not None for n in nums):
            lo, hi = min(nums), max(nums)  # type: ignore[type-var]
            kind = "log" if lo > 0 and hi / lo > 20 else "num"  # type: ignore[operator]
            axes.append({"name": p, "kind": kind, "values": [_r(n) for n in nums]})
        else:
            cats = sorted({str(v) for v in vals}, key=lambda c: (_float(c) is None, _float(c) or 0.0, c))
            axes.append({"name": p, "kind": "cat", "categories": cats, "values": [cats.index(str(v)) for v in vals]})
    if cmp.sort_metric:
        what = cmp.sort_metric if written_once(cmp.sort_metric) else f"{cmp.sort_metric} {cmp.sort_summary}"
        axes.append({"name": what, "kind": "num", "metric": True,
                     "values": [_r(cmp.value(r, cmp.sort_metric, cmp.sort_summary)) for r in runs]})
    return axes


def _viridis(t: float) -> str:
    stops = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
    t = min(1.0, max(0.0, t)) * 0.92 * (len(stops) - 1)  # the palest yellow is hard to see on white
    i = min(int(t), len(stops) - 2)
    f = t - i
    c = [round(a + (b - a) * f) for a, b in zip(stops[i], stops[i + 1])]
    return "#" + "".join(f"{v:02x}" for v in c)


# --- the page -------------------------------------------------------------------------------------

def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text))


def _runs_table(cmp: Comparison, data: dict[str, Any]) -> str:
    heads = ["#", "run id", "name", "state"] + (["group"] if cmp.grouped else []) + list(cmp.params)
    if cmp.grouped:
        heads.append("seed")
    metric_heads = [m if written_once(m) else f"{m} {s}" for m, s in
                    ((k.split("|")[0], k.split("|")[1]) for k in data["summaries"])]
    out = ["<table class='runs'><thead><tr>"]
    out += [f"<th>{_e(h)}</th>" for h in heads] + [f"<th class='num'>{_e(h)}</th>" for h in metric_heads]
    out.append("</tr></thead><tbody>")
    for i, r in enumerate(data["runs"], 1):
        cls = " class='best'" if r["id"] == data["best"] else ""
        out.append(f"<tr data-run='{_e(r['id'])}'{cls}><td>{i}</td><td class='id'>{_e(r['id'])}</td>"
                   f"<td>{_e(r['name'])}</td><td class='state {_e(r['state'])}'>{_e(r['state'])}</td>")
        if cmp.grouped:
            g = data["groups"][r["group"]]
            out.append(f"<td><span class='swatch' style='background:{g['color']}'></span>{r['group'] + 1}</td>")
        out += [f"<td>{_e(r['params'].get(p))}</td>" for p in cmp.params]
        if cmp.grouped:
            out.append(f"<td>{_e(r['seed'])}</td>")
        out += [f"<td class='num'>{_e(fmt(r['values'].get(k)))}</td>" for k in data["summaries"]]
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _groups_table(cmp: Comparison, data: dict[str, Any]) -> str:
    if not cmp.grouped:
        return ""
    out = ["<h2>Groups: mean ± std over seeds</h2><table class='runs'><thead><tr><th>group</th><th>n</th>"]
    out += [f"<th>{_e(p)}</th>" for p in cmp.params]
    keys = [(m, s) for m in cmp.metrics for s in cmp.summaries[m]]
    out += [f"<th class='num'>{_e(m if written_once(m) else f'{m} {s}')}</th>" for m, s in keys]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(cmp.rows):
        g = data["groups"][i]
        out.append(f"<tr><td><span class='swatch' style='background:{g['color']}'></span>{i + 1}</td>"
                   f"<td>{len(row)}</td>")
        out += [f"<td>{_e(row[0].params.get(p))}</td>" for p in cmp.params]
        for m, s in keys:
            vals = cmp.row_values(row, m, s)
            mean = statistics.fmean(vals) if vals else None
            std = statistics.stdev(vals) if len(vals) > 1 else None
            out.append(f"<td class='num'>{_e(fmt_mean_std(mean, std))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _diffs(cmp: Comparison) -> str:
    best = cmp.best_run
    if best is None:
        return ""
    text, source = _recipe_text(cmp, best)
    out = [f"<h2>Recipe diffs against the best run</h2><p>Best run: <b>{_e(best.name)}</b> "
           f"<code>{_e(best.run_id)}</code>. Each other run's resolved recipe, field by field (from the runs' "
           f"params), where it differs from the best run's.</p>"
           f"<details><summary>the best run's resolved recipe ({_e(source)})</summary><pre>{_e(text)}</pre></details>"]
    for r in (r for row in cmp.rows for r in row):
        if r.run_id == best.run_id:
            continue
        keys = sorted(set(best.params) | set(r.params))
        changed = [(k, best.params.get(k), r.params.get(k)) for k in keys if best.params.get(k) != r.params.get(k)]
        names = ", ".join(k for k, _, _ in changed[:6]) + (", ..." if len(changed) > 6 else "")
        summary = f"{len(changed)} field{'s' if len(changed) != 1 else ''} differ: {names}" if changed \
            else "same recipe"
        rows = "".join(f"<tr><td>{_e(k)}</td><td class='minus'>{_e('(absent)' if a is None else a)}</td>"
                       f"<td class='plus'>{_e('(absent)' if b is None else b)}</td></tr>" for k, a, b in changed)
        out.append(f"<details class='diff' data-run='{_e(r.run_id)}'><summary><b>{_e(r.name)}</b> "
                   f"<code>{_e(r.run_id)}</code> <span class='state {_e(r.state)}'>{_e(r.state)}</span>: "
                   f"{_e(summary)}</summary>"
                   + (f"<table><tr><th>field</th><th>best run</th><th>this run</th></tr>{rows}</table>" if rows else "")
                   + "</details>")
    return "".join(out)


def render(cmp: Comparison, data: dict[str, Any]) -> str:
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    sel = cmp.sel
    sweep = sel.sweep
    n = len(data["runs"])
    best = next((r for r in data["runs"] if r["id"] == data["best"]), None)
    facts = [f"{n} runs", f"store <code>{_e(sel.uri)}</code>",
             "experiment" + ("s" if len(sel.experiments) > 1 else "") + " " +
             ", ".join(f"<b>{_e(x)}</b>" for x in sel.experiments.values())]
    if sweep is not None:
        facts.append(f"sweep parent <code>{_e(sweep.run.run_id)}</code> ({_e(sweep.metric)}, {_e(sweep.direction)})")
    if cmp.sort_metric:
        facts.append(f"sorted by {_e(data['importance'].get('target') or cmp.sort_metric)} "
                     f"({_e(cmp.direction[cmp.sort_metric])})")
    if cmp.grouped:
        facts.append(f"{len(cmp.rows)} groups of runs that differ only by seed")
    best_line = ""
    if best is not None and cmp.sort_metric:
        key = f"{cmp.sort_metric}|{cmp.sort_summary}"
        best_line = (f"<p class='bestline'>Best run: <b>{_e(best['name'])}</b> <code>{_e(best['id'])}</code>, "
                     f"{_e(cmp.sort_metric)} {_e(cmp.sort_summary)} = {_e(fmt(best['values'].get(key)))}"
                     + "".join(f", {_e(p)} = {_e(v)}" for p, v in best["params"].items()) + "</p>")
    sweep_html = ""
    if sweep is not None:
        sweep_html = ("<h2>Sweep</h2><div class='grid'><div class='card' id='history'></div>"
                      "<div class='card' id='intermediate'></div></div>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>retort compare: {_e(data['title'])}</title>
<script>{_ONERROR}</script>
<style>{_CSS}</style></head>
<body>
<header><h1>retort compare: {_e(data['title'])}</h1>
<p>{' · '.join(facts)} · written {_e(data['created'])}</p>{best_line}
<div id="report-status" data-state="loading">loading</div><pre id="report-errors"></pre></header>
<h2>Learning curves</h2><p class="note">{
    'One line per group: the mean over seeds per step, in a band of ±1 sample standard deviation.'
    if cmp.grouped else 'One line per run.'}</p>
<div class="grid" id="curves"></div>
<div id="legend"></div>
<h2>Parallel coordinates</h2><p class="note">One line per run, through the params that differ, to the
sorting metric, coloured by its rank (dark purple is best, yellow worst; grey: no value).</p>
<div class="card wide" id="parallel"></div>
<h2>Parameter importance</h2><p class="note" id="importance-note"></p><div class="card" id="importance"></div>
{sweep_html}
<h2>Runs</h2>
<div class="scroll">{_runs_table(cmp, data)}</div>
<div class="scroll">{_groups_table(cmp, data)}</div>
{_diffs(cmp)}
<script type="application/json" id="report-data">{blob}</script>
<script>{_JS}</script>
</body></html>
"""


def write_report(cmp: Comparison, path: str | Path) -> Path:
    """Write the report of ``cmp`` to ``path``; returns the path."""
    path = Path(path)
    data = gather(cmp)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(cmp, data), encoding="utf-8")
    return path


_ONERROR = """
window.__reportErrors = [];
function __reportError(text) {
  window.__reportErrors.push(text);
  var put = function () {
    var pre = document.getElementById('report-errors'), st = document.getElementById('report-status');
    if (!pre || !st) return false;
    pre.textContent = window.__reportErrors.join('\\n');
    st.setAttribute('data-state', 'error'); st.textContent = 'error';
    return true;
  };
  if (!put()) document.addEventListener('DOMContentLoaded', put);
}
window.onerror = function (msg, src, line, col) { __reportError(msg + ' (line ' + line + ':' + col + ')'); };
window.addEventListener('unhandledrejection', function (e) { __reportError('unhandled rejection: ' + e.reason); });
"""

_CSS = """
body { font: 14px/1.4 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px 32px; color: #222; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 6px; border-bottom: 1px solid #ddd; }
code, .id { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: 12px; }
.note { color: #666; margin: 2px 0 8px; }
.bestline { background: #f3f8ee; border-left: 4px solid #59a14f; padding: 6px 10px; }
#report-status { display: none; } #report-errors:empty { display: none; }
#report-errors { color: #b00; background: #fee; padding: 8px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(430px, 1fr)); gap: 14px; }
.card { border: 1px solid #e3e3e3; border-radius: 6px; padding: 6px; background: #fff; overflow-x: auto; }
.card.wide { width: fit-content; max-width: 100%; }
svg text { font-size: 11px; fill: #333; } svg .title { font-size: 13px; font-weight: 600; }
svg .grid line { stroke: #eee; } svg .axis line, svg .axis path { stroke: #999; }
#legend { margin: 8px 0; columns: 2; font-size: 12px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 5px;
  vertical-align: -1px; }
.scroll { overflow-x: auto; max-width: 100%; }
table.runs { border-collapse: collapse; font-size: 12px; }
table.runs th, table.runs td { border-bottom: 1px solid #eee; padding: 3px 8px; text-align: left; white-space: nowrap; }
table.runs th { background: #f6f6f6; position: sticky; top: 0; } .num { text-align: right !important; }
tr.best { background: #f3f8ee; font-weight: 600; }
.state.PRUNED { color: #b07a00; } .state.FAILED, .state.KILLED { color: #b00; } .state.RUNNING { color: #06c; }
details.diff { margin: 3px 0; } details table { border-collapse: collapse; margin: 4px 0 8px 18px; font-size: 12px; }
details td, details th { border: 1px solid #eee; padding: 2px 8px; font-family: ui-monospace, monospace; }
.minus { background: #fdecea; } .plus { background: #eaf6ea; } pre { font-size: 12px; }
"""

_JS = r"""
(function () {
'use strict';
var D = JSON.parse(document.getElementById('report-data').textContent);
var NS = 'http://www.w3.org/2000/svg';
var RUN = {}; D.runs.forEach(function (r) { RUN[r.id] = r; });

function el(tag, attrs, parent, text) {
  var e = document.createElementNS(NS, tag);
  for (var k in attrs) if (attrs[k] !== undefined && attrs[k] !== null) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function tip(node, text) { el('title', {}, node, text); return node; }
function fmt(v) {
  if (v === null || v === undefined) return '';
  if (!isFinite(v)) return String(v);
  var a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return String(+v.toPrecision(4));
}
function finite(v) { return v !== null && v !== undefined && isFinite(v); }
function extent(vals) {
  var lo = Infinity, hi = -Infinity;
  vals.forEach(function (v) { if (finite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; } });
  if (lo === Infinity) return [0, 1];
  if (lo === hi) { var d = Math.abs(lo) * 0.05 || 0.5; return [lo - d, hi + d]; }
  return [lo, hi];
}
function scale(domain, range, log) {
  var d0 = log ? Math.log10(domain[0]) : domain[0], d1 = log ? Math.log10(domain[1]) : domain[1];
  var f = function (v) {
    var x = log ? Math.log10(v) : v;
    return range[0] + (x - d0) / ((d1 - d0) || 1) * (range[1] - range[0]);
  };
  f.domain = domain; f.log = log;
  return f;
}
function ticks(domain, log, n) {
  var lo = domain[0], hi = domain[1], out = [];
  if (log) {
    for (var p = Math.floor(Math.log10(lo)); p <= Math.ceil(Math.log10(hi)); p++) {
      [1, 2, 5].forEach(function (m) {
        var v = m * Math.pow(10, p);
        if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
      });
    }
    if (out.length > n + 2) out = out.filter(function (v) { return Math.abs(Math.log10(v) % 1) < 1e-9; });
    return out;
  }
  var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n || 1)));
  var err = (hi - lo) / n / step;
  if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
  for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}
function frame(parent, o) {
  var W = o.width || 430, H = o.height || 280, m = {l: 58, r: 14, t: 24, b: 38};
  var svg = el('svg', {width: W, height: H, viewBox: '0 0 ' + W + ' ' + H}, parent);
  var x = scale(o.x, [m.l, W - m.r], o.xlog), y = scale(o.y, [H - m.b, m.t], o.ylog);
  var grid = el('g', {'class': 'grid'}, svg), axis = el('g', {'class': 'axis'}, svg);
  ticks(o.x, o.xlog, 6).forEach(function (v) {
    el('line', {x1: x(v), x2: x(v), y1: m.t, y2: H - m.b}, grid);
    el('text', {x: x(v), y: H - m.b + 14, 'text-anchor': 'middle'}, axis, fmt(v));
  });
  ticks(o.y, o.ylog, 5).forEach(function (v) {
    el('line', {x1: m.l, x2: W - m.r, y1: y(v), y2: y(v)}, grid);
    el('text', {x: m.l - 5, y: y(v) + 4, 'text-anchor': 'end'}, axis, fmt(v));
  });
  el('path', {d: 'M' + m.l + ',' + m.t + 'V' + (H - m.b) + 'H' + (W - m.r), fill: 'none'}, axis);
  el('text', {x: m.l, y: 15, 'class': 'title'}, svg, o.title || '');
  el('text', {x: (m.l + W - m.r) / 2, y: H - 6, 'text-anchor': 'middle'}, svg, o.xlabel || '');
  return {svg: svg, x: x, y: y, m: m, W: W, H: H};
}
function path(points, x, y) {
  var d = '', pen = false;
  points.forEach(function (p) {
    if (!finite(p[0]) || !finite(p[1])) { pen = false; return; }
    d += (pen ? 'L' : 'M') + x(p[0]).toFixed(1) + ',' + y(p[1]).toFixed(1); pen = true;
  });
  return d;
}
function positiveSpan(vals) {
  var e = extent(vals);
  return e[0] > 0 && e[1] / e[0] > 30;
}

function curves() {
  var box = document.getElementById('curves');
  D.curves.forEach(function (c) {
    var xs = [], ys = [];
    c.series.forEach(function (s) {
      s.steps.forEach(function (st, i) {
        xs.push(st);
        if (finite(s.mean[i])) {
          var sd = finite(s.std[i]) ? s.std[i] : 0;
          ys.push(s.mean[i] - sd, s.mean[i] + sd, s.mean[i]);
        }
      });
    });
    var ylog = positiveSpan(ys) && ys.every(function (v) { return !finite(v) || v > 0; });
    var card = document.createElement('div'); card.className = 'card'; box.appendChild(card);
    var f = frame(card, {x: extent(xs), y: extent(ys), ylog: ylog, title: c.metric + (ylog ? ' (log scale)' : ''),
                         xlabel: c.metric.indexOf('epoch') >= 0 || c.metric.indexOf('val/') === 0 ? 'epoch' : 'step'});
    f.svg.setAttribute('data-metric', c.metric);
    c.series.forEach(function (s) {
      var g = D.groups[s.group], gEl = el('g', {'data-runs': s.runs.join(' '), 'class': 'series'}, f.svg);
      tip(gEl, g.label + '\n' + s.runs.map(function (id) { return RUN[id].name + ' ' + id; }).join('\n'));
      var band = [];
      s.steps.forEach(function (st, i) {
        if (finite(s.mean[i]) && finite(s.std[i])) band.push([st, s.mean[i], s.std[i]]);
      });
      if (band.length) {
        var lo = function (v) { return ylog ? Math.max(v, f.y.domain[0]) : v; };
        var up = band.map(function (b) { return [b[0], b[1] + b[2]]; });
        var down = band.map(function (b) { return [b[0], lo(b[1] - b[2])]; }).reverse();
        el('path', {d: path(up, f.x, f.y) + path(down, f.x, f.y).replace(/^M/, 'L') + 'Z', fill: g.color,
                    'fill-opacity': 0.18, stroke: 'none'}, gEl);
      }
      var pts = s.steps.map(function (st, i) { return [st, s.mean[i]]; });
      var width = s.runs.indexOf(D.best) >= 0 ? 2.6 : 1.5;
      el('path', {d: path(pts, f.x, f.y), fill: 'none', stroke: g.color, 'stroke-width': width}, gEl);
      if (pts.length < 40) pts.forEach(function (p) {
        if (finite(p[1])) el('circle', {cx: f.x(p[0]), cy: f.y(p[1]), r: 2, fill: g.color}, gEl);
      });
    });
  });
  if (D.groups.length <= 24) {
    var legend = document.getElementById('legend');
    D.groups.forEach(function (g, i) {
      var div = document.createElement('div');
      div.innerHTML = '<span class="swatch"></span>';
      div.firstChild.style.background = g.color;
      div.appendChild(document.createTextNode((i + 1) + '. ' + g.label));
      legend.appendChild(div);
    });
  }
}

function parallel() {
  var box = document.getElementById('parallel'), axes = D.axes;
  if (axes.length < 2) { box.textContent = 'needs a param that differs and a metric'; return; }
  var W = Math.max(900, 160 * axes.length), H = 380, m = {l: 60, r: 70, t: 30, b: 34};
  var svg = el('svg', {width: W, height: H}, box);
  var step = (W - m.l - m.r) / (axes.length - 1);
  var metricAxis = axes[axes.length - 1].metric ? axes[axes.length - 1] : null;
  var ys = axes.map(function (a) {
    if (a.kind === 'cat') {
      var n = a.categories.length;
      return function (v) { return n === 1 ? (m.t + H - m.b) / 2 : m.t + (H - m.t - m.b) * (1 - v / (n - 1)); };
    }
    var e = extent(a.values);
    var s = scale(e, [H - m.b, m.t], a.kind === 'log');
    s.ext = e;
    return s;
  });
  var rank = {};  // colour by rank, not value: one outlier would squeeze every other run into one colour
  if (metricAxis) {
    var ranked = D.runs.map(function (r, i) { return i; });
    ranked = ranked.filter(function (i) { return finite(metricAxis.values[i]); });
    ranked.sort(function (a, b) {
      var d = metricAxis.values[a] - metricAxis.values[b];
      return D.sort.direction === 'minimize' ? d : -d;
    });
    ranked.forEach(function (i, k) { rank[i] = k / Math.max(1, ranked.length - 1); });
  }
  var colorOf = function (i) { return i in rank ? viridis(rank[i]) : '#bbb'; };
  var order = D.runs.map(function (r, i) { return i; });
  if (metricAxis) order.sort(function (a, b) {  // the best lines drawn last, on top
    var va = metricAxis.values[a], vb = metricAxis.values[b];
    if (!finite(va)) return -1; if (!finite(vb)) return 1;
    return D.sort.direction === 'minimize' ? vb - va : va - vb;
  });
  var lines = el('g', {}, svg);
  order.forEach(function (i) {
    var r = D.runs[i], pts = [];
    axes.forEach(function (a, k) { var v = a.values[i]; if (finite(v)) pts.push([m.l + k * step, ys[k](v)]); });
    var d = pts.map(function (p, k) { return (k ? 'L' : 'M') + p[0].toFixed(1) + ',' + p[1].toFixed(1); }).join('');
    var line = el('path', {d: d, fill: 'none', stroke: colorOf(i), 'stroke-width': r.id === D.best ? 3 : 1.4,
                           'stroke-opacity': 0.85, 'data-run': r.id}, lines);
    tip(line, r.name + ' ' + r.id + (metricAxis ? '\n' + metricAxis.name + ' = ' + fmt(metricAxis.values[i]) : ''));
  });
  axes.forEach(function (a, k) {
    var x = m.l + k * step, g = el('g', {'class': 'axis'}, svg);
    el('line', {x1: x, x2: x, y1: m.t, y2: H - m.b, stroke: '#666'}, g);
    el('text', {x: x, y: m.t - 10, 'text-anchor': 'middle', 'class': 'title'}, g, a.name);
    var labels = a.kind === 'cat' ? a.categories.map(function (c, i) { return [i, c]; })
      : ticks(ys[k].ext, a.kind === 'log', 5).map(function (v) { return [v, fmt(v)]; });
    if (labels.length > 12) labels = labels.filter(function (l, i) { return i % Math.ceil(labels.length / 12) === 0; });
    labels.forEach(function (l) {
      var y = ys[k](l[0]);
      el('line', {x1: x - 3, x2: x + 3, y1: y, y2: y, stroke: '#666'}, g);
      el('text', {x: x + 5, y: y + 4, 'paint-order': 'stroke', stroke: '#fff', 'stroke-width': 3}, g,
         String(l[1]).slice(0, 18));
    });
  });
}
function viridis(t) {
  var s = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  t = Math.min(1, Math.max(0, t)) * 0.92 * (s.length - 1);  // the palest yellow is hard to see on white
  var i = Math.min(Math.floor(t), s.length - 2), f = t - i;
  var c = [0, 1, 2].map(function (j) { return Math.round(s[i][j] + (s[i + 1][j] - s[i][j]) * f); });
  return 'rgb(' + c.join(',') + ')';
}

function importance() {
  var I = D.importance, box = document.getElementById('importance');
  document.getElementById('importance-note').textContent = I.method + (I.target ? ', explaining ' + I.target : '') +
    '. ρ: Spearman rank correlation of a numeric param with the metric.' + (I.note ? ' ' + I.note + '.' : '');
  if (!I.items.length) { box.textContent = I.note || 'nothing to show'; return; }
  var W = 560, rowH = 24, m = {l: 190, r: 120, t: 10}, H = m.t + rowH * I.items.length + 10;
  var svg = el('svg', {width: W, height: H}, box);
  I.items.forEach(function (it, i) {
    var y = m.t + i * rowH, w = (W - m.l - m.r) * (it.importance || 0);
    el('text', {x: m.l - 6, y: y + 15, 'text-anchor': 'end'}, svg, it.param);
    var bar = el('rect', {x: m.l, y: y + 3, width: Math.max(1, w), height: rowH - 8, fill: '#4e79a7',
                          'data-param': it.param}, svg);
    tip(bar, it.param + ': ' + fmt(it.importance));
    el('text', {x: m.l + w + 6, y: y + 15}, svg, fmt(it.importance) + (finite(it.rho) ? '   ρ ' + fmt(it.rho) : ''));
  });
}

function caption(svg, text) {
  var p = document.createElement('p');
  p.className = 'note'; p.textContent = text;
  svg.parentNode.appendChild(p);
}

function sweep() {
  var S = D.sweep;
  if (!S) return;
  var good = S.direction === 'minimize' ? Math.min : Math.max;
  var trials = S.trials.slice().sort(function (a, b) { return a.number - b.number; });
  var xs = trials.map(function (t) { return t.number; }), vals = trials.map(function (t) { return t.value; });
  var f = frame(document.getElementById('history'), {x: extent(xs), y: extent(vals), xlabel: 'trial',
    title: 'optimization history: ' + S.metric + ' ' + S.summary + ' (' + S.direction + ')'});
  var best = null, stepLine = [];
  trials.forEach(function (t) {
    if (finite(t.value) && t.state === 'FINISHED') {
      best = best === null ? t.value : good(best, t.value);
    }
    if (best !== null) stepLine.push([t.number, best]);
  });
  el('path', {d: path(stepLine, f.x, f.y), fill: 'none', stroke: '#e15759', 'stroke-width': 1.8}, f.svg);
  trials.forEach(function (t) {
    if (!finite(t.value)) return;
    var pruned = t.state !== 'FINISHED';
    tip(el('circle', {cx: f.x(t.number), cy: f.y(t.value), r: 4, 'data-run': t.id, fill: pruned ? '#fff' : '#4e79a7',
                      stroke: pruned ? '#b07a00' : '#4e79a7', 'stroke-width': 1.5}, f.svg),
        'trial ' + t.number + ' ' + t.state + '\n' + t.name + ' ' + t.id + '\n' + S.metric + ' = ' + fmt(t.value));
  });
  caption(f.svg, '● finished   ○ pruned or failed   red line: best so far (finished trials)');
  var xs2 = [], ys2 = [];
  trials.forEach(function (t) { t.points.forEach(function (p) { xs2.push(p[0]); ys2.push(p[1]); }); });
  var g = frame(document.getElementById('intermediate'), {x: extent(xs2), y: extent(ys2), xlabel: 'epoch',
    title: 'intermediate values of ' + S.metric + ' per trial'});
  var order = trials.filter(function (t) { return t.state === 'FINISHED'; }).concat(
    trials.filter(function (t) { return t.state !== 'FINISHED'; }));
  order.forEach(function (t) {
    var pruned = t.state === 'PRUNED', color = pruned ? '#f28e2b' : t.state === 'FINISHED' ? '#4e79a7' : '#e15759';
    var gEl = el('g', {'data-run': t.id, 'class': 'trial ' + t.state}, g.svg);
    tip(gEl, 'trial ' + t.number + ' ' + t.state + '\n' + t.name + ' ' + t.id);
    el('path', {d: path(t.points, g.x, g.y), fill: 'none', stroke: color, 'stroke-width': t.id === D.best ? 2.6 : 1.3,
                'stroke-dasharray': pruned ? '4 3' : null}, gEl);
    var last = t.points[t.points.length - 1];
    if (pruned && last && finite(last[1])) {
      el('text', {x: g.x(last[0]) + 3, y: g.y(last[1]) + 4, style: 'fill:' + color}, gEl, '✕');
    }
  });
  caption(g.svg, 'blue: finished   orange dashed, ✕ where stopped: pruned   red: failed');
}

curves();
parallel();
importance();
sweep();
var st = document.getElementById('report-status');
if (st.getAttribute('data-state') !== 'error') {
  st.setAttribute('data-state', 'ok');
  st.textContent = 'rendered ' + D.runs.length + ' runs';
}
})();
"""
