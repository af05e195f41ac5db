"""The comparison for people and programs: the terminal table (rich), CSV, and the numbers' text."""

from __future__ import annotations

import math
import sys
from typing import Any

from retort.tracking.compare.table import Column, Comparison, _cell, table_rows
from retort.tracking.compare.values import written_once

FOLD = 14  # on a terminal, long params and names fold to this width


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

