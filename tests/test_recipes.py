"""Recipe files: loading, overrides, defaults, the resolved form, and every class of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from retort import recipes
from retort.recipes import RecipeError
from retort.recipes.schema import resolve

SHIPPED = [name for name, _ in recipes.shipped()]


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(fn, *args, **kwargs) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        fn(*args, **kwargs)
    return info.value


# --- shipped recipes and the resolved form ------------------------------------------------------

def test_shipped_recipes_have_descriptions():
    assert {"digits-mlp", "digits-cnn"} <= set(SHIPPED)
    assert all(desc for _, desc in recipes.shipped())


@pytest.mark.parametrize("name", SHIPPED)
def test_resolved_recipe_round_trips(name: str, tmp_path: Path):
    r = recipes.load(name)
    again = recipes.load(write(tmp_path, r.to_yaml()))
    assert again.to_dict() == r.to_dict()


def test_every_default_is_filled():
    r = resolve({})
    d = r.to_dict()
    assert d["data"] == {"name": "digits", "batch_size": 64, "val_fraction": 0.2, "test_fraction": 0.2,
                         "scale": "standard", "target_scale": "none", "shuffle": True, "drop_last": False,
                         "eval_batch_size": 1024, "on_device": True, "num_workers": 0, "pin_memory": False,
                         "persistent_workers": False, "prefetch_factor": None}
    assert d["loss"] == {"name": "logitcrossentropy", "agg": "mean", "label_smoothing": 0.0, "dims": 1}
    assert d["optimizer"]["lr"] == 0.001 and d["optimizer"]["betas"] == [0.9, 0.999]
    assert d["trainer"]["max_epochs"] == 10 and d["trainer"]["deterministic"] is True
    assert d["model"]["head"] == "none"
    assert d["scheduler"] is None and d["callbacks"] == [] and d["sweep"] is None


def test_flux_aliases_become_canonical_fields():
    r = resolve({"optimizer": {"name": "rmsprop", "eta": 0.01, "rho": 0.95, "epsilon": 1e-6}})
    assert r.optimizer["lr"] == 0.01 and r.optimizer["rho"] == 0.95 and r.optimizer["eps"] == 1e-6
    assert "eta" not in r.optimizer


def test_probability_losses_get_an_output_activation():
    assert resolve({"loss": "crossentropy"}).model["head"] == "softmax"
    assert resolve({"loss": "binarycrossentropy", "data": "breast_cancer"}).model["head"] == "sigmoid"
    assert resolve({"loss": "logitcrossentropy"}).model["head"] == "none"


def test_flat_params_use_dotted_paths():
    flat = resolve({"callbacks": [{"name": "early_stopping", "patience": 3}]}).flat()
    assert flat["optimizer.lr"] == 0.001
    assert flat["model.hidden"] == [128, 64]
    assert flat["callbacks.0.patience"] == 3
    assert flat["callbacks.0.name"] == "early_stopping"


def test_yaml_reads_1e_minus_3_as_float(tmp_path: Path):
    r = recipes.load(write(tmp_path, "optimizer: {name: adam, lr: 1e-3}\n"))
    assert r.optimizer["lr"] == 0.001


# --- overrides --------------------------------------------------------------------------------

def test_overrides_set_dotted_paths():
    r = recipes.load("digits-mlp", ["optimizer.lr=0.01", "data.batch_size=32", "model.hidden=[32, 16]",
                                    "trainer.max_epochs=3"])
    assert (r.optimizer["lr"], r.data["batch_size"], r.model["hidden"], r.trainer["max_epochs"]) == \
        (0.01, 32, [32, 16], 3)


def test_override_turns_a_named_plugin_into_a_mapping(tmp_path: Path):
    r = recipes.load(write(tmp_path, "loss: mse\ndata: diabetes\nmetrics: []\n"), ["loss.agg=sum"])
    assert r.loss == {"name": "mse", "agg": "sum"}


def test_override_replaces_a_plugin_and_indexes_lists(tmp_path: Path):
    path = write(tmp_path, "callbacks: [{name: early_stopping, patience: 5}]\n")
    r = recipes.load(path, ["optimizer=rmsprop", "callbacks.0.patience=2"])
    assert r.optimizer["name"] == "rmsprop" and r.optimizer["lr"] == 0.001  # Flux default
    assert r.callbacks[0]["patience"] == 2


@pytest.mark.parametrize("override, field, words", [
    ("optimizer.lrr=0.1", "optimizer.lrr", ["did you mean 'lr'"]),
    ("optimiser.lr=0.1", "--set", ["did you mean 'optimizer'"]),
    ("optimizer.lr", "--set", ["dotted.path=value"]),
    ("callbacks.3.patience=1", "--set", ["out of range"]),
    ("optimizer.lr=[1, 2", "--set", ["cannot read the value"]),
    ("seed=abc", "seed", ["must be int"]),
])
def test_bad_overrides(override: str, field: str, words: list[str]):
    err = error(recipes.load, "digits-mlp", [override])
    assert err.field == field
    for w in words:
        assert w in str(err)


# --- bad recipe files ---------------------------------------------------------------------------

def test_malformed_yaml_names_line_and_column(tmp_path: Path):
    err = error(recipes.load, write(tmp_path, "data: {name: digits\nmodel: mlp\n"))
    assert "malformed YAML" in str(err) and "line 2, column" in str(err)
    assert err.source and err.source.endswith("r.yaml")


def test_duplicate_keys_are_errors(tmp_path: Path):
    err = error(recipes.load, write(tmp_path, "seed: 1\nseed: 2\n"))
    assert "duplicate key 'seed' at line 2" in str(err)


def test_missing_recipe_lists_shipped_ones():
    err = error(recipes.load, "digits-mpl")
    assert "did you mean 'digits-mlp'" in str(err) and "digits-cnn" in str(err)


@pytest.mark.parametrize("text, field, words", [
    ("optimiser: adam\n", "optimiser", ["did you mean 'optimizer'", "valid fields"]),
    ("optimizer: {name: adamm}\n", "optimizer.name", ["unknown optimizer 'adamm'", "did you mean 'adam'",
                                                       "valid choices", "rmsprop"]),
    ("loss: logitcrossentropi\n", "loss.name", ["did you mean 'logitcrossentropy'"]),
    ("optimizer: {name: adam, lr: fast}\n", "optimizer.lr", ["valid number", "'fast'"]),
    ("optimizer: {name: adam, betas: [0.9]}\n", "optimizer.betas", ["betas"]),
    ("data: {name: digits, batch_size: 0}\n", "data.batch_size", ["greater than 0"]),
    ("data: {name: digits, batch_sise: 8}\n", "data.batch_sise", ["did you mean 'batch_size'"]),
    ("data: {name: digits, val_fraction: 0.6, test_fraction: 0.5}\n", "data.val_fraction", ["below 1"]),
    ("model: {name: mlp, hiden: [3]}\n", "model.hiden", ["did you mean 'hidden'"]),
    ("model: {name: mlp, head: tanh}\n", "model.head", ["'auto'", "'softmax'"]),
    ("trainer: {max_epochs: -1}\n", "trainer.max_epochs", ["greater than or equal to 1"]),
    ("trainer: {accelerator: tpu}\n", "trainer.accelerator", ["'cpu'", "'gpu'"]),
    ("trainer: {max_epoch: 3}\n", "trainer.max_epoch", ["did you mean 'max_epochs'"]),
    ("scheduler: {name: cosine, interval: batch}\n", "scheduler.interval", ["'step'", "'epoch'"]),
    ("callbacks: [{name: early_stopping, monitor: val/acc}]\nmetrics: [accuracy]\n", "callbacks.0.monitor",
     ["did you mean 'val/accuracy'"]),
    ("callbacks: early_stopping\n", "callbacks", ["list"]),
    ("metrics: [acuracy]\n", "metrics.0.name", ["did you mean 'accuracy'"]),
    ("metrics: [accuracy, accuracy]\n", "metrics", ["listed twice"]),
    ("tracking: {log_every_n_steps: -1}\n", "tracking.log_every_n_steps", ["greater than or equal to 0"]),
    ("- 1\n- 2\n", None, ["mapping"]),
    ("sweep: {space: {optimizer.lr: {low: 0.1, high: 0.01}}}\n", "sweep.space.optimizer.lr", ["below high"]),
    ("sweep: {space: {optimizer.lr: {low: 0.0, high: 0.1, log: true}}}\n", "sweep.space.optimizer.lr",
     ["log range needs low > 0"]),
    ("sweep: {space: {data.batch_size: {choices: []}}}\n", "sweep.space.data.batch_size", ["empty"]),
    ("sweep: {space: {optimizer.rl: {low: 0.1, high: 1.0}}}\n", "sweep.space.optimizer.rl",
     ["did you mean 'optimizer.lr'"]),
    ("sweep: {sampler: bayes}\n", "sweep.sampler", ["'tpe'", "'random'"]),
    ("sweep: {pruner: asha}\n", "sweep.pruner", ["'hyperband'", "'median'"]),
    ("sweep: {metric: val/acc}\nmetrics: [accuracy]\n", "sweep.metric", ["did you mean 'val/accuracy'"]),
])
def test_bad_recipes(tmp_path: Path, text: str, field: str | None, words: list[str]):
    err = error(recipes.load, write(tmp_path, text))
    assert err.field == field
    for w in words:
        assert w in str(err), str(err)
