"""Every shipped recipe reaches the quality its description states (full runs: marked slow)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from retort import recipes

PYDOCS_BITS = 3.8  # validation bits per byte the README states for pydocs-gpt, 3.72 (byte frequencies: 4.88)
QUALITY = {  # recipe: (test metric, at least) -- the figures each description states
    "digits-cnn": ("test/accuracy", 0.97),
    "breast-cancer": ("test/accuracy", 0.96),
    "diabetes-mse": ("test/r2", 0.35),
    "wine-momentum": ("test/accuracy", 0.97),
    "iris-rmsprop": ("test/accuracy", 0.96),
    "digits-adagrad": ("test/accuracy", 0.95),
    "digits-amsgrad": ("test/accuracy", 0.97),
    "shapes-resnet": ("test/accuracy", 0.98),
}


@pytest.fixture(scope="session")
def _cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cache(_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Generated data sets (shapes, the docstrings corpus) in a folder of this test session's own."""
    monkeypatch.setenv("RETORT_CACHE", str(_cache))
    return _cache


def test_every_shipped_recipe_has_a_quality_check():
    assert set(QUALITY) | {"digits-mlp", "pydocs-gpt"} == {name for name, _ in recipes.shipped()}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(QUALITY))
def test_shipped_recipe_quality(name: str, workdir, cache):
    metric, floor = QUALITY[name]
    result = recipes.run(recipes.load(name), quiet=True)
    assert result.metrics[metric] >= floor


@pytest.mark.slow
def test_digits_mlp_is_as_accurate_as_sklearn_mlpclassifier(workdir):
    """Same split, same scaling, same hidden sizes: sklearn's best of three seeds is the bar."""
    from sklearn.neural_network import MLPClassifier

    from retort import plugins
    from retort.plugins.data import prepare

    r = recipes.load("digits-mlp")
    splits = prepare(plugins.build("data", {"name": "digits"}), val_fraction=r.data["val_fraction"],
                     test_fraction=r.data["test_fraction"], seed=r.seed, scale=r.data["scale"])
    (xtr, ytr), (xte, yte) = splits.train, splits.test
    sklearn_best = max(
        MLPClassifier(hidden_layer_sizes=tuple(r.model["hidden"]), random_state=k, max_iter=500)
        .fit(xtr.numpy(), ytr.numpy()).score(xte.numpy(), yte.numpy())
        for k in range(3))
    ours = recipes.run(r, quiet=True).metrics["test/accuracy"]
    assert ours >= sklearn_best - 1e-9, (ours, sklearn_best)


@pytest.mark.slow
def test_pydocs_gpt_models_bytes_far_better_than_their_frequencies(workdir, cache):
    """Validation loss in bits per byte, against the byte frequencies of the training text (a unigram model)."""
    import numpy as np
    from mlflow import MlflowClient

    from retort.plugins.data.text import python_docs_corpus, unigram_bits

    result = recipes.run(recipes.load("pydocs-gpt"), quiet=True)
    last = max(MlflowClient().get_metric_history(result.run_id, "val/loss"), key=lambda m: m.step)
    bits = last.value / math.log(2)
    folder = Path(python_docs_corpus())
    read = lambda name: np.frombuffer((folder / name).read_bytes(), dtype=np.uint8)  # noqa: E731
    baseline = unigram_bits(read("val.txt"), read("train.txt"))
    assert bits <= PYDOCS_BITS and baseline - bits >= 1.0, (bits, baseline)
