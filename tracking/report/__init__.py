"""The HTML report of ``retort compare --html``: one self-contained page, no network when opened.

Python gathers the numbers (:mod:`.data`: metric histories, chart axes, parameter importance, recipe diffs)
into one JSON blob inlined in the page (:mod:`.page`, from the template ``page.html``); the page's script
(``report.js``) draws the plots as SVG. Sections:

- learning curves, one chart per metric; runs that differ only by seed are one line (the mean per step)
  in a band of ±1 sample standard deviation;
- parallel coordinates: one line per run through the params that differ, ending on the sorting metric;
- parameter importance: Optuna's fANOVA with Spearman's rank correlation beside it for numeric params;
- for a sweep: the optimization history (value per trial, best so far) and every trial's intermediate
  values of the sweep's metric, pruned trials marked;
- the runs table (every run id and name) and the resolved-recipe diff between the best run and each
  other run, field by field from the runs' params (every dotted recipe field is a param), with the best
  run's ``recipe.yaml`` artifact in full.

When the script has drawn everything it sets ``#report-status[data-state=ok]``; any error is caught by
``window.onerror`` (``onerror.js``, loaded first) into ``#report-errors`` and sets ``data-state=error``
(the browser test reads both).
"""

from __future__ import annotations

from pathlib import Path

from retort.tracking.compare import Comparison
from retort.tracking.report.data import gather, importance
from retort.tracking.report.page import render

__all__ = ["gather", "importance", "render", "write_report"]


def write_report(cmp: Comparison, path: str | Path) -> Path:
    """Write the report of ``cmp`` to ``path``; returns the path."""
    path = Path(path)
    data = gather(cmp)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(cmp, data), encoding="utf-8")
    return path
