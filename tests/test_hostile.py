"""Hostile input: every bad input is refused with exit 2, one line naming the field, and nothing recorded;
secrets planted anywhere never reach the store file or the artifact folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from retort.recipes.cli import main
from tests.conftest import all_runs

FAST = ["-s", "trainer.max_epochs=1", "-s", "model.hidden=[8]", "-q"]


def _files(workdir: Path) -> dict[str, str]:
    texts = {"bomb.yaml": "seed: &a0 [x, x, x, x, x, x, x, x, x]\n"}
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    texts["bomb.yaml"] = "seed:\n" + "\n".join("  " + line for line in lines) + "\n"
    texts["sampler.yaml"] = "sweep:\n  sampler_args:\n" + "\n".join("    " + line for line in lines) + "\n"
    texts["deep.yaml"] = "seed: " + "[" * 100_000 + "]" * 100_000 + "\n"
    texts["key.yaml"] = "seed: {[1, 2]: 3}\n"
    texts["empty.yaml"] = ""
    texts["huge.yaml"] = "description: " + "x" * 5_000_000 + "\n"
    for name, text in texts.items():
        (workdir / name).write_text(text)
    (workdir / "binary.yaml").write_bytes(b"\xff\xfe\x00\x89PNG\r\n\x1a\n")
    return texts


@pytest.mark.parametrize("args, words", [
    (["run", "binary.yaml"], ["binary.yaml", "not a text file"]),
    (["run", "bomb.yaml"], ["bomb.yaml", "expands to more than 100,000 values"]),
    (["run", "sampler.yaml"], ["sampler.yaml", "expands to more than 100,000 values"]),
    (["run", "deep.yaml"], ["deep.yaml", "nests deeper than 100"]),
    (["run", "key.yaml"], ["key.yaml", "mapping key", "line 1"]),
    (["run", "empty.yaml"], ["empty.yaml", "empty", "{}"]),
    (["run", "huge.yaml"], ["huge.yaml", "more than 1,000,000 characters"]),
    (["run", "digits-mlp", "-s", "description=" + "y" * 7000], ["description", "7,000 characters"]),
    (["run", "digits-mlp", "-s", "seed=-1"], ["seed", "2**32"]),
    (["run", "digits-mlp", "-s", f"seed={10**30}"], ["seed", "2**32"]),
    (["run", "digits-mlp", "-s", "sweep.seed=-1"], ["sweep.seed"]),
    (["run", "digits-mlp", "-s", "optimizer.lr=true"], ["optimizer.lr", "not true/false"]),
    (["run", "digits-mlp", "-s", "data.batch_size=true"], ["data.batch_size", "not true/false"]),
    (["run", "digits-mlp", "-s", "optimizer.lr=.inf"], ["optimizer.lr", "finite"]),
    (["run", "digits-mlp", "-s", "optimizer.lr=.nan"], ["optimizer.lr"]),
    (["run", "digits-mlp", "-s", "optimizer.clip_norm=.inf"], ["optimizer.clip_norm", "finite"]),
    (["run", "digits-mlp", "-s", "scheduler={name: torch.optim.lr_scheduler.LambdaLR, lr_lambda: x}"],
     ["scheduler"]),
    (["run", "digits-mlp", "--tracking-uri", "foo://x"], ["--tracking-uri", "foo"]),
    (["run", "digits-mlp", "--tracking-uri", "sqlite:////proc/x.db"], ["--tracking-uri", "/proc/x.db"]),
    (["run", "digits-mlp", "--tracking-uri", "sqlite:///"], ["--tracking-uri", "file"]),
    (["run", "digits-mlp", "-s", "trainer.devices=0"], ["trainer.devices"]),
    (["run", "digits-mlp", "-s", "trainer.accelerator=gpu"], ["trainer.accelerator"]),
    (["run", "digits-mlp", "-s", "callbacks=[{name: early_stopping, patience: 0}]"], ["callbacks.0"]),
    (["run", "digits-mlp", "-s", "callbacks=[{name: throttle, callback: nonesuch}]"], ["callbacks.0"]),
    (["run", "digits-mlp", "-s", "callbacks=[{name: early_stopping, monitor: val/loss}]",
      "-s", "data.val_fraction=0"], ["callbacks.0.monitor", "validation split"]),
])
def test_bad_input_is_refused_with_one_line_and_nothing_recorded(args, words, capsys, workdir: Path, client):
    _files(workdir)
    before = (workdir / "mlflow.db").read_bytes()
    assert main([*args, *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < 1200, err[:2000]
    for w in words:
        assert w in err, err
    assert all_runs(client) == []
    assert (workdir / "mlflow.db").read_bytes() == before
    assert not Path("/proc/x.db").exists()


SWEEPABLE = """\
name: leaky
data: {name: wine, batch_size: 16}
model: {name: mlp, hidden: [8]}
trainer: {max_epochs: 2, accelerator: cpu, devices: 1}
tracking: {system_metrics: false, tags: {api_token: s3cr3t-recipe-tag}}
sweep:
  trials: 2
  sampler: random
  space:
    optimizer.lr: {low: 1.0e-3, high: 1.0e-1, log: true}
"""


@pytest.mark.slow
def test_planted_secrets_reach_neither_the_store_nor_the_artifacts(workdir: Path, capsys, monkeypatch):
    """Secrets in a recipe's tags, in an override's mapping, in the run name, in a dirty repository's diff and
    in a sweep's base recipe: none is anywhere in the store file or under the artifact folder."""
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=workdir, check=True,
                       capture_output=True)

    (workdir / "train.py").write_text("lr = 0.1\n")
    (workdir / ".gitignore").write_text("mlflow.db*\nmlruns/\noptuna/\n*.yaml\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    (workdir / "train.py").write_text("lr = 0.1\nAPI_KEY = 's3cr3t-diff'\npassword=s3cr3t-diff2\n")
    (workdir / "leaky.yaml").write_text(SWEEPABLE)
    planted = ["s3cr3t-recipe-tag", "s3cr3t-mapping", "s3cr3t-name", "s3cr3t-diff", "s3cr3t-diff2",
               "s3cr3t-sweep", "s3cr3t-url"]
    common = ["-s", "tracking.tags={api_key: s3cr3t-mapping, team: vision}",
              "-s", "tracking.run_name=nightly password=s3cr3t-name",
              "-s", "tracking.tags.db_password=s3cr3t-sweep", "-q"]
    for command in ("run", "sweep"):
        monkeypatch.setattr(sys, "argv", ["retort", command, "leaky.yaml", *common])
        assert main(sys.argv[1:]) == 0, capsys.readouterr().err
    capsys.readouterr()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = all_runs(client)
    assert len(runs) == 4  # the run, the sweep's parent and its two trials
    plain = next(r for r in runs if "retort.sweep" not in r.data.tags and "retort.study" not in r.data.tags)
    assert plain.info.run_name == "nightly password=***"
    assert plain.data.tags["retort.command"].startswith(
        "retort run leaky.yaml -s 'tracking.tags={\"api_key\": \"***\", \"team\": \"vision\"}' "
        "-s 'tracking.run_name=nightly password=***'")
    assert plain.data.tags["team"] == "vision"
    store = (workdir / "mlflow.db").read_bytes()
    artifacts = b"".join(p.read_bytes() for p in (workdir / "mlruns").rglob("*") if p.is_file())
    assert b"API_KEY = ***" in artifacts  # the diff is recorded, masked
    for secret in planted:
        assert secret.encode() not in store, secret
        assert secret.encode() not in artifacts, secret
    names = {p.name for p in (workdir / "mlruns").rglob("*") if p.is_file()}
    assert {"base_recipe.yaml", "best_recipe.yaml", "git.diff", "recipe.yaml"} <= names
