"""``retort predict RUN_ID INPUT``: a run's model (its MLflow pyfunc, artifact ``model/``) on new inputs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "predict with a run's trained model: a CSV or .npz file in, a CSV of predictions out"
EXAMPLES = """examples:
  retort predict 3f2a9c... new_rows.csv                 # CSV of predictions on stdout
  retort predict 3f2a9c... images.npz -o predictions.csv

A table model reads a CSV whose header names its features (other columns are ignored) or an .npz whose
array x holds the rows. Classes give a prediction column (the class name) and probability_<class>
columns; regression gives prediction in the data's units. The same model loads in Python with
mlflow.pyfunc.load_model("runs:/RUN_ID/model")."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the MLflow run whose model predicts")
    parser.add_argument("input", metavar="INPUT", help="the inputs: a file or folder the model's data can read")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the predictions here (default: stdout)")


def load(client: object, run_id: str) -> object:
    """The run's pyfunc model; an unknown run or a run without a model is bad input."""
    import os

    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from retort.plugins.errors import RecipeError

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bad input is one line
    try:
        client.get_run(run_id)
    except MlflowException:
        raise RecipeError(f"no run {run_id!r} in the store {client.tracking_uri}", field="RUN_ID") from None
    if not any(f.path == "model" for f in client.list_artifacts(run_id)):
        raise RecipeError(f"run {run_id} has no model: it ran with tracking.log_model: false, failed, or was "
                          "recorded by a retort without models", field="RUN_ID")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="retort-predict-") as tmp:  # this store's, not MLflow's global one
        return mlflow.pyfunc.load_model(client.download_artifacts(run_id, "model", tmp))


def main(args: argparse.Namespace) -> int:
    from retort.plugins import PluginError
    from retort.plugins.errors import RecipeError
    from retort.tracking.store import open_store, resolve_uri

    if not Path(args.input).exists():
        raise RecipeError(f"{Path(args.input).resolve()} does not exist", field="INPUT")
    model = load(open_store(resolve_uri(args.tracking_uri)), args.run_id)
    try:
        inputs = model.get_raw_model().read(str(Path(args.input).resolve()))
    except PluginError as exc:
        raise RecipeError(str(exc), field="INPUT") from None
    predictions = model.predict(inputs)
    if args.output:
        predictions.to_csv(args.output, index=False)
    else:
        predictions.to_csv(sys.stdout, index=False)
    return 0
