"""A recipe's own code (``imports``), paths relative to the recipe file, and reruns from the record alone."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from retort import recipes
from retort.recipes.cli import main
from tests.conftest import all_runs, retort

MODELS = '''from torch import nn

from retort import plugins


@plugins.register("model", "{name}")
def tiny(info, *, width: int = 8):
    "A one-hidden-layer net."
    return nn.Sequential(nn.Linear(info.n_features, width), nn.Tanh(), nn.Linear(width, info.n_outputs))
'''


def write_csv(path: Path, rows: int = 120) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 3)).round(4)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    lines = ["a,b,c,label"] + [f"{a},{b},{c},{t}" for (a, b, c), t in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")


def project(folder: Path, model: str, imports: str = "[mymodels.py]") -> Path:
    """A research folder: a model file, a CSV and a recipe naming both by relative path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mymodels.py").write_text(MODELS.format(name=model))
    write_csv(folder / "d.csv")
    recipe = folder / "my.yaml"
    recipe.write_text(f"imports: {imports}\ndata: {{name: csv, path: d.csv, target: label}}\n"
                      f"model: {{name: {model}, width: 8}}\nmetrics: [accuracy]\ntrainer: {{max_epochs: 2}}\n")
    return recipe


def error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


# --- in-process: loading and bad input ----------------------------------------------------------

def test_paths_resolve_against_the_recipe_folder_and_are_kept_as_given(workdir: Path):
    recipe_file = project(workdir / "work", "own_paths")
    (workdir / "elsewhere").mkdir()
    import os

    os.chdir(workdir / "elsewhere")
    r = recipes.load("../work/my.yaml")
    assert r.imports == ["mymodels.py"] and r.data["path"] == "d.csv"
    assert r.base == str(recipe_file.parent.resolve())
    assert r.paths == {"data.path": str((workdir / "work" / "d.csv").resolve())}
    assert [(c.given, c.kind, c.registered) for c in r.code] == [("mymodels.py", "file", [("model", "own_paths")])]
    assert r.code[0].sha256 == hashlib.sha256((workdir / "work" / "mymodels.py").read_bytes()).hexdigest()
    assert r.to_dict()["imports"] == ["mymodels.py"] and r.flat()["imports"] == ["mymodels.py"]
    # a path typed on the command line is the shell's, not the recipe's
    write_csv(workdir / "elsewhere" / "mine.csv")
    r = recipes.load("../work/my.yaml", ["data.path=mine.csv"])
    assert r.paths == {"data.path": str((workdir / "elsewhere" / "mine.csv").resolve())}


def test_shipped_recipes_stay_import_free(capsys):
    assert main(["show", "digits-mlp"]) == 0
    assert "imports" not in capsys.readouterr().out
    assert "imports" not in recipes.load("digits-mlp").flat()


@pytest.mark.parametrize("text, expected", [
    ("def broken(:\n    pass\n", "bad.py, line 1: SyntaxError: "),
    ("import math\n\nmath.nope()\n", "bad.py, line 3: AttributeError: module 'math' has no attribute 'nope'"),
    ("import retort_no_such_helper\n", "bad.py, line 1: ModuleNotFoundError: No module named "
                                       "'retort_no_such_helper'"),
])
def test_a_broken_imported_file_names_file_and_line(workdir: Path, capsys, text: str, expected: str):
    (workdir / "bad.py").write_text(text)
    (workdir / "r.yaml").write_text("imports: [bad.py]\n")
    err = error(capsys, "show", "r.yaml")
    assert err.startswith(f"error: r.yaml: imports.0: {workdir}/{expected}")


def test_bad_imports_are_one_line_naming_the_entry(workdir: Path, capsys):
    (workdir / "r.yaml").write_text("imports: [missing.py]\n")
    assert error(capsys, "show", "r.yaml") == (
        f"error: r.yaml: imports.0: {workdir / 'missing.py'} does not exist (paths are relative to the recipe file's "
        f"folder, {workdir})")
    (workdir / "r.yaml").write_text("imports: [retort_no_such_lab.data]\n")
    assert error(capsys, "show", "r.yaml") == (
        "error: r.yaml: imports.0: no module named 'retort_no_such_lab' on the Python path (a local file needs its .py "
        "suffix)")
    (workdir / "r.yaml").write_text("imports: 3\n")
    assert error(capsys, "show", "r.yaml") == (
        "error: r.yaml: imports: must be a list of local .py files and module names, got 3")


def test_an_import_that_registers_nothing_the_recipe_uses_is_refused(workdir: Path, capsys):
    (workdir / "helpers.py").write_text("SCALE = 2\n")
    (workdir / "mymodels.py").write_text(MODELS.format(name="own_unused"))
    (workdir / "r.yaml").write_text("imports: [helpers.py]\n")
    assert error(capsys, "show", "r.yaml") == (
        "error: r.yaml: imports.0: helpers.py registers no plugin this recipe uses (it registers nothing); name its "
        "plugins in the recipe, or drop it from imports")
    (workdir / "r.yaml").write_text("imports: [mymodels.py]\nmodel: mlp\n")
    assert error(capsys, "show", "r.yaml") == (
        "error: r.yaml: imports.0: mymodels.py registers no plugin this recipe uses (it registers model 'own_unused'); "
        "name its plugins in the recipe, or drop it from imports")


def test_plugins_kind_name_prints_fields_with_types_defaults_and_docs(capsys):
    assert main(["plugins", "data", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "data csv  [retort.plugins.data.files]"
    assert out[2] == "fields:"
    assert out[3].split(None, 3) == ["path", "str", "(required)", "the CSV file, relative to the recipe file's folder"]
    assert out[5].split(None, 5)[:5] == ["features", "list[str]", "|", "None", "null"]
    assert "task       auto | multiclass | binary | regression  auto" in out[6]
    assert "fields every data shares:" in out
    assert any(line.split()[:3] == ["batch_size", "int", "64"] for line in out)
    assert main(["plugins", "optimizer", "adam"]) == 0
    assert "  lr (alias eta)               float                0.001" in capsys.readouterr().out
    assert error(capsys, "plugins", "model", "mlpp").startswith(  # (the other tests' own models may follow)
        "error: NAME: unknown model 'mlpp' (did you mean 'mlp'?); valid choices: cnn, gpt, linear, mlp")


# --- the console script: run from elsewhere, rerun from the record alone ----------------------------

@pytest.mark.slow
def test_own_code_runs_from_another_folder_and_reruns_from_the_record_alone(tmp_path: Path):
    recipe_file = project(tmp_path / "work", "own_e2e")
    (tmp_path / "other").mkdir()
    out = retort("run", "../work/my.yaml", "-q", cwd=tmp_path / "other")
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1].split()[1]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}")
    run = client.get_run(run_id)
    source = (tmp_path / "work" / "mymodels.py").read_text()
    assert run.data.params["imports"] == '["mymodels.py"]' and run.data.params["data.path"] == "d.csv"
    assert run.data.tags["retort.path.data.path"] == str((tmp_path / "work" / "d.csv").resolve())
    assert run.data.tags["retort.recipe_dir"] == str(recipe_file.parent.resolve())
    down = tmp_path / "down"
    manifest = json.loads(Path(client.download_artifacts(run_id, "code/imports.json", str(down))).read_text())
    assert manifest == [{"given": "mymodels.py", "kind": "file", "path": str(tmp_path / "work" / "mymodels.py"),
                         "sha256": hashlib.sha256(source.encode()).hexdigest(), "registered": [["model", "own_e2e"]],
                         "artifact": "code/mymodels.py"}]
    assert Path(client.download_artifacts(run_id, "code/mymodels.py", str(down))).read_text() == source

    # the local file gone, another folder: the record's code runs only when asked for
    shutil.move(tmp_path / "work" / "mymodels.py", tmp_path / "mymodels.py.away")
    (tmp_path / "third").mkdir()
    uri = ["--tracking-uri", f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"]
    refused = retort("rerun", run_id, "-q", *uri, cwd=tmp_path / "third")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    missing = tmp_path / "work" / "mymodels.py"
    assert refused.stderr.startswith(f"error: imports.0: {missing} is missing here; ")
    assert "--run-recorded-code" in refused.stderr
    assert len(all_runs(client)) == 1
    again = retort("rerun", run_id, "-q", "--run-recorded-code", *uri, cwd=tmp_path / "third")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == "reproduced: yes"
    assert f"warning: running the recorded mymodels.py (sha256 {manifest[0]['sha256'][:12]}) from run {run_id}" \
        in again.stderr

    # the data changed: refused (nothing recorded) unless told to go on
    with open(tmp_path / "work" / "d.csv", "a") as fh:
        fh.write("1.0,2.0,3.0,1\n")
    changed = retort("rerun", run_id, "-q", "--run-recorded-code", *uri, cwd=tmp_path / "third")
    assert changed.returncode == 2, changed.stderr
    last = changed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data: the data changed since the run: digest ")
    assert last.endswith("; pass --allow-data-change to re-run on the data as it is now")
    assert len(all_runs(client)) == 2
