"""The ``retort`` command line. One function per subcommand; heavy libraries load only inside them.

run, show, recipes and plugins live here; the tracking commands live in their own modules
(``COMMAND_MODULES``), each with ``HELP``, ``EXAMPLES``, ``add_arguments(parser)`` and ``main(args) -> int``,
and importing those modules must stay cheap (``retort --help`` builds every parser).

Exit codes: 0 success; 2 bad input (nothing recorded); 1 a failure during work (the run is FAILED);
130/143 interrupted by SIGINT/SIGTERM (the run is KILLED).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from retort.plugins.errors import Interrupted, RecipeError, RunFailed
from retort.recipes import display

EXAMPLES = {
    "run": """examples:
  retort run digits-mlp                         # a shipped recipe, recorded in ./mlflow.db
  retort run my.yaml -s optimizer.lr=0.01 -s data.batch_size=32
  retort run digits-mlp -s trainer.max_epochs=3 -q --tracking-uri sqlite:///runs.db
  retort run --resume 3f2a9c...                 # continue a run stopped by Ctrl-C/SIGTERM
  retort run digits-mlp --seeds 5               # seeds 0..4: five runs under one parent run""",
    "show": """examples:
  retort show digits-mlp                        # every field, every default
  retort show digits-mlp -s optimizer=rmsprop > mine.yaml && retort run mine.yaml""",
    "recipes": """examples:
  retort recipes""",
    "plugins": """examples:
  retort plugins              # every kind
  retort plugins optimizer    # Flux rules and torch.optim classes, with their origin
  retort plugins data csv     # one plugin's fields: type, default and what each means""",
}


COMMAND_MODULES = {  # command -> module with HELP, EXAMPLES, add_arguments(parser), main(args)
    "sweep": "retort.recipes.sweep",
    "lr-find": "retort.recipes.tune_lr",
    "batch-size": "retort.recipes.tune_batch",
    "rerun": "retort.recipes.rerun",
    "predict": "retort.recipes.predict",
    "compare": "retort.tracking.compare",
    "ui": "retort.tracking.ui",
    "sync": "retort.tracking.liveness",
}


def _command_modules() -> dict[str, object]:
    import importlib

    out = {}
    for name, module in COMMAND_MODULES.items():
        try:
            out[name] = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return out


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    parser = argparse.ArgumentParser(
        prog="retort",
        description="Run deep-learning training recipes and record every run in MLflow.",
        epilog="examples:\n  retort recipes\n  retort run digits-mlp\n  retort show digits-mlp -s optimizer.lr=0.01\n"
               "  retort plugins loss\n\nrun 'retort COMMAND --help' for a command's options and examples",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"retort {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common], epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    for name, help in (("run", "train, test and record one run of a recipe"),
                       ("show", "print the fully resolved recipe (every default filled) as YAML")):
        p = add(name, help)
        p.add_argument("recipe", metavar="RECIPE", nargs="?" if name == "run" else None,
                       help="a recipe file or a shipped recipe's name" +
                            (" (with --resume: may be left out, the run's recorded recipe is used)"
                             if name == "run" else ""))
        p.add_argument("-s", "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                       help="override a field by dotted path (repeatable), e.g. -s optimizer.lr=0.01")
        if name == "run":
            p.add_argument("--resume", metavar="RUN_ID",
                           help="continue an interrupted run from its last checkpoint, into the same MLflow run; "
                                "'auto': the latest interrupted run of RECIPE started by the same command, else a "
                                "new run (for requeued jobs)")
            p.add_argument("--seeds", type=int, metavar="N",
                           help="run the recipe's seed and the N - 1 after it, as sibling runs under one parent run")
    add("recipes", "list the shipped recipes")
    p = add("plugins", "list registered plugins with their one-line doc and origin")
    p.add_argument("kind", nargs="?", metavar="KIND",
                   help="loss, optimizer, scheduler, callback, model, data or metric (default: all)")
    p.add_argument("name", nargs="?", metavar="NAME", help="one plugin: its fields with types, defaults and docs")
    for name, module in _command_modules().items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, parents=[common],
                           epilog=module.EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(handler=module.main)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("retort")
    except PackageNotFoundError:
        return "unknown"


def cmd_run(args: argparse.Namespace) -> int:
    if args.recipe is None and args.resume == "auto":
        raise RecipeError("--resume auto continues the latest interrupted run of a RECIPE: give it", field="RECIPE")
    if args.recipe is None and not args.resume:
        raise RecipeError("give a RECIPE (a file or a shipped name; see 'retort recipes')", field="RECIPE")
    if not args.quiet:  # before the imports: PyTorch, Lightning and MLflow take seconds
        display.status(f"retort run {args.recipe or args.resume}: loading PyTorch, Lightning and MLflow")
    from retort import recipes

    if args.seeds is not None and args.resume:
        raise RecipeError("resume one run at a time; drop --seeds", field="--seeds")
    if args.recipe is None:
        recipe = _recorded_recipe(args)
    else:
        recipe = recipes.load(args.recipe, args.overrides)
    if args.seeds is not None:
        return _run_seeds(recipe, args)
    from retort.recipes.runner import run

    try:
        result = run(recipe, tracking_uri=args.tracking_uri, quiet=args.quiet, resume=args.resume)
    except RunFailed as exc:
        display.clear_status()
        from retort.plugins.errors import shorten

        print(f"error: run failed: {shorten(str(exc), 1000)}", file=sys.stderr)
        if exc.run_id:
            print(f"run_id: {exc.run_id} (FAILED)", file=sys.stderr)
        return 1
    if result.rank:
        return 0
    print_final(result)
    return 0


def print_final(result: Any) -> None:
    """A run's last lines: the last epoch's values, which weights were tested, the test values, the run id."""
    tested = False
    for key, value in result.metrics.items():
        if key.startswith("test/") and not tested:
            print(f"tested: {result.tested}")
            tested = True
        print(f"{key}: {value:.6g}")
    print(f"run_id: {result.run_id}")


def _run_seeds(recipe: Any, args: argparse.Namespace) -> int:
    from retort.recipes.seeds import run_seeds

    result = run_seeds(recipe, args.seeds, tracking_uri=args.tracking_uri, quiet=args.quiet)
    for seed, why in result.failed.items():
        print(f"error: seed {seed} failed: {why}", file=sys.stderr)
    finished = [s for s in result.seeds if s in result.metrics]
    print(f"seeds: {', '.join(map(str, result.seeds))} ({len(finished)} finished)")
    for key, (mean, std) in result.summary().items():
        print(f"{key}: {mean:.6g} ± {std:.2g}")
    print(f"run_ids: {', '.join(str(result.run_ids.get(s)) for s in result.seeds)}")
    print(f"parent_run_id: {result.parent_run_id}")
    return 1 if result.failed else 0


def _recorded_recipe(args: argparse.Namespace):
    import tempfile
    from pathlib import Path

    from retort.recipes.rerun import recorded_recipe
    from retort.tracking.store import open_store, resolve_uri

    if args.overrides:
        raise RecipeError("a resumed run keeps its recorded recipe; drop the -s overrides", field="--set")
    client = open_store(resolve_uri(args.tracking_uri))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return recorded_recipe(client, args.resume, Path(tmp))
        except RecipeError as exc:
            exc.field = "--resume"
            raise


def cmd_show(args: argparse.Namespace) -> int:
    from retort import recipes

    sys.stdout.write(recipes.load(args.recipe, args.overrides).to_yaml())
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from retort import recipes

    rows = recipes.shipped()
    width = max((len(n) for n, _ in rows), default=0)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from retort import plugins

    if args.kind is not None and args.kind not in plugins.KINDS:
        raise RecipeError(f"unknown plugin kind {args.kind!r}{plugins.did_you_mean(args.kind, plugins.KINDS)}; "
                          f"valid kinds: {', '.join(plugins.KINDS)}", field="KIND")
    if args.name is not None:
        return _plugin_fields(args.kind, args.name)
    rows = plugins.describe(args.kind)
    kinds = [args.kind] if args.kind else list(plugins.KINDS)
    for kind in kinds:
        mine = [r for r in rows if r[0] == kind]
        print(f"{kind} ({len(mine)})")
        width = max((len(r[1]) for r in mine), default=0)
        for _, name, doc, origin in mine:
            print(f"  {name:<{width}}  {doc}  [{origin}]")
    return 0


def _plugin_fields(kind: str, name: str) -> int:
    """``retort plugins KIND NAME``: the doc, then each field as a recipe would write it."""
    import inspect

    from retort import plugins
    from retort.recipes.schema import shared_fields
    from retort.recipes.yamlio import dumps

    try:
        entry = plugins.get(kind, name)
    except plugins.PluginError as exc:
        raise RecipeError(str(exc), field="NAME") from None
    doc = (inspect.getdoc(entry.factory) or entry.doc).split("\n\n", 1)[0]
    print(f"{kind} {entry.name}  [{entry.origin}]")
    print(f"  {doc}")
    docs = plugins.field_docs(entry)
    aliases = {canon: alias for alias, canon in entry.aliases.items()}

    def value(default: object) -> str:
        if default is inspect.Parameter.empty:
            return "(required)"
        return dumps(default).strip().removesuffix("...").strip()

    rows = [(p.name + (f" (alias {aliases[p.name]})" if p.name in aliases else ""), plugins.type_name(p.annotation),
             value(p.default), docs.get(p.name, "")) for p in entry.params.values()]
    shared = [(f, t, value(d), doc) for f, t, d, doc in shared_fields(kind)]
    for title, table in (("fields", rows), (f"fields every {kind} shares", shared)):
        if not table:
            continue
        print(f"{title}:")
        widths = [max(len(r[i]) for r in table) for i in range(3)]
        for row in table:
            print(("  " + "  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + f"  {row[3]}").rstrip())
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "show": cmd_show, "recipes": cmd_recipes, "plugins": cmd_plugins,
}


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """One retort command, as the console script runs it; its exit status. Called from Python, the process's
    own SIGINT and SIGTERM handlers are back in place when it returns."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _command(argv)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _command(argv)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _command(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    try:
        handler = getattr(args, "handler", None) or COMMANDS[args.command]
        try:
            return handler(args)
        finally:
            display.clear_status()  # a status line left on a terminal: the last words start on a clean line
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except Interrupted as exc:
        print(f"\n{interrupted(args, exc)}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:  # before a run had started: nothing is recorded
        print("\ninterrupted (SIGINT) before anything was recorded", file=sys.stderr)
        return 128 + signal.SIGINT


def interrupted(args: argparse.Namespace, exc: Interrupted) -> str:
    """What was left behind and the exact command that continues it."""
    import shlex

    from retort.tracking.store import DEFAULT_URI

    if args.command == "sweep":
        from retort.tracking.context import command_line

        if exc.run_id is None:
            return f"interrupted ({exc}) before the sweep's parent run was recorded; to start it:\n  {command_line()}"
        return (f"interrupted ({exc}); the sweep's parent run {exc.run_id} is recorded as KILLED and the trials it "
                f"interrupted run again when it resumes; resume it with the same command:\n  {command_line()}")
    if exc.run_id is None:
        return f"interrupted ({exc}) before the run was recorded"
    if not exc.resumable:
        return (f"interrupted ({exc}); run {exc.run_id} is recorded as KILLED, with no checkpoint to resume from "
                f"(it stopped at once)")
    store = f" --tracking-uri {shlex.quote(exc.uri)}" if exc.uri and exc.uri != DEFAULT_URI else ""
    rest = " (the seeds after it did not run)" if getattr(args, "seeds", None) else ""
    return (f"interrupted ({exc}); run {exc.run_id} is recorded as KILLED, with a checkpoint{rest}; resume it "
            f"with:\n  retort run --resume {exc.run_id}{store}")


def run_exit_handlers() -> None:
    """Run the functions registered with :mod:`atexit` now, as the interpreter would at its exit.

    MLflow and Lightning close runs and files in them. :func:`leave` ends with ``os._exit``, which skips
    them along with the slow teardown; CPython's private ``atexit._run_exitfuncs`` is the only way to run
    them first (and it unregisters each, so none runs twice)."""
    import atexit

    atexit._run_exitfuncs()


def leave(code: int) -> None:
    """End the process now with ``code``: exit handlers run and output is flushed, but the interpreter's
    teardown of torch, Lightning and MLflow (about 2 s on 2 cores, after everything is recorded and closed)
    is skipped."""
    import logging

    run_exit_handlers()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe
            stream.flush()
    os._exit(code)


def entry() -> None:
    """The ``retort`` console script: :func:`main`, then :func:`leave` (an uncaught exception leaves the
    normal way, with its traceback). A signal after the work is done changes nothing."""

    for sig in (signal.SIGINT, signal.SIGTERM):  # the whole command, not only training
        signal.signal(sig, _interrupt)
    code = _command(None)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    leave(code)


if __name__ == "__main__":
    entry()
