"""``retort predict RUN_ID INPUT...``: a run's model (its MLflow pyfunc, artifact ``model/``) on new inputs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "predict with a run's trained model: tables, image files or folders, text files in; a CSV out"
EXAMPLES = """examples:
  retort predict 3f2a9c... new_rows.csv                 # CSV of predictions on stdout
  retort predict 3f2a9c... rows.npz -o predictions.csv
  retort predict 3f2a9c... photos/ extra.jpg            # an image model: every image under photos/, and one more
  retort predict 3f2a9c... chapter1.txt chapter2.txt    # a text model: one row of scores per file

What each model reads and writes:
  table  a CSV whose header names its features (other columns are ignored) or an .npz whose array x holds
         the rows -> prediction (the class name) and probability_<class>, or prediction in the data's units
  image  image files, or folders of them (searched recursively) -> path, prediction, probability_<class>
  text   text files, or folders of .txt/.md files -> path, bytes, loss (nats per byte), bits_per_byte,
         perplexity, accuracy (of the next byte), each file scored in blocks as the run was evaluated
The same model loads in Python with mlflow.pyfunc.load_model("runs:/RUN_ID/model")."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the MLflow run whose model predicts")
    parser.add_argument("input", metavar="INPUT", nargs="+",
                        help="the inputs: files or folders the model's data can read")
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
    import pandas as pd

    from retort.plugins import PluginError
    from retort.plugins.errors import RecipeError
    from retort.tracking.store import open_store, resolve_uri

    paths = [Path(p).resolve() for p in args.input]
    for path in paths:
        if not path.exists():
            raise RecipeError(f"{path} does not exist", field="INPUT")
    model = load(open_store(resolve_uri(args.tracking_uri)), args.run_id)
    raw = model.get_raw_model()
    try:  # an unreadable file found only while predicting (a header that parsed, a body that did not) too
        inputs = [raw.read(str(path)) for path in paths]
        predictions = model.predict(inputs[0] if len(inputs) == 1 else pd.concat(inputs, ignore_index=True))
    except PluginError as exc:
        raise RecipeError(str(exc), field="INPUT") from None
    predictions.to_csv(args.output or sys.stdout, index=False)
    return 0
