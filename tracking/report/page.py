"""The report's page: the template ``page.html`` filled with the tables Python writes, the data as JSON, and
the script and style (``report.js``, ``report.css``, ``onerror.js``), all package files, inlined so that
the page needs no network when opened.
"""

from __future__ import annotations

import html
import json
from functools import cache
from importlib.resources import files
from string import Template
from typing import Any

from retort.tracking.compare import Comparison, fmt, fmt_mean_std, written_once
from retort.tracking.compare.output import fmt_param
from retort.tracking.compare.seeds import LEVEL
from retort.tracking.compare.table import _cell
from retort.tracking.report.data import recipe_text


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
    level = f"{LEVEL:.0%}"
    out = [f"<h2>Groups: mean ± std over seeds</h2><p class='note'>n counts seeds (repeats of a seed, such as "
           f"reruns, are averaged into one value); [low, high]: the {level} confidence interval of the mean. "
           f"vs best: a paired t-test, seed by seed, of each group's {_e(cmp.sort_metric)} against the first "
           f"group's, at p &lt; {1 - LEVEL:.2g}.</p>"
           "<table class='runs'><thead><tr><th>group</th><th>n</th><th>seeds</th>"]
    out += [f"<th>{_e(p)}</th>" for p in cmp.params]
    keys = [(m, s) for m in cmp.metrics for s in cmp.summaries[m]]
    out += [f"<th class='num'>{_e(m if written_once(m) else f'{m} {s}')}</th>" for m, s in keys]
    if cmp.verdicts:
        out.append("<th>vs best</th>")
    out.append("</tr></thead><tbody>")
    seeds = next(c for c in cmp.columns if c.kind == "seeds")
    for i, row in enumerate(cmp.rows):
        g = data["groups"][i]
        out.append(f"<tr><td><span class='swatch' style='background:{g['color']}'></span>{i + 1}</td>"
                   f"<td>{len({r.seed for r in row})}</td><td>{_e(_cell(cmp, row, seeds))}</td>")
        out += [f"<td>{_e(row[0].params.get(p))}</td>" for p in cmp.params]
        for m, s in keys:
            sp = cmp.spread(row, m, s)
            ci = "" if sp.low is None else f" [{fmt(sp.low)}, {fmt(sp.high)}]"
            out.append(f"<td class='num'>{_e(fmt_mean_std(sp.mean, sp.std) + ci)}</td>")
        if cmp.verdicts:
            verdict = cmp.verdicts[i]
            word = "best" if verdict is None else str(verdict)
            out.append(f"<td class='verdict {_e(word.split()[0])}'>{_e(word)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _diffs(cmp: Comparison) -> str:
    best = cmp.best_run
    if best is None:
        return ""
    text, source = recipe_text(cmp, best)
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
                     + "".join(f", {_e(p)} = {_e(fmt_param(str(v)))}" for p, v in best["params"].items()) + "</p>")
    sweep_html = ""
    if sweep is not None:
        sweep_html = ("<h2>Sweep</h2><div class='grid'><div class='card' id='history'></div>"
                      "<div class='card' id='intermediate'></div></div>")
    note = ("One line per group: the mean over seeds per step, in a band of ±1 sample standard deviation."
            if cmp.grouped else "One line per run.")
    return _file("page.html").substitute(
        title=_e(data["title"]), onerror=_file("onerror.js").template, css=_file("report.css").template,
        facts=" · ".join(facts) + f" · written {_e(data['created'])}", best_line=best_line, curves_note=note,
        sweep=sweep_html, runs_table=_runs_table(cmp, data), groups=_groups_table(cmp, data), diffs=_diffs(cmp),
        data=blob, script=_file("report.js").template)


@cache
def _file(name: str) -> Template:
    """A package file of the page, as a template (only ``page.html`` has placeholders)."""
    return Template(files("retort.tracking.report").joinpath(name).read_text(encoding="utf-8"))
