"""``retort rerun RUN_ID``: rebuild a run from its MLflow record alone, train again, compare the numbers."""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from retort.tracking.vocabulary import Metric, Tag

HELP = "re-run a recorded run from its MLflow record and compare the final metrics"
EXAMPLES = """examples:
  retort rerun 3f2a9c...                                # prints reproduced: yes|no
  retort rerun 3f2a9c... --tracking-uri sqlite:////shared/mlflow.db

The recipe comes from the run's recipe.yaml artifact (no file needed); the new run is recorded in the
same experiment with tag retort.rerun_of. Exit 0 when every final metric matches exactly, 1 when not
(each differing metric is printed), 2 for an unknown run."""

#: metrics a re-run must reproduce: the final values of training, validation and test
COMPARED_PREFIXES = (Metric.TRAIN_LOSS_EPOCH, "val/", "test/")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the MLflow run to re-run")


def recorded_recipe(client: Any, run_id: str, tmp: Path) -> Any:
    """The run's resolved recipe, from its ``recipe.yaml`` artifact; an unknown run is bad input."""
    from mlflow.exceptions import MlflowException

    from retort.recipes import RecipeError
    from retort.recipes.schema import resolve
    from retort.recipes.yamlio import load_file

    try:
        client.get_run(run_id)
    except MlflowException:
        raise RecipeError(f"no run {run_id!r} in the store {client.tracking_uri}", field="RUN_ID") from None
    try:
        path = Path(client.download_artifacts(run_id, "recipe.yaml", str(tmp)))
    except (MlflowException, OSError):
        raise RecipeError(f"run {run_id} has no recipe.yaml artifact: it was not recorded by retort",
                          field="RUN_ID") from None
    recipe = resolve(load_file(path), source=f"run:{run_id}")
    return recipe


def drift(client: Any, run: Any, tmp: Path) -> list[str]:
    """Warnings when this code or environment differs from the record's."""
    from mlflow.exceptions import MlflowException

    from retort.tracking.context import code_states, environment, version

    tags = run.data.tags
    out = []
    if tags.get(Tag.VERSION) and tags[Tag.VERSION] != version("retort"):
        out.append(f"retort {version('retort')} here, {tags[Tag.VERSION]} in the record")
    for prefix, state in code_states(None).items():
        recorded = tags.get(f"{prefix}.commit")
        if recorded and recorded != state.commit:
            out.append(f"{prefix} commit {state.commit[:12]} here, {recorded[:12]} in the record")
        if state.dirty:
            out.append(f"{prefix} working tree at {state.root} has uncommitted changes")
    try:
        recorded_env = Path(client.download_artifacts(run.info.run_id, "requirements.txt", str(tmp))).read_text()
    except (MlflowException, OSError):
        return [*out, "the record has no environment (requirements.txt) to compare with"]
    then = _packages(recorded_env)
    now = _packages(environment())
    changed = sorted(n for n in then.keys() | now.keys() if then.get(n) != now.get(n))
    if changed:
        shown = ", ".join(f"{n} {then.get(n, 'absent')} -> {now.get(n, 'absent')}" for n in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        out.append(f"environment differs: {shown}{more}")
    return out


def _packages(text: str) -> dict[str, str]:
    pairs = (line.split("==", 1) for line in text.splitlines() if "==" in line and not line.startswith("#"))
    return {name.lower(): ver for name, ver in pairs}


def final_metrics(run: Any) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items() if k.startswith(COMPARED_PREFIXES)}


def compare(recorded: dict[str, float], now: dict[str, float]) -> list[str]:
    """One line per metric that differs (exactly: a deterministic CPU run reproduces bit for bit)."""
    lines = []
    for key in sorted(recorded.keys() | now.keys()):
        a, b = recorded.get(key), now.get(key)
        same = a is not None and b is not None and (a == b or (math.isnan(a) and math.isnan(b)))
        if not same:
            lines.append(f"  {key}: recorded {a!r}, now {b!r}")
    return lines


def main(args: argparse.Namespace) -> int:
    from retort import recipes
    from retort.tracking.store import open_store, resolve_uri

    uri = resolve_uri(args.tracking_uri)
    client = open_store(uri)  # a folder without a store gets no empty mlflow.db
    with tempfile.TemporaryDirectory(prefix="retort-rerun-") as tmp:
        recipe = recorded_recipe(client, args.run_id, Path(tmp))
        run = client.get_run(args.run_id)
        for warning in drift(client, run, Path(tmp)):
            print(f"warning: {warning}", file=sys.stderr)
    from retort.plugins.errors import RunFailed

    try:
        result = recipes.run(recipe, tracking_uri=uri, quiet=args.quiet, tags={Tag.RERUN_OF: args.run_id})
    except RunFailed as exc:
        print(f"error: the re-run failed: {exc}", file=sys.stderr)
        return 1
    recorded = final_metrics(run)
    now = {k: v for k, v in client.get_run(result.run_id).data.metrics.items() if k.startswith(COMPARED_PREFIXES)}
    differing = compare(recorded, now)
    print(f"run_id: {result.run_id}")
    if differing:
        print("reproduced: no")
        print("\n".join(differing))
        return 1
    print("reproduced: yes")
    return 0
