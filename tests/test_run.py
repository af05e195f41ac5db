"""A recipe run end to end in-process: exact losses, the MLflow record, failures and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from retort import recipes
from retort.plugins.errors import RunFailed
from retort.recipes import RecipeError
from retort.recipes.schema import resolve
from tests.conftest import all_runs

TINY = {
    "name": "tiny",
    "seed": 7,
    "data": {"name": "digits", "batch_size": 64},
    "model": {"name": "mlp", "hidden": [32]},
    "loss": "logitcrossentropy",
    "optimizer": {"name": "torch.optim.Adam", "lr": 0.01},
    "metrics": ["accuracy"],
    "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1},
    "tracking": {"experiment": "tests"},
}


def tiny(**changes) -> recipes.schema.Recipe:
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    for key, value in changes.items():
        raw[key] = value
    return resolve(raw)


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def hand_written_losses(recipe) -> list[list[float]]:
    """The seed's loop in plain PyTorch: same initial weights, same batches, torch.optim.Adam."""
    from retort.recipes.runner import build

    torch.manual_seed(recipe.seed)
    import pytorch_lightning as pl

    pl.seed_everything(recipe.seed, verbose=False)
    built = build(recipe)
    model = built.module.net
    loss_fn = built.module.loss_fn
    opt = torch.optim.Adam(model.parameters(), lr=recipe.optimizer["lr"])
    loader = built.datamodule.train_dataloader()
    epochs = []
    for epoch in range(recipe.trainer["max_epochs"]):
        loader.set_epoch(epoch)
        losses = []
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        epochs.append(losses)
    return epochs


def test_seeded_run_matches_the_hand_written_loop_and_golden_values(client):
    r = tiny()
    result = recipes.run(r, quiet=True)
    steps = history(client, result.run_id, "train/loss")
    expected = hand_written_losses(tiny())
    flat = [v for epoch in expected for v in epoch]
    assert [s for s, _ in steps] == list(range(1, len(flat) + 1))
    assert [v for _, v in steps] == pytest.approx(flat, rel=1e-6, abs=1e-7)
    # golden values: digits, seed 7, MLP 64-32-10, Adam 0.01, batch 64 (17 batches per epoch)
    assert len(flat) == 34
    assert flat[0] == pytest.approx(GOLDEN_FIRST, rel=1e-5)
    assert result.metrics["train/loss_epoch"] == pytest.approx(GOLDEN_EPOCH2, rel=1e-5)
    epoch_avgs = history(client, result.run_id, "train/loss_epoch")
    assert [s for s, _ in epoch_avgs] == [1, 2]
    for (_, avg), losses in zip(epoch_avgs, expected):
        assert avg == pytest.approx(sum(losses) / len(losses), rel=1e-6)


GOLDEN_FIRST = 2.4101858
GOLDEN_EPOCH2 = 0.3149548


def test_two_runs_of_one_recipe_give_identical_numbers(client):
    a = recipes.run(tiny(), quiet=True)
    b = recipes.run(tiny(), quiet=True)
    assert a.metrics == b.metrics
    assert history(client, a.run_id, "train/loss") == history(client, b.run_id, "train/loss")


def test_the_record_of_a_run(client, workdir: Path):
    long_text = "a description longer than MLflow's old 250-character limit " * 8
    r = tiny(description=long_text)
    result = recipes.run(r, quiet=True)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {k: recipes_param(v) for k, v in r.flat().items()}
    assert run.data.params["description"] == long_text  # not truncated
    assert run.data.params["optimizer.lr"] == "0.01"
    assert run.data.params["model.hidden"] == "[32]"
    assert client.get_experiment(run.info.experiment_id).name == "tests"
    n_train = 1797 - 360 - 359  # stratified 20 % test, then 20 % of the whole for validation
    per_epoch = math.ceil(n_train / 64)
    assert len(history(client, result.run_id, "train/loss")) == 2 * per_epoch
    assert len(history(client, result.run_id, "lr")) == 2 * per_epoch
    for key in ("val/loss", "val/accuracy", "train/loss_epoch"):
        assert [s for s, _ in history(client, result.run_id, key)] == [1, 2]
    for key in ("test/loss", "test/accuracy"):
        assert len(history(client, result.run_id, key)) == 1
        assert run.data.metrics[key] == pytest.approx(result.metrics[key])
    assert 0.85 < result.metrics["test/accuracy"] <= 1.0
    tags = run.data.tags
    assert tags["retort.recipe"] == "tiny" and tags["retort.seed"] == "7"
    assert tags["torch.version"] == torch.__version__
    files = {f.path for f in client.list_artifacts(result.run_id)}
    assert "recipe.yaml" in files and "checkpoints" in files
    local = client.download_artifacts(result.run_id, "recipe.yaml", str(workdir))
    assert Path(local).read_text() == r.to_yaml()
    assert resolve(yaml.safe_load(Path(local).read_text())).to_dict() == r.to_dict()


def recipes_param(value) -> str:
    from retort.tracking.record import param_value

    return param_value(value)


def test_checkpoint_can_be_switched_off(client):
    r = tiny(tracking={"experiment": "tests", "checkpoint": False})
    result = recipes.run(r, quiet=True)
    files = {f.path for f in client.list_artifacts(result.run_id)}
    assert "recipe.yaml" in files and "checkpoints" not in files


def test_non_finite_loss_fails_the_run_naming_epoch_and_batch(client):
    r = tiny(optimizer={"name": "descent", "lr": 1.0e12}, trainer={"max_epochs": 2, "accelerator": "cpu"})
    with pytest.raises(RunFailed) as info:
        recipes.run(r, quiet=True)
    run = client.get_run(info.value.run_id)
    assert run.info.status == "FAILED"
    reason = run.data.tags["retort.failure"]
    assert "NonFiniteLoss" in reason and "epoch 1, batch" in reason
    assert history(client, run.info.run_id, "train/loss")  # what was trained is still recorded


def test_stop_on_nan_stops_at_the_first_bad_batch(client):
    r = tiny(optimizer={"name": "descent", "lr": 1.0e12}, callbacks=["stop_on_nan"])
    with pytest.raises(RunFailed) as info:
        recipes.run(r, quiet=True)
    reason = client.get_run(info.value.run_id).data.tags["retort.failure"]
    assert "at epoch 1, batch" in reason


def test_an_exception_in_training_fails_the_run(client, monkeypatch):
    from retort.recipes import module

    def boom(self, batch, batch_idx):
        raise RuntimeError("boom in step")

    monkeypatch.setattr(module.RecipeModule, "training_step", boom)
    with pytest.raises(RunFailed) as info:
        recipes.run(tiny(), quiet=True)
    run = client.get_run(info.value.run_id)
    assert run.info.status == "FAILED" and "boom in step" in run.data.tags["retort.failure"]


def test_a_model_too_large_for_memory_fails_saying_so(client):
    """64 x 10^12 weights (256 TB) cannot be allocated: a failure (exit 1), not bad input, before any record."""
    with pytest.raises(RunFailed) as info:
        recipes.run(tiny(model={"name": "mlp", "hidden": [10**12]}), quiet=True)
    assert str(info.value).startswith("out of memory: RuntimeError") and "can't allocate memory" in str(info.value)
    assert info.value.run_id is None and all_runs(client) == []


@pytest.mark.parametrize("changes, field, words", [
    ({"loss": "logitbinarycrossentropy"}, "loss.name", ["binary", "10 classes", "logitcrossentropy"]),
    ({"loss": "mse"}, "loss.name", ["regression", "multiclass"]),
    ({"data": {"name": "csv", "path": "missing.csv", "target": "y"}}, "data.path", ["missing.csv"]),
    ({"model": {"name": "cnn"}, "data": "wine"}, "model", ["image"]),
    ({"metrics": ["r2"]}, "metrics.0", ["multiclass"]),
    ({"optimizer": {"name": "adam", "lr": -1.0}}, "optimizer.lr", ["lr"]),
])
def test_bad_input_found_at_build_records_nothing(client, changes, field, words):
    with pytest.raises(RecipeError) as info:
        recipes.run(tiny(**changes), quiet=True)
    err = info.value
    assert err.field is not None and err.field.startswith(field), str(err)
    for w in words:
        assert w in str(err)
    assert all_runs(client) == []


def test_binary_data_with_a_multiclass_loss_uses_two_outputs(client):
    r = tiny(data={"name": "breast_cancer", "batch_size": 64})
    result = recipes.run(r, quiet=True)
    assert result.metrics["test/accuracy"] > 0.9
