"""The comparison for people and programs: the terminal table (rich), CSV, and the numbers' text.

The table fits its width (the terminal's; 120 columns on a pipe): short run ids, params and values to 4
significant digits, long param names over two header lines. Where that is still too wide the columns that
matter least go (the run names, then the metrics after the sorting one, from the right), and the caption
says how many; params wrap only when even that does not fit. ``--wide`` shows every column with full ids
and values, as wide as it needs. The CSV always has every column and every digit.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

from retort.tracking.compare.seeds import LEVEL
from retort.tracking.compare.table import Column, Comparison, _cell, table_rows
from retort.tracking.compare.values import written_once

PIPE_WIDTH = 120  # the table's width when standard output is not a terminal (COLUMNS overrides)
SHORT_ID = 8  # run ids in the table: this many characters, more where two runs shown share them


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


def fmt_param(text: str) -> str:
    """A param's recorded text, a float in it to 4 significant digits (``0.0012345678901234567`` ->
    ``0.001235``); integers, words and lists as recorded."""
    if any(c in text for c in ".eE") and not text.lower().lstrip("+-").startswith(("inf", "nan")):
        try:
            return fmt(float(text))
        except ValueError:
            pass
    return text


def short_ids(ids: list[str]) -> dict[str, str]:
    """Each run id cut to :data:`SHORT_ID` characters, longer where two ids shown share a prefix."""
    for n in range(SHORT_ID, max((len(i) for i in ids), default=SHORT_ID) + 1):
        cut = {i: i[:n] for i in ids}
        if len(set(cut.values())) == len(set(ids)):
            return cut
    return {i: i for i in ids}


def caption(cmp: Comparison, left_out: int = 0) -> str:
    runs = sum(len(row) for row in cmp.rows)
    words = [f"{runs} runs" if not cmp.grouped else f"{runs} runs in {len(cmp.rows)} groups (mean ± std over seeds)"]
    if cmp.sel.sweep is not None:
        words.append(f"sweep {cmp.sel.sweep.run.run_id}")
    if cmp.sort_metric:
        what = cmp.sort_metric if written_once(cmp.sort_metric) else f"{cmp.sort_metric} {cmp.sort_summary}"
        words.append(f"sorted by {what} ({cmp.direction[cmp.sort_metric]})")
    text = ", ".join(words)
    if cmp.verdicts:
        text += (f"; vs best: a paired t-test by seed against the first group, at p < {1 - LEVEL:.2g}; "
                 f"{LEVEL:.0%} CI of the mean")
    if not cmp.params:
        text += "; no params differ"
    if left_out:
        text += f"; {left_out} column{'s' if left_out > 1 else ''} left out to fit (--wide shows all)"
    return text


def write_csv(cmp: Comparison, out: Any) -> None:
    import csv

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.key for c in cmp.columns])
    for row in table_rows(cmp):
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])


def _texts(cmp: Comparison, col: Column, wide: bool, ids: dict[str, str]) -> list[str]:
    out = []
    for row in cmp.rows:
        if col.kind == "ci":
            s = cmp.spread(row, col.metric or "", col.summary or "")
            out.append("" if s.low is None else f"{fmt(s.low)} to {fmt(s.high)}")
            continue
        v = _cell(cmp, row, col)
        if col.kind == "metric" and cmp.grouped:
            s = cmp.spread(row, col.metric or "", col.summary or "")
            out.append(fmt_mean_std(s.mean, s.std))
        elif col.kind == "run_id" and not wide:
            out.append(ids[v])
        elif col.kind == "param" and not wide:
            out.append(fmt_param(str(v)))
        else:
            out.append(fmt(v))
    return out


def _header(col: Column, texts: list[str], wide: bool) -> str:
    """A param's dotted name over two lines (``optimizer.`` / ``weight_decay``) where it is wider than its values."""
    widest = max((len(t) for t in texts), default=0)
    if col.kind == "param" and not wide and len(col.header) > max(widest, 8) and "." in col.header:
        head, _, tail = col.header.rpartition(".")
        return f"{head}.\n{tail}"
    return col.header


def print_table(cmp: Comparison, file: Any = None, width: int | None = None, wide: bool = False) -> None:
    """The rich table, fitted to ``width`` (default: the terminal's, else ``COLUMNS``, else 120); ``wide``:
    every column, full ids and values."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    file = file or sys.stdout
    tty = file.isatty() if hasattr(file, "isatty") else False
    if width is None:
        width = Console(file=file).width if tty else int(os.environ.get("COLUMNS") or PIPE_WIDTH)
    # std joins its mean in one cell, the sorting metric's confidence interval gets one; a group's run ids
    # only in the CSV (--no-group-by-seed lists runs)
    shown: list[Column] = []
    for c in cmp.columns:
        if c.stat in ("std", "low", "high") or c.kind == "run_ids":
            continue
        shown.append(c)
        if cmp.verdicts and c.kind == "metric" and c.metric == cmp.sort_metric and c.summary == cmp.sort_summary:
            shown.append(Column("ci", f"{LEVEL:.0%} CI", "ci", c.metric, c.summary))
    ids = short_ids([r.run_id for row in cmp.rows for r in row])
    texts = {id(c): _texts(cmp, c, wide, ids) for c in shown}
    heads = {id(c): c.header for c in shown}

    def measure() -> dict[int, int]:
        return {id(c): max([len(t) for t in texts[id(c)]] + [len(line) for line in heads[id(c)].split("\n")])
                for c in shown}

    def needed(cols: list[Column]) -> int:
        return sum(widths[id(c)] for c in cols) + 3 * len(cols) + 1

    widths = measure()
    if not wide and needed(shown) > width:  # long param names over two lines
        heads = {id(c): _header(c, texts[id(c)], wide) for c in shown}
        widths = measure()

    left_out = 0
    if not wide:  # the columns that matter least go first, until the table fits
        key = (cmp.sort_metric, cmp.sort_summary)
        others = [c for c in shown if c.kind == "metric" and (c.metric, c.summary) != key]
        for c in [c for c in shown if c.kind == "name"] + others[::-1] + [c for c in shown if c.kind == "ci"]:
            if needed(shown) <= width:
                break
            shown.remove(c)
            left_out += 1
    fits = wide or needed(shown) <= width
    best: dict[int, float] = {}
    for c in shown:
        if c.kind == "metric" and c.metric:
            vals = [v for v in (_cell(cmp, row, c) for row in cmp.rows) if v is not None and not math.isnan(v)]
            if vals:
                best[id(c)] = min(vals) if cmp.direction[c.metric] == "minimize" else max(vals)

    table = Table(box=box.MINIMAL_HEAVY_HEAD, caption=caption(cmp, left_out), caption_justify="left")
    for c in shown:
        justify = "right" if c.kind in ("metric", "n", "ci") else "left"
        if fits:  # every cell fits: fixed widths spare rich measuring each cell (1000 rows: -25%)
            table.add_column(heads[id(c)], justify=justify, no_wrap=True, width=widths[id(c)])
        else:  # params (and names) wrap, only because they must; numbers never do
            table.add_column(heads[id(c)], justify=justify, no_wrap=c.kind not in ("param", "name", "experiment"),
                             overflow="fold")
    console = Console(file=file, width=needed(shown) if fits else width, highlight=False, markup=False,
                      emoji=False)  # cells are plain text
    for i, row in enumerate(cmp.rows):
        cells = [texts[id(c)][i] for c in shown]
        if tty:
            marks = [c.kind == "metric" and _cell(cmp, row, c) == best.get(id(c)) for c in shown]
            table.add_row(*(Text(t, style="bold green" if b else "") for t, b in zip(cells, marks)))
        else:
            table.add_row(*cells)
    console.print(table)
