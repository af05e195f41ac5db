"""The trained model back out: an MLflow pyfunc per run, loaded in a fresh process, and `retort predict`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retort import recipes
from retort.recipes.cli import main
from tests.conftest import all_runs, retort

FAST = ["trainer.max_epochs=3", "model.hidden=[16]"]

# Loads the run's model in a fresh Python (nothing of retort imported first), predicts the test split's raw
# rows (the run's own split, unscaled: the model scales them itself) and prints the accuracy it scores.
FRESH = """
import json, sys
import mlflow, numpy as np
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(f"runs:/{sys.argv[2]}/model")
from retort import plugins
from retort.plugins.data import prepare
table = plugins.build("data", json.loads(sys.argv[3]))
split = prepare(table, val_fraction=0.2, test_fraction=0.2, seed=0, scale="none")
x, y = split.test
columns = model.metadata.get_input_schema().input_names()
import pandas as pd
out = model.predict(pd.DataFrame(x.numpy(), columns=columns))
names = np.asarray(split.info.class_names)
print(json.dumps({"accuracy": float(np.mean(out["prediction"].to_numpy() == names[y.numpy()])),
                  "columns": list(out.columns), "inputs": columns[:3], "rows": len(out)}))
"""


def fresh(uri: str, run_id: str, data: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", FRESH, uri, run_id, json.dumps(data)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("recipe, data", [
    ("digits-mlp", {"name": "digits"}),
    ("breast-cancer", {"name": "breast_cancer"}),
])
def test_the_model_loaded_in_a_fresh_process_scores_the_runs_test_accuracy(workdir: Path, client, recipe, data):
    result = recipes.run(recipes.load(recipe, FAST if recipe == "digits-mlp" else ["trainer.max_epochs=3"]),
                         quiet=True)
    run = client.get_run(result.run_id)
    files = {f.path for f in client.list_artifacts(result.run_id, "model")}
    assert files == {"model/MLmodel", "model/data", "model/input_example.json", "model/python_env.yaml",
                     "model/requirements.txt", "model/serving_input_example.json"}
    got = fresh(f"sqlite:///{workdir / 'mlflow.db'}", result.run_id, data)
    assert got["accuracy"] == pytest.approx(run.data.metrics["test/accuracy"], abs=1e-6)  # float32 metric
    if recipe == "digits-mlp":
        assert got["rows"] == 360 and got["inputs"] == ["pixel_0_0", "pixel_0_1", "pixel_0_2"]
        assert got["columns"] == ["prediction"] + [f"probability_{c}" for c in range(10)]
    else:
        assert got["rows"] == 114 and got["columns"] == ["prediction", "probability_malignant", "probability_benign"]


def _regression_table(path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 2)) * [1.0, 10.0] + [5.0, -3.0]
    y = 3 * x[:, 0] - 0.2 * x[:, 1] + 100
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.float32))


def test_predict_writes_predictions_in_the_datas_units(workdir: Path, client, capsys):
    from retort import plugins
    from retort.plugins.data import prepare

    _regression_table(workdir / "reg.npz")
    recipe = recipes.load("diabetes-mse", ["data={name: npz, path: reg.npz, target_scale: standard}",
                                           "trainer.max_epochs=30", "model.hidden=[8]", "metrics=[mse]"])
    result = recipes.run(recipe, quiet=True)
    assert main(["predict", result.run_id, "reg.npz", "-o", "out.csv"]) == 0
    assert capsys.readouterr().out == ""
    import pandas as pd

    out = pd.read_csv(workdir / "out.csv")
    assert list(out.columns) == ["prediction"] and len(out) == 200
    split = prepare(plugins.build("data", {"name": "npz", "path": "reg.npz"}), val_fraction=0.2, test_fraction=0.2,
                    seed=0, scale="none", target_scale="standard")
    full = np.load(workdir / "reg.npz")
    index = [int(np.flatnonzero((full["x"] == row).all(axis=1))[0]) for row in split.test[0].numpy()]
    mse = float(np.mean((out["prediction"].to_numpy()[index] - full["y"][index]) ** 2))
    # predictions come back in the data's units; the run's test/mse is in the scaled units it trained in
    std = float(split.target_scaler[1])
    assert mse / std**2 == pytest.approx(client.get_run(result.run_id).data.metrics["test/mse"], rel=1e-4)


def test_predict_reads_a_csv_by_its_header_and_writes_to_stdout(workdir: Path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3)).round(3)
    label = np.where(x[:, 0] > 0, "up", "down")
    (workdir / "d.csv").write_text("a,b,c,label\n" + "".join(f"{a},{b},{c},{t}\n" for (a, b, c), t in zip(x, label)))
    (workdir / "new.csv").write_text("c,a,b\n0.5,2.0,1.0\n0.5,-2.0,1.0\n")  # any column order, no target
    result = recipes.run(recipes.load("digits-mlp", ["data={name: csv, path: d.csv, target: label}",
                                                     "trainer.max_epochs=40", "model.hidden=[8]", "optimizer.lr=0.05"]),
                         quiet=True)
    capsys.readouterr()
    assert main(["predict", result.run_id, "new.csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "prediction,probability_down,probability_up"
    assert [line.split(",")[0] for line in lines[1:]] == ["up", "down"]


def refused(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """The one line a command refusing bad input printed (exit 2)."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_bad_predict_input_is_one_line(workdir: Path, client, capsys):
    result = recipes.run(recipes.load("iris-rmsprop", ["trainer.max_epochs=1", "tracking.log_model=false"]),
                         quiet=True)
    assert not any(f.path == "model" for f in client.list_artifacts(result.run_id))
    (workdir / "x.csv").write_text("a,b\n1,2\n")

    assert refused(capsys, "predict", result.run_id, "x.csv") == (
        f"error: RUN_ID: run {result.run_id} has no model: it ran with tracking.log_model: false, failed, or was "
        "recorded by a retort without models")
    assert refused(capsys, "predict", result.run_id, "nope.csv") == \
        f"error: INPUT: {workdir / 'nope.csv'} does not exist"
    assert refused(capsys, "predict", "0123abc", "x.csv").startswith("error: RUN_ID: no run '0123abc' in the store ")
    with_model = recipes.run(recipes.load("iris-rmsprop", ["trainer.max_epochs=1"]), quiet=True)
    assert refused(capsys, "predict", with_model.run_id, "x.csv") == (
        f"error: INPUT: {workdir / 'x.csv'} lacks the feature column(s) sepal length (cm), sepal width (cm), petal "
        "length (cm), petal width (cm); the model takes sepal length (cm), sepal width (cm), petal length (cm), "
        "petal width (cm)")
    assert len(all_runs(client)) == 2


@pytest.mark.slow
def test_an_own_code_model_loads_where_its_file_is_not(tmp_path: Path):
    """The model carries the recipe's own files: a fresh process elsewhere loads and predicts with it."""
    from tests.test_own_code import project

    project(tmp_path / "work", "own_model_fresh")
    out = retort("run", "work/my.yaml", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1].split()[1]
    (tmp_path / "work" / "mymodels.py").unlink()
    predicted = retort("predict", run_id, "work/d.csv", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    lines = predicted.stdout.strip().splitlines()
    assert lines[0] == "prediction,probability_0,probability_1" and len(lines) == 121


# --- images and text --------------------------------------------------------------------------------------

TEXT = b"the quick brown fox jumps over the lazy dog; " * 40


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory, _store_template: Path) -> dict:
    """One tiny image run (two classes of 8 generated images, 1 epoch) and one tiny text run (block 8, 1 epoch),
    in a store of their own, shared by the tests below."""
    import shutil

    from retort.plugins.data.shapes import draw
    from retort.recipes.schema import resolve

    root = tmp_path_factory.mktemp("media")
    shutil.copy(_store_template, root / "mlflow.db")
    rng = np.random.RandomState(0)
    for kind in ("circle", "square"):
        (root / "imgs" / kind).mkdir(parents=True)
        for i in range(8):
            draw(kind, 12, rng).save(root / "imgs" / kind / f"{i}.png")
    (root / "train.txt").write_bytes(TEXT)
    (root / "val.txt").write_bytes(TEXT[7:7 + 8 * 6 + 1])
    (root / "test.txt").write_bytes(TEXT[3:3 + 8 * 12 + 1])  # whole blocks: scored as the run's test split
    common = {"seed": 0, "loss": "logitcrossentropy", "trainer": {"max_epochs": 1, "accelerator": "cpu"}}
    image = resolve({**common, "name": "imgs", "metrics": ["accuracy"], "model": {"name": "resnet", "channels": [4]},
                     "data": {"name": "image_folder", "path": str(root / "imgs"), "size": 12, "batch_size": 4,
                              "val_fraction": 0.25, "test_fraction": 0.25}})
    text = resolve({**common, "name": "text", "metrics": ["perplexity", "accuracy"],
                    "model": {"name": "gpt", "layers": 1, "heads": 2, "width": 16}, "optimizer": {"name": "adam",
                                                                                              "lr": 0.01},
                    "data": {"name": "text", "path": str(root / "train.txt"), "val_path": str(root / "val.txt"),
                             "test_path": str(root / "test.txt"), "block_size": 8, "batch_size": 16}})
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETORT_SPOOL", str(root / "spool"))
        runs = {"image": recipes.run(image, tracking_uri=uri, quiet=True),
                "text": recipes.run(text, tracking_uri=uri, quiet=True)}
    return {"root": root, "uri": uri, **{k: r.run_id for k, r in runs.items()},
            **{f"{k}_metrics": r.metrics for k, r in runs.items()}}


def test_predict_scores_an_image_folder_and_a_text_file(media: dict, monkeypatch: pytest.MonkeyPatch, capsys):
    import io

    import pandas as pd

    root = media["root"]
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", media["uri"])
    assert main(["predict", media["image"], "imgs/circle/3.png", "imgs/square", "-o", "images.csv"]) == 0
    out = pd.read_csv(root / "images.csv")
    assert list(out.columns) == ["path", "prediction", "probability_circle", "probability_square"]
    assert out["path"].tolist() == [str(root / "imgs/circle/3.png")] + [str(root / f"imgs/square/{i}.png")
                                                                         for i in range(8)]
    p = out[["probability_circle", "probability_square"]].to_numpy()
    assert np.allclose(p.sum(axis=1), 1) and out["prediction"].tolist() == [["circle", "square"][k]
                                                                            for k in p.argmax(axis=1)]
    capsys.readouterr()
    assert main(["predict", media["text"], "test.txt", "train.txt"]) == 0
    scores = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(scores.columns) == ["path", "bytes", "loss", "bits_per_byte", "perplexity", "accuracy"]
    assert scores["bytes"].tolist() == [96, len(TEXT) - 1]  # train.txt ends in a part block: each byte once
    row = scores.iloc[0]
    recorded = media["text_metrics"]
    assert row["path"] == str(root / "test.txt") and row["bytes"] == 96  # every byte after the first
    assert row["loss"] == pytest.approx(recorded["test/loss"], rel=1e-5)  # the run's test split is this file
    assert row["accuracy"] == pytest.approx(recorded["test/accuracy"], abs=1e-6)
    assert row["bits_per_byte"] == pytest.approx(row["loss"] / math.log(2))
    assert row["perplexity"] == pytest.approx(recorded["test/perplexity"], rel=1e-5)


def test_bad_image_and_text_inputs_are_one_line(media: dict, monkeypatch: pytest.MonkeyPatch, capsys):
    root = media["root"]
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", media["uri"])
    (root / "new" / "b").mkdir(parents=True)
    (root / "new" / "a.png").write_bytes((root / "imgs/circle/0.png").read_bytes())
    (root / "new" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "short.txt").write_text("short")

    assert refused(capsys, "predict", media["image"], "new") == (
        f"error: INPUT: {root / 'new/b/broken.png'} is not a readable image (not an image format Pillow reads)")
    (root / "empty").mkdir()
    assert refused(capsys, "predict", media["image"], "empty") == (
        f"error: INPUT: {root / 'empty'} holds no images (.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif, .tiff, .ppm, "
        ".pgm)")
    assert refused(capsys, "predict", media["text"], "test.txt", "short.txt") == (
        f"error: INPUT: {root / 'short.txt'} has 5 bytes; the model predicts from blocks of block_size 8 and needs "
        "9 (a byte more for the last target)")


# A fresh Python loads the image and the text model and scores the runs' test splits from raw inputs: the image
# test split's files by path and as bytes, the text test file's text.
FRESH_MEDIA = """
import json, math, sys
import mlflow, numpy as np, pandas as pd
uri, image_id, text_id, root = sys.argv[1:5]
mlflow.set_tracking_uri(uri)
from retort import plugins
from retort.plugins.data import split_datasets
data = plugins.build("data", {"name": "image_folder", "path": f"{root}/imgs", "size": 12})
test = split_datasets(data, val_fraction=0.25, test_fraction=0.25, seed=0).test
files = [test.dataset.files[i] for i in test.indices]
labels = np.asarray([test.dataset.targets[i] for i in test.indices])
model = mlflow.pyfunc.load_model(f"runs:/{image_id}/model")
by_path = model.predict(pd.DataFrame({"path": files}))
by_bytes = model.predict(pd.DataFrame({"image": [open(f, "rb").read() for f in files]}))
p = by_path[["probability_circle", "probability_square"]].to_numpy()
text = mlflow.pyfunc.load_model(f"runs:/{text_id}/model")
scores = text.predict(pd.DataFrame({"text": [open(f"{root}/test.txt").read()]}))
print(json.dumps({"accuracy": float(np.mean(p.argmax(axis=1) == labels)),
                  "loss": float(np.mean(-np.log(p[np.arange(len(p)), labels]))), "rows": len(p),
                  "same": bool(np.allclose(p, by_bytes[["probability_circle", "probability_square"]].to_numpy())),
                  "text": scores.iloc[0].to_dict()}))
"""


@pytest.mark.slow
def test_image_and_text_models_loaded_in_a_fresh_process_score_the_runs_test_splits(media: dict):
    out = subprocess.run([sys.executable, "-c", FRESH_MEDIA, media["uri"], media["image"], media["text"],
                          str(media["root"])], capture_output=True, text=True, timeout=300,
                         cwd=media["root"])
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    image, text = media["image_metrics"], media["text_metrics"]
    assert got["rows"] == 4 and got["same"]
    assert got["accuracy"] == pytest.approx(image["test/accuracy"], abs=1e-6)
    assert got["loss"] == pytest.approx(image["test/loss"], rel=1e-5)  # the probabilities, not only the argmax
    assert got["text"]["bytes"] == 96 and got["text"]["loss"] == pytest.approx(text["test/loss"], rel=1e-5)
    assert got["text"]["accuracy"] == pytest.approx(text["test/accuracy"], abs=1e-6)


def test_a_text_is_scored_in_the_runs_blocks_then_its_tail_once():
    from retort.plugins.data.text import TextPreprocess

    pre = TextPreprocess(8, "unused")
    starts, skip = pre.starts(20)  # blocks at 0 and 8 predict bytes 1-16; the window at 11 adds 17-19
    assert starts.tolist() == [0, 8, 11] and skip == 5
    assert pre.starts(17)[0].tolist() == [0, 8] and pre.starts(17)[1] == 0
    x, y = pre.cut(np.arange(20, dtype=np.uint8), starts)
    assert x[2].tolist() == list(range(11, 19)) and y[2].tolist() == list(range(12, 20))
