"""What a person at a terminal sees: the real console script in a real pseudo-terminal (its output captured
and read as text), a real Ctrl-C typed into it, and the plain lines when its output is piped."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shlex
import struct
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from retort.recipes.display import EpochBar, SweepBoard
from tests.conftest import all_runs, retort

ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


def spawn(args: list[str], cwd: Path, react: Callable[[str], bytes | None] | None = None,
          timeout: float = 300) -> tuple[int, str]:
    """Run `retort ARGS` on a 120-column pseudo-terminal as its controlling terminal; return its exit code
    and everything it wrote. ``react(text so far)`` may return bytes to type (b"\\x03" is Ctrl-C)."""
    exe = str(Path(sys.executable).with_name("retort"))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("MLFLOW_TRACKING_URI", None)
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.chdir(cwd)
        os.execve(exe, [exe, *args], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    typed = False
    try:
        while time.monotonic() < deadline:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child has gone and the terminal is closed
                break
            if not data:
                break
            chunks.append(data)
            if react is not None and not typed:
                keys = react(b"".join(chunks).decode(errors="replace"))
                if keys:
                    os.write(fd, keys)
                    typed = True
        else:
            os.kill(pid, 9)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def plain(text: str) -> str:
    return ESCAPE.sub("", text)


@pytest.mark.slow
def test_a_run_on_a_terminal_shows_a_status_first_then_a_live_bar_per_epoch(tmp_path: Path):
    # about 2,400 batches an epoch: well past the bar's half-second delay on any machine
    code, text = spawn(["run", "digits-mlp", "-s", "trainer.max_epochs=2",
                        "-s", "data={name: synthetic_classification, n_samples: 8000, batch_size: 2}",
                        "-s", "model.hidden=[16]"], tmp_path)
    assert code == 0, text
    assert text.startswith("\r\x1b[Kretort run digits-mlp: loading PyTorch, Lightning and MLflow")
    seen = plain(text)
    bars = re.findall(r"epoch (\d)/2 ━{24} (\d+)/(\d+) batches  loss (\d\.\d{4})  ([\d,]+) samples/s  "
                      r"(\d+:\d\d)  ETA (\d+:\d\d)", seen)
    assert {b[0] for b in bars} == {"1", "2"}, seen
    [total] = {int(b[2]) for b in bars}
    assert total > 2000
    assert all(0 < int(b[1]) <= total and 0 < float(b[3]) < 3 and int(b[4].replace(",", "")) > 0 for b in bars)
    lines = [line for line in text.replace("\r\n", "\n").split("\n")]
    epoch_lines = [plain(line) for line in lines if "train loss" in line]
    assert [line[:12] for line in epoch_lines] == ["epoch 1/2  t", "epoch 2/2  t"]
    run_id = all_runs(_client(tmp_path))[0].info.run_id
    assert f"recording run {run_id} in experiment 'digits' (sqlite:///mlflow.db)" in seen
    assert re.search(r"\ntested: epoch [12] of 2 \(lowest val/loss\)\ntest/loss: [\d.]+\ntest/accuracy: [\d.]+\n"
                     rf"run_id: {run_id}\n$", seen.replace("\r", ""))


@pytest.mark.slow
def test_ctrl_c_on_a_terminal_says_the_run_and_the_command_that_resumes_it(tmp_path: Path):
    args = ["run", "digits-mlp", "-s", "trainer.max_epochs=4", "-s", "data.batch_size=8", "-s", "model.hidden=[16]"]
    code, text = spawn(args, tmp_path, react=lambda seen: b"\x03" if "epoch 1/4  train loss" in seen else None)
    assert code == 130, text
    [run] = all_runs(_client(tmp_path))
    assert run.info.status == "KILLED"
    seen = plain(text)
    assert seen.endswith(f"interrupted (SIGINT); run {run.info.run_id} is recorded as KILLED, with a checkpoint; "
                         f"resume it with:\n  retort run --resume {run.info.run_id}\n"), seen[-600:]
    command = seen.strip().splitlines()[-1].strip()
    resumed = retort(*shlex.split(command)[1:], cwd=tmp_path)  # the exact command it printed
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == f"run_id: {run.info.run_id}"
    after = _client(tmp_path).get_run(run.info.run_id)
    assert after.info.status == "FINISHED" and after.data.tags["retort.resumed"] == "true"
    assert [m.step for m in _client(tmp_path).get_metric_history(run.info.run_id, "val/loss")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_quiet_prints_only_the_final_lines(tmp_path: Path):
    out = retort("run", "iris-rmsprop", "-s", "trainer.max_epochs=2", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert [line.split(":")[0] for line in out.stdout.splitlines()] == [
        "train/loss_epoch", "tested", "test/loss", "test/accuracy", "run_id"]


def _client(folder: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


# --- the display's parts, drawn into a captured terminal -----------------------------------------

def test_epoch_bar_draws_on_a_terminal_only_after_its_delay(monkeypatch: pytest.MonkeyPatch):
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("COLUMNS", "120")
    bar = EpochBar(max_epochs=40, delay=0.0)
    bar.start(3, batches=540)
    assert bar.due()
    bar.draw(120, samples=120 * 64, mean=0.41214)
    bar.stop()
    text = plain(err.getvalue())
    assert re.search(r"epoch 3/40 ━{24} 120/540 batches  loss 0\.4121 +[\d,]+ samples/s  0:00  ETA 0:00",
                     text), text
    slow = EpochBar(max_epochs=40, delay=60.0)
    slow.start(1, batches=10)
    assert not slow.due()


def test_sweep_board_reads_running_and_finished_trials_from_the_study(monkeypatch: pytest.MonkeyPatch):
    import io

    import optuna

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    before = study.ask()
    study.tell(before, 0.7)  # finished before the board: counted, not shown again
    board = SweepBoard("digits-mlp", trials=6, metric="val/loss", direction="minimize")
    worker_of = lambda t: t.system_attrs.get("retort:owner", {}).get("worker")  # noqa: E731
    describe = lambda t, done: f"trial {t.number} {t.state.name.lower()} [{done}/6 finished]"  # noqa: E731
    assert board.sync(study.get_trials(), describe, worker_of) == []
    a, b = study.ask(), study.ask()
    for trial, worker in ((a, 0), (b, 1)):
        study._storage.set_trial_system_attr(trial._trial_id, "retort:owner", {"worker": worker})
    a.report(0.5, 1)
    a.report(0.45, 2)
    b.report(0.9, 1)
    assert board.sync(study.get_trials(), describe, worker_of) == []
    assert board.lines() == [
        "sweep digits-mlp: 1 of 6 trials finished, 2 running; best val/loss 0.7 (trial 0)",
        "  worker 0  trial 1  epoch 2  val/loss 0.45",
        "  worker 1  trial 2  epoch 1  val/loss 0.9",
    ]
    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("COLUMNS", "100")
    board.draw()
    table = plain(err.getvalue())
    assert "sweep digits-mlp: 1 of 6 trials finished, 2 running; best val/loss 0.7 (trial 0)" in table
    assert re.search(r"worker +trial +epoch +val/loss\n +0 +1 +2 +0\.45\n +1 +2 +1 +0\.9", table), table
    study.tell(a, 0.42)
    study.tell(b, state=optuna.trial.TrialState.PRUNED)
    assert board.sync(study.get_trials(), describe, worker_of) == ["trial 1 complete [2/6 finished]",
                                                                   "trial 2 pruned [3/6 finished]"]
    assert board.lines() == ["sweep digits-mlp: 3 of 6 trials finished, 0 running; best val/loss 0.42 (trial 1)"]
    board.draw(["trial 1 complete [3/6 finished]"])
    board.close()
    assert "trial 1 complete [3/6 finished]\n" in plain(err.getvalue())


SWEEP = """\
name: tiny
seed: 0
data: {name: wine, batch_size: 2}
model: {name: mlp, hidden: [8]}
optimizer: {name: adam, lr: 0.01}
trainer: {max_epochs: 80, accelerator: cpu, devices: 1}
tracking: {checkpoint: false, system_metrics: false}
sweep:
  metric: val/loss
  trials: 4
  pruner: none
  space:
    optimizer.lr: {low: 1.0e-3, high: 1.0e-1, log: true}
"""


@pytest.mark.slow
def test_a_sweep_on_a_terminal_shows_a_live_table_of_its_running_trials(tmp_path: Path):
    (tmp_path / "tiny.yaml").write_text(SWEEP)
    code, text = spawn(["sweep", "tiny.yaml", "--workers", "2"], tmp_path)
    assert code == 0, text
    seen = ESCAPE.sub("\n", text.replace("\r\n", "\n"))  # each redraw of the table on lines of its own
    assert re.search(r"^sweep tiny: \d of 4 trials finished, [12] running", seen, re.M), seen
    for worker in (0, 1):  # a row of a trial in progress (worker, trial, epoch, value), the spawned worker's too
        assert re.search(rf"^ +{worker} +\d +[1-9]\d* +0\.\d+$", seen, re.M), seen
    lines = [re.fullmatch(r"trial (\d) complete: val/loss [\d.]+  optimizer\.lr=[\d.e-]+  \[(\d)/4 finished, "
                          r"worker [01]\]", line) for line in seen.splitlines()]
    lines = [m.groups() for m in lines if m]
    assert sorted(n for n, _ in lines) == ["0", "1", "2", "3"]  # each finished trial's line once
    assert [k for _, k in lines] == ["1", "2", "3", "4"]
    assert re.search(r"\nbest_value: [\d.]+\nbest_params: \{.*\}\nparent_run_id: \w+\n$", seen), seen[-500:]


@pytest.mark.slow
def test_ctrl_c_on_a_sweep_says_its_parent_run_and_the_command_that_resumes_it(tmp_path: Path):
    """Ctrl-C typed while the live table shows a trial past its first epoch (that the same command resumes
    the parent run is test_sweep's)."""
    (tmp_path / "tiny.yaml").write_text(SWEEP)
    code, text = spawn(["sweep", "tiny.yaml", "--trials", "3"], tmp_path,
                       react=lambda seen: b"\x03" if re.search(r"\n +0 +0 +[1-9]\d* +0\.\d+", plain(seen)) else None)
    assert code == 130, text
    runs = {r.data.tags.get("retort.sweep", "trial"): r for r in all_runs(_client(tmp_path))}
    parent, trial = runs["parent"], runs["trial"]
    assert (parent.info.status, trial.info.status) == ("KILLED", "KILLED")
    assert trial.data.tags["retort.failure"] == "interrupted by SIGINT"
    seen = plain(text)
    assert seen.endswith(f"interrupted (SIGINT); the sweep's parent run {parent.info.run_id} is recorded as KILLED "
                         "and the trials it interrupted run again when it resumes; resume it with the same command:"
                         "\n  retort sweep tiny.yaml --trials 3\n"), seen[-600:]
