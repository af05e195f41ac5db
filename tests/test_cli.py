"""The `retort` command line: real subprocesses for exit codes and the default store, in-process for the rest."""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from retort import recipes
from retort.recipes.cli import main
from tests.conftest import all_runs, retort

FAST = ["-s", "trainer.max_epochs=1", "-s", "model.hidden=[16]"]


def store(folder: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


# --- subprocesses: the real console script --------------------------------------------------------

def test_run_records_in_the_working_folder_by_default(tmp_path: Path):
    out = retort("run", "digits-mlp", *FAST, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout + out.stderr and "\r" not in out.stdout + out.stderr  # piped: plain lines
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("epoch 1/1  train loss ") and "  val loss " in lines[0] and "val accuracy" in lines[0]
    assert lines[1].startswith("train/loss_epoch: ")
    assert lines[2] == "tested: epoch 1 of 1 (lowest val/loss)"  # which weights the test values are of
    assert [line.split(":")[0] for line in lines[3:]] == ["test/loss", "test/accuracy", "run_id"]
    run_id = lines[-1].split()[1]
    assert out.stderr == f"recording run {run_id} in experiment 'digits' (sqlite:///mlflow.db)\n"
    run = store(tmp_path).get_run(run_id)
    assert run.data.tags["retort.tested"] == "epoch 1 of 1 (lowest val/loss)"
    assert run.info.status == "FINISHED"
    assert run.data.tags["retort.command"].startswith("retort run digits-mlp -s trainer.max_epochs=1")
    assert store(tmp_path).get_experiment(run.info.experiment_id).name == "digits"


def test_bad_input_exits_2_with_one_line_and_records_nothing(tmp_path: Path):
    out = retort("run", "digits-mlp", "-s", "optimizer.name=adamm", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "optimizer.name" in out.stderr and "did you mean 'adam'" in out.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_a_failing_run_exits_1_and_is_recorded_failed(tmp_path: Path):
    out = retort("run", "digits-mlp", *FAST, "-s", "optimizer={name: descent, lr: 1.0e12}", "-q", cwd=tmp_path)
    assert out.returncode == 1
    assert "run failed" in out.stderr and "NonFiniteLoss" in out.stderr
    runs = all_runs(store(tmp_path))
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_run_as_killed(tmp_path: Path, sig: signal.Signals, code: int):
    exe = Path(sys.executable).with_name("retort")
    proc = subprocess.Popen([str(exe), "run", "digits-mlp", "-s", "trainer.max_epochs=200"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # an epoch has ended: the run exists and is training
    assert first.startswith("epoch 1/200")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    runs = all_runs(store(tmp_path))
    assert [r.info.status for r in runs] == ["KILLED"]
    assert runs[0].data.tags["retort.failure"] == f"interrupted by {sig.name}"
    assert len(store(tmp_path).get_metric_history(runs[0].info.run_id, "train/loss_epoch")) >= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_users_own_mlflow_ui_in_the_folder_shows_the_runs(tmp_path: Path):
    out = retort("run", "digits-mlp", *FAST, "-q", cwd=tmp_path)
    run_id = out.stdout.strip().splitlines()[-1].split()[1]
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow), "ui", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = json.dumps({"experiment_ids": ["1"]}).encode()
        deadline = time.monotonic() + 90
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", data=body,
                                             headers={"Content-Type": "application/json"})
                runs = json.load(urllib.request.urlopen(req, timeout=5))["runs"]
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        assert [r["info"]["run_id"] for r in runs] == [run_id]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_third_party_plugins_come_from_the_entry_point_group(tmp_path: Path):
    (tmp_path / "retort_demo_plugin.py").write_text(
        'from retort import plugins\n\n'
        '@plugins.register("loss", "scaled_l1", task=("regression",), input="values")\n'
        'def scaled_l1(*, scale: float = 2.0):\n'
        '    "Scaled mean absolute error."\n'
        '    return lambda yhat, y: scale * (yhat - y.reshape(yhat.shape)).abs().mean()\n')
    info = tmp_path / "retort_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: retort-demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[retort.plugins]\ndemo = retort_demo_plugin\n")
    env = {"PYTHONPATH": str(tmp_path)}
    out = retort("plugins", "loss", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if "scaled_l1" in x)
    assert "Scaled mean absolute error." in line and "[entry point demo (retort-demo-plugin 0.1)]" in line
    shown = retort("show", "diabetes-mse", "-s", "loss={name: scaled_l1, scale: 3}", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "loss:\n  name: scaled_l1\n  scale: 3.0\n" in shown.stdout


# --- in-process ------------------------------------------------------------------------------

def test_help_has_examples(capsys):
    for args in (["--help"], ["run", "--help"], ["show", "--help"], ["plugins", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_recipes_lists_each_shipped_recipe(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name, description in recipes.shipped():
        assert f"{name}  " in out and description in out


def test_plugins_lists_every_kind_with_docs_and_origins(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for kind in ("loss", "optimizer", "scheduler", "callback", "model", "data", "metric"):
        assert f"\n{kind} (" in f"\n{out}"
    assert main(["plugins", "optimizer"]) == 0
    out = capsys.readouterr().out
    assert "  rmsprop " in out and "[retort.plugins.optimizers]" in out
    assert "torch.optim.RMSprop" in out and "[torch.optim]" in out


def test_unknown_plugin_kind_is_bad_input(capsys):
    assert main(["plugins", "losses"]) == 2
    assert "did you mean 'loss'" in capsys.readouterr().err


def test_show_output_runs_the_same_run(tmp_path: Path, capsys, workdir: Path):
    assert main(["show", "wine-momentum", "-s", "trainer.max_epochs=2", "-s", "seed=3"]) == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(capsys.readouterr().out)
    a = recipes.run(recipes.load("wine-momentum", ["trainer.max_epochs=2", "seed=3"]), quiet=True)
    b = recipes.run(recipes.load(shown), quiet=True)
    assert a.metrics == b.metrics
    client = store(workdir)
    assert client.get_run(a.run_id).data.params == client.get_run(b.run_id).data.params


@pytest.mark.parametrize("args, words", [
    (["run", "nope.yaml"], ["no recipe file or shipped recipe 'nope.yaml'"]),
    (["run", "digits-mlp", "-s", "trainer.max_epochs=zero"], ["trainer.max_epochs", "valid integer"]),
    (["show", "digits-mlp", "-s", "loss=hinge2"], ["loss.name", "did you mean 'hinge'"]),
    (["run", "digits-mlp", "-s", "data={name: csv, path: nowhere.csv, target: y}"], ["data.path", "nowhere.csv"]),
    (["run", "digits-mlp", "-s", "loss=mse"], ["loss.name", "regression"]),
])
def test_bad_input_in_process(args: list[str], words: list[str], capsys, workdir: Path):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    for w in words:
        assert w in err
    assert all_runs(store(workdir)) == []


@pytest.mark.parametrize("args", [["rerun", "0123abc"], ["run", "--resume", "0123abc"],
                                  ["run", "digits-mlp", "--resume", "0123abc"]])
def test_a_folder_without_a_store_gets_none_from_rerun_or_resume(args: list[str], tmp_path: Path, capsys,
                                                                  monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(args) == 2
    assert capsys.readouterr().err == ("error: --tracking-uri: no MLflow store at mlflow.db (sqlite:///mlflow.db); "
                                       "run something first, or name the store with --tracking-uri or "
                                       "MLFLOW_TRACKING_URI\n")
    assert list(tmp_path.iterdir()) == []


def test_csv_data_end_to_end(tmp_path: Path, capsys, workdir: Path):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    label = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "yes", "no")
    rows = ["a,b,c,label"] + [f"{p:.5f},{q:.5f},{r:.5f},{lab}" for (p, q, r), lab in zip(x, label)]
    (tmp_path / "points.csv").write_text("\n".join(rows) + "\n")
    recipe = tmp_path / "points.yaml"
    recipe.write_text(f"data: {{name: csv, path: {tmp_path / 'points.csv'}, target: label, batch_size: 16}}\n"
                      "model: {name: linear}\nloss: logitbinarycrossentropy\noptimizer: {name: adam, lr: 0.05}\n"
                      "metrics: [accuracy]\ntrainer: {max_epochs: 10, accelerator: cpu}\n")
    assert main(["run", str(recipe), "-q"]) == 0
    out = capsys.readouterr().out
    accuracy = float(next(x for x in out.splitlines() if x.startswith("test/accuracy")).split()[1])
    assert accuracy >= 0.9


@pytest.mark.slow
def test_ddp_over_two_cpu_processes_makes_one_run(tmp_path: Path):
    out = retort("run", "digits-mlp", "-s", "trainer.max_epochs=2", "-s", "trainer.devices=2",
                 "-s", "trainer.strategy=ddp", "-s", "trainer.accelerator=cpu", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("run_id: ") == 1
    runs = all_runs(store(tmp_path))
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert out.stdout.strip().endswith(f"run_id: {run_id}")
    client = store(tmp_path)
    per_rank = math.ceil(1077 / 2 / 64)  # each rank trains on half the rows, batches of 64
    assert len(client.get_metric_history(run_id, "train/loss")) == 2 * per_rank
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [1, 2]
    # throughput over both ranks (each trains its half at once), and where each rank ran
    assert [m.step for m in client.get_metric_history(run_id, "perf/samples_per_second")] == [1, 2]
    tags = runs[0].data.tags
    assert tags["retort.rank0.device"].startswith("node 0 (") and tags["retort.rank1.device"].endswith(" cpu")


def test_main_called_from_python_gives_back_the_signal_handlers(workdir, capsys):
    """A script (or a test runner) calling the CLI in-process keeps its own SIGINT and SIGTERM handlers."""
    mine = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    assert main(["show", "iris-rmsprop"]) == 0
    assert main(["show", "iris-rmsprop", "-s", "optimizer.lr=true"]) == 2
    assert {sig: signal.getsignal(sig) for sig in mine} == mine
