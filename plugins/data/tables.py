"""What a data set is to retort (:class:`Table`, :class:`DataInfo`, :class:`Splits`) and the built-in tables:
scikit-learn's bundled sets and seeded synthetic ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from retort.plugins import PluginError, register

TASKS = ("multiclass", "binary", "regression")
# An integer-valued target with at most this many distinct values is read as class labels (task "auto").
MAX_AUTO_CLASSES = 20
# Rows of image shape (C, H, W) that come with the built-in sets; named in models' error messages.
IMAGE_DATASETS = ("digits", "image_folder", "shapes")


@dataclass
class Table:
    """Every row of a data set in memory.

    ``y`` holds int64 class indices of shape (N,) for classification, float32 of shape (N, T) for
    regression. ``image_shape`` is (C, H, W) when each row of ``x`` is a flattened image.
    """

    x: np.ndarray
    y: np.ndarray
    task: str
    name: str
    image_shape: tuple[int, int, int] | None = None
    class_names: list[str] | None = None
    source: str = "synthetic"
    features: list[str] | None = None  # column names (default x0, x1, ...), the trained model's input names


@dataclass(frozen=True)
class DataInfo:
    """What a model or a metric needs to know about the data: shapes, task and split sizes.

    ``n_outputs`` is the number of classes for multiclass, 1 for binary (one logit), T for regression.
    """

    name: str
    task: str
    n_features: int
    image_shape: tuple[int, int, int] | None
    n_outputs: int
    n_train: int
    n_val: int
    n_test: int
    class_names: list[str] | None


@dataclass
class Splits:
    """Train, validation and test tensors ``(x, y)``; ``target_scaler`` is ``(mean, std)`` or None.

    Scaled regression targets go back to data units with :meth:`unscale_target`.
    """

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    info: DataInfo
    digest: str
    target_scaler: tuple[torch.Tensor, torch.Tensor] | None = None
    preprocess: Any = None  # plugins.preprocess.Preprocess: raw inputs to the model's, saved with the model

    def unscale_target(self, y: torch.Tensor) -> torch.Tensor:
        if self.target_scaler is None:
            return y
        mean, std = (t.to(y.device) for t in self.target_scaler)
        return y * std + mean


# --- built-in data sets -------------------------------------------------------------------------

def _sklearn(loader_name: str, name: str, task: str, image_shape=None) -> Table:
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, loader_name)()
    x = np.ascontiguousarray(bunch.data, dtype=np.float32)
    if task == "regression":
        y = np.asarray(bunch.target, dtype=np.float32).reshape(len(x), -1)
        class_names = None
    else:
        y = np.asarray(bunch.target, dtype=np.int64)
        class_names = [str(c) for c in bunch.target_names]
    features = [str(f) for f in bunch.feature_names] if "feature_names" in bunch else None
    return Table(x, y, task, name, image_shape, class_names, f"sklearn:{name}", features)


@register("data", "digits")
def digits() -> Table:
    """scikit-learn's handwritten digits: 1797 rows of 8×8 images (64 features, 0 to 16), 10 classes."""
    return _sklearn("load_digits", "digits", "multiclass", (1, 8, 8))


@register("data", "wine")
def wine() -> Table:
    """scikit-learn's wine recognition: 178 rows, 13 chemical features, 3 cultivars."""
    return _sklearn("load_wine", "wine", "multiclass")


@register("data", "breast_cancer")
def breast_cancer() -> Table:
    """scikit-learn's Wisconsin breast cancer: 569 rows, 30 features, binary (malignant/benign)."""
    return _sklearn("load_breast_cancer", "breast_cancer", "binary")


@register("data", "diabetes")
def diabetes() -> Table:
    """scikit-learn's diabetes: 442 rows, 10 (centred, scaled) features, 1 regression target."""
    return _sklearn("load_diabetes", "diabetes", "regression")


@register("data", "iris")
def iris() -> Table:
    """scikit-learn's iris: 150 rows, 4 features, 3 species."""
    return _sklearn("load_iris", "iris", "multiclass")


def _sklearn_call(fn, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    try:
        return fn(**kwargs)
    except ValueError as exc:  # sklearn checks the combinations (e.g. n_classes vs n_informative)
        raise PluginError(f"{fn.__name__}: {exc}") from None


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise PluginError(f"{key} must be at least 1, got {value}", field=key)


@register("data", "synthetic_classification")
def synthetic_classification(
    *,
    n_samples: int = 1000,
    n_features: int = 20,
    n_informative: int = 10,
    n_classes: int = 2,
    class_sep: float = 1.0,
    seed: int = 0,
) -> Table:
    """sklearn make_classification: 1000 rows, 20 features (10 informative), 2 classes, class_sep 1."""
    from sklearn.datasets import make_classification

    _check_positive(n_samples=n_samples, n_features=n_features, n_informative=n_informative)
    if n_classes < 2:
        raise PluginError(f"n_classes must be at least 2, got {n_classes}", field="n_classes")
    if n_informative > n_features:
        raise PluginError(f"n_informative ({n_informative}) must not exceed n_features ({n_features})",
                          field="n_informative")
    x, y = _sklearn_call(make_classification, n_samples=n_samples, n_features=n_features,
                         n_informative=n_informative, n_classes=n_classes,
                         class_sep=class_sep, random_state=seed)
    task = "binary" if n_classes == 2 else "multiclass"
    return Table(x.astype(np.float32), y.astype(np.int64), task, "synthetic_classification",
                 class_names=[str(c) for c in range(n_classes)], source="synthetic")


@register("data", "synthetic_regression")
def synthetic_regression(
    *,
    n_samples: int = 1000,
    n_features: int = 20,
    n_informative: int = 10,
    n_targets: int = 1,
    noise: float = 0.1,
    seed: int = 0,
) -> Table:
    """sklearn make_regression: 1000 rows, 20 features (10 informative), 1 target, noise sd 0.1."""
    from sklearn.datasets import make_regression

    _check_positive(n_samples=n_samples, n_features=n_features, n_informative=n_informative,
                    n_targets=n_targets)
    if n_informative > n_features:
        raise PluginError(f"n_informative ({n_informative}) must not exceed n_features ({n_features})",
                          field="n_informative")
    x, y = _sklearn_call(make_regression, n_samples=n_samples, n_features=n_features,
                         n_informative=n_informative, n_targets=n_targets, noise=noise, random_state=seed)
    return Table(x.astype(np.float32), y.astype(np.float32).reshape(n_samples, -1), "regression",
                 "synthetic_regression", source="synthetic")
