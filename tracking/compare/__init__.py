"""``retort compare``: the runs side by side, as a terminal table, CSV, or a self-contained HTML report.

The command (this module: its help, arguments and ``main``) and its parts, one question each:
:mod:`.select` which runs; :mod:`.values` their metric values (last, min, max, best) read in bulk;
:mod:`.table` the comparison (the params that differ, rows of runs or seed groups, their order, columns);
:mod:`.seeds` a group's spread over seeds and whether two groups differ beyond seed noise; :mod:`.output`
the terminal table fitted to its width, and CSV. The report is :mod:`retort.tracking.report`.
"""

from __future__ import annotations

import argparse
import sys

from retort.plugins.errors import RecipeError
from retort.tracking.compare.output import caption, fmt, fmt_mean_std, print_table, write_csv
from retort.tracking.compare.select import Run, Selection, Sweep, search, select, sweep_of
from retort.tracking.compare.table import SUMMARIES, Column, Comparison, compare, table_rows
from retort.tracking.compare.values import default_metrics, extremes, histories, lower_is_better, written_once

__all__ = ["EXAMPLES", "HELP", "Column", "Comparison", "Run", "Selection", "Sweep", "add_arguments", "caption",
           "compare", "default_metrics", "extremes", "fmt", "fmt_mean_std", "histories", "lower_is_better", "main",
           "print_table", "search", "select", "sweep_of", "table_rows", "write_csv", "written_once"]

HELP = "compare runs: the params that differ, each metric's last and best value; CSV; an HTML report"
EXAMPLES = """examples:
  retort compare --experiment digits              # every run of an experiment, best val/loss first
  retort compare RUN_ID RUN_ID RUN_ID             # named runs (ids as printed by `retort run`)
  retort compare --sweep PARENT_RUN_ID --html sweep.html
  retort compare --experiment digits --metric val/accuracy --summary best
  retort compare --experiment digits --no-group-by-seed --csv runs.csv
  retort compare                                  # the experiment of the latest run"""



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
    parser.add_argument("--wide", action="store_true",
                        help="every column, full run ids and values, however wide (default: fit the terminal, "
                             "120 columns on a pipe)")
    parser.add_argument("--descriptive", action="store_true",
                        help="count descriptive fields (name, description, sweep.*, tracking.*) as params that "
                             "differ and group by them (default: they never do)")
    parser.add_argument("--csv", nargs="?", const="-", metavar="FILE",
                        help="write CSV instead of the table (to FILE, or to standard output)")
    parser.add_argument("--html", metavar="FILE",
                        help="also write a self-contained HTML report: curves, parallel coordinates, parameter "
                             "importance, sweep history, recipe diffs")



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
    cmp = compare(sel, args.metric, args.summary, args.group_by_seed, with_descriptive=args.descriptive)
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
        print_table(cmp, wide=args.wide)
    return 0
