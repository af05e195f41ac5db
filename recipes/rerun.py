"""``retort rerun RUN_ID``: rebuild a run from its MLflow record alone, train again, compare the numbers."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from retort.tracking.vocabulary import Metric, Tag

HELP = "re-run a recorded run from its MLflow record and compare the final metrics"
EXAMPLES = """examples:
  retort rerun 3f2a9c...                                # prints reproduced: yes|no
  retort rerun 3f2a9c... --tracking-uri sqlite:////shared/mlflow.db

  retort rerun 3f2a9c... --tolerance 1e-2               # a bf16 GPU run on another GPU model

The recipe comes from the run's recipe.yaml artifact (no file needed); the new run is recorded in the
same experiment with tag retort.rerun_of. It says which of code, environment, hardware and data differ
from the record. Exit 0 when every final metric matches (exactly on CPU; within a relative 1e-3 when either
run used a GPU, whose kernels and reductions differ between GPU models, drivers and CUDA/cuDNN versions), 1
when not (each differing metric is printed), 2 for an unknown run, data that changed since the run (unless
--allow-data-change), or a recipe whose own code (imports) is missing here (unless --run-recorded-code).
Data files are read at the absolute paths the run recorded, so it works from any folder.

A recipe's own code runs from your local files (a warning says when they differ from the record);
--run-recorded-code runs the copies kept in the record instead: code written by whoever made the run."""


#: metrics a re-run must reproduce: the final values of training, validation and test
COMPARED_PREFIXES = (Metric.TRAIN_LOSS_EPOCH, "val/", "test/")
#: what a run ran on: a difference here is a hardware difference
HARDWARE_TAGS = (Tag.ACCELERATOR, Tag.DEVICES, Tag.DEVICE_COUNT, Tag.WORLD_SIZE, Tag.NUM_NODES, Tag.GPU_MODEL,
                 Tag.GPU_COUNT, Tag.GPU_DRIVER, Tag.CUDA_VERSION, Tag.CUDNN_VERSION)
#: relative tolerance when either run used a GPU
GPU_TOLERANCE = 1e-3
KINDS = ("code", "environment", "hardware", "data")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the MLflow run to re-run")
    parser.add_argument("--tolerance", type=float, default=None, metavar="REL",
                        help=f"relative tolerance of the comparison (default: 0 on CPU, {GPU_TOLERANCE:g} when "
                             "either run used a GPU)")
    parser.add_argument("--run-recorded-code", action="store_true",
                        help="run the Python files the record holds (the recipe's imports, as the run's author "
                             "wrote them) instead of your local copies")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="re-run even when the data's digest differs from the record's")


def recorded_recipe(client: Any, run_id: str, tmp: Path, *, recorded_code: bool = False,
                    warnings: list[str] | None = None) -> Any:
    """The run's resolved recipe, from its ``recipe.yaml`` artifact, its relative paths resolved as the run
    resolved them; an unknown run is bad input. The recipe's own code runs from the local files, or from the
    record's copies with ``recorded_code``; ``warnings`` collects what differs."""
    from mlflow.exceptions import MlflowException

    from retort import recipes
    from retort.recipes import RecipeError, imports
    from retort.recipes.yamlio import load_file

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bad input is one line
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise RecipeError(f"no run {run_id!r} in the store {client.tracking_uri}", field="RUN_ID") from None
    try:
        path = Path(client.download_artifacts(run_id, "recipe.yaml", str(tmp)))
    except (MlflowException, OSError):
        raise RecipeError(f"run {run_id} has no recipe.yaml artifact: it was not recorded by retort",
                          field="RUN_ID") from None
    raw = load_file(path)
    tags = run.data.tags
    base = tags.get(Tag.RECIPE_DIR) or None
    copies = _code(client, run_id, tmp, recorded_code, warnings if warnings is not None else []) \
        if isinstance(raw, dict) and raw.get("imports") else {}
    with imports.substitute(copies):  # the one loader, as `retort run` uses it
        recipe = recipes.load(recipes.Draft(raw, f"run:{run_id}", "recipe", base))
    for key in recipe.paths:
        recipe.paths[key] = tags.get(f"{Tag.PATH}.{key}", recipe.paths[key])
    return recipe


def _code(client: Any, run_id: str, tmp: Path, recorded_code: bool, warnings: list[str]) -> dict[str, Path]:
    """Which recorded copies to run in place of local files: all with ``recorded_code``; else none, and a
    missing local file is bad input (the record's code never runs unasked)."""
    import hashlib
    import json

    from mlflow.exceptions import MlflowException

    from retort.recipes import RecipeError

    try:
        manifest = json.loads(Path(client.download_artifacts(run_id, "code/imports.json", str(tmp))).read_text())
    except (MlflowException, OSError):
        warnings.append("the record holds no copy of the recipe's imports; running the local ones")
        return {}
    copies = {}
    for i, entry in enumerate(manifest):
        if entry["kind"] != "file":
            continue
        local = Path(entry["path"])
        if recorded_code:
            copies[entry["path"]] = Path(client.download_artifacts(run_id, entry["artifact"], str(tmp)))
            warnings.append(f"running the recorded {entry['given']} (sha256 {entry['sha256'][:12]}) from run "
                            f"{run_id}")
        elif not local.is_file():
            raise RecipeError(f"{local} is missing here; the record holds the copy the run ran (sha256 "
                              f"{entry['sha256'][:12]}): pass --run-recorded-code to run the recorded code",
                              field=f"imports.{i}")
        else:
            now = hashlib.sha256(local.read_bytes()).hexdigest()
            if now != entry["sha256"]:
                warnings.append(f"{local} differs from the record (sha256 {now[:12]} here, {entry['sha256'][:12]} "
                                "recorded); running the local file (--run-recorded-code runs the recorded one)")
    return copies


def data_check(run: Any, allow_change: bool, warnings: list[str]) -> Any:
    """A check for :func:`recipes.runner.run`: the data's digest against the record's, before recording."""
    recorded = [d.dataset for d in (run.inputs.dataset_inputs if run.inputs else [])]

    def check(built: Any) -> None:
        from retort.recipes import RecipeError

        if not recorded or recorded[0].digest == built.splits.digest:
            return
        message = (f"the data changed since the run: digest {built.splits.digest} here, {recorded[0].digest} "
                   f"recorded ({recorded[0].source})")
        if not allow_change:
            raise RecipeError(f"{message}; pass --allow-data-change to re-run on the data as it is now",
                              field="data")
        warnings.append(message)

    return check


def drift(client: Any, run: Any, tmp: Path) -> list[str]:
    """Warnings when this code or environment differs from the record's."""
    return [message for _, message in code_and_environment(client, run, tmp)]


def code_and_environment(client: Any, run: Any, tmp: Path) -> list[tuple[str, str]]:
    """(kind, warning) for each way this code or environment differs from the record's."""
    from mlflow.exceptions import MlflowException

    from retort.tracking.context import code_states, environment, version

    tags = run.data.tags
    out = []
    if tags.get(Tag.VERSION) and tags[Tag.VERSION] != version("retort"):
        out.append(("code", f"retort {version('retort')} here, {tags[Tag.VERSION]} in the record"))
    for prefix, state in code_states(None).items():
        recorded = tags.get(f"{prefix}.commit")
        if recorded and recorded != state.commit:
            out.append(("code", f"{prefix} commit {state.commit[:12]} here, {recorded[:12]} in the record"))
        if state.dirty:
            out.append(("code", f"{prefix} working tree at {state.root} has uncommitted changes"))
    try:
        recorded_env = Path(client.download_artifacts(run.info.run_id, "requirements.txt", str(tmp))).read_text()
    except (MlflowException, OSError):
        return [*out, ("environment", "the record has no environment (requirements.txt) to compare with")]
    then = _packages(recorded_env)
    now = _packages(environment())
    changed = sorted(n for n in then.keys() | now.keys() if then.get(n) != now.get(n))
    if changed:
        shown = ", ".join(f"{n} {then.get(n, 'absent')} -> {now.get(n, 'absent')}" for n in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        out.append(("environment", f"environment differs: {shown}{more}"))
    return out


def hardware_and_data(recorded: Any, new: Any) -> list[tuple[str, str]]:
    """(kind, warning) for each way the re-run's devices or data differ from the record's."""
    out = []
    for tag in HARDWARE_TAGS:
        then, now = recorded.data.tags.get(tag), new.data.tags.get(tag)
        if then != now and (then is not None or now is not None):
            out.append(("hardware", f"{tag} {now or 'absent'} here, {then or 'absent'} in the record"))

    def digests(run: Any) -> list[str]:
        return sorted(d.dataset.digest for d in run.inputs.dataset_inputs) if run.inputs else []

    if digests(recorded) != digests(new):
        out.append(("data", f"data digest {', '.join(digests(new)) or 'none'} here, "
                            f"{', '.join(digests(recorded)) or 'none'} in the record"))
    return out


def _packages(text: str) -> dict[str, str]:
    pairs = (line.split("==", 1) for line in text.splitlines() if "==" in line and not line.startswith("#"))
    return {name.lower(): ver for name, ver in pairs}


def final_metrics(run: Any) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items() if k.startswith(COMPARED_PREFIXES)}


def compare(recorded: dict[str, float], now: dict[str, float], tolerance: float = 0.0) -> list[str]:
    """One line per metric that differs by more than ``tolerance`` (relative; 0: exactly, as a deterministic
    CPU run reproduces bit for bit)."""
    lines = []
    for key in sorted(recorded.keys() | now.keys()):
        a, b = recorded.get(key), now.get(key)
        same = a is not None and b is not None and (
            a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=tolerance, abs_tol=0.0))
        if not same:
            lines.append(f"  {key}: recorded {a!r}, now {b!r}")
    return lines


def main(args: argparse.Namespace) -> int:
    from retort.recipes import display

    if not args.quiet:  # before the imports: MLflow, PyTorch and Lightning take seconds
        display.status(f"retort rerun {args.run_id}: loading MLflow, PyTorch and Lightning")
    from retort import recipes
    from retort.tracking.store import open_store, resolve_uri

    uri = resolve_uri(args.tracking_uri)
    client = open_store(uri)  # a folder without a store gets no empty mlflow.db
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="retort-rerun-") as tmp:
        recipe = recorded_recipe(client, args.run_id, Path(tmp), recorded_code=args.run_recorded_code,
                                 warnings=warnings)
        run = client.get_run(args.run_id)
        found = code_and_environment(client, run, Path(tmp))
    for warning in warnings + [message for _, message in found]:
        print(f"warning: {warning}", file=sys.stderr)
    from retort.plugins.errors import RunFailed

    data_warnings: list[str] = []
    check = data_check(run, args.allow_data_change, data_warnings)

    def checked(built: Any) -> None:
        check(built)
        for warning in data_warnings:
            print(f"warning: {warning}", file=sys.stderr)

    try:
        result = recipes.run(recipe, tracking_uri=uri, quiet=args.quiet, tags={Tag.RERUN_OF: args.run_id},
                             check=checked)
    except RunFailed as exc:
        print(f"error: the re-run failed: {exc}", file=sys.stderr)
        return 1
    new = client.get_run(result.run_id)
    later = hardware_and_data(run, new)
    for _, warning in later:
        print(f"warning: {warning}", file=sys.stderr)
    kinds = {kind for kind, _ in found + later}
    gpu = "cuda" in (run.data.tags.get(Tag.ACCELERATOR), new.data.tags.get(Tag.ACCELERATOR))
    tolerance = args.tolerance if args.tolerance is not None else (GPU_TOLERANCE if gpu else 0.0)
    differing = compare(final_metrics(run), final_metrics(new), tolerance)
    print("differs from the record: " + (", ".join(k for k in KINDS if k in kinds) or "nothing"))
    print(f"run_id: {result.run_id}")
    within = f" (within a relative {tolerance:g}{': a GPU run' if gpu else ''})" if tolerance else ""
    if differing:
        print(f"reproduced: no{within}")
        print("\n".join(differing))
        return 1
    print(f"reproduced: yes{within}")
    return 0
