"""Model plugins: ``factory(info, **config) -> nn.Module`` mapping rows (N, F) to raw scores (N, n_outputs).

Scores are logits for classification (one per class; a single one for binary) and values for
regression; the loss and the metrics decide what to do with them::

    >>> import plugins
    >>> from plugins.data import prepare
    >>> info = prepare(plugins.build("data", "digits"), val_fraction=0.2, test_fraction=0.2, seed=0).info
    >>> plugins.build("model", {"name": "mlp", "hidden": [32]}, info)
    Sequential(
      (0): Linear(in_features=64, out_features=32, bias=True)
      (1): ReLU()
      (2): Linear(in_features=32, out_features=10, bias=True)
    )
"""

from typing import Literal

from torch import nn

from retort.plugins import PluginError, did_you_mean, register
from retort.plugins.data import IMAGE_DATASETS, DataInfo

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module by name; unknown names raise with the valid ones."""
    if name not in ACTIVATIONS:
        raise PluginError(f"unknown activation {name!r}{did_you_mean(name, ACTIVATIONS)}; "
                          f"valid choices: {', '.join(ACTIVATIONS)}", field="activation")
    return ACTIVATIONS[name]()


def _check_widths(field: str, widths: list[int]) -> None:
    if any(w < 1 for w in widths):
        raise PluginError(f"every width in {field} must be at least 1, got {widths}", field=field)


def _check_dropout(dropout: float) -> None:
    if not 0 <= dropout < 1:
        raise PluginError(f"dropout must be in [0, 1), got {dropout}", field="dropout")


@register("model", "linear")
def linear(info: DataInfo) -> nn.Module:
    """One Linear layer, F inputs to n_outputs scores: linear or logistic (softmax) regression."""
    return nn.Linear(info.n_features, info.n_outputs)


@register("model", "mlp")
def mlp(
    info: DataInfo,
    *,
    hidden: list[int] = [128, 64],  # noqa: B006 (a signature default is read, never mutated)
    activation: str = "relu",
    dropout: float = 0.0,
    norm: Literal["none", "batch", "layer"] = "none",
) -> nn.Module:
    """Multilayer perceptron: Linear(F, h) [norm] activation [dropout] per width in hidden=[128, 64]."""
    _check_widths("hidden", hidden)
    _check_dropout(dropout)
    activation_layer(activation)
    layers: list[nn.Module] = []
    width = info.n_features
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(h))
        elif norm == "layer":
            layers.append(nn.LayerNorm(h))
        layers.append(activation_layer(activation))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, info.n_outputs))
    return nn.Sequential(*layers)


@register("model", "cnn")
def cnn(
    info: DataInfo,
    *,
    channels: list[int] = [16, 32],  # noqa: B006 (a signature default is read, never mutated)
    kernel_size: int = 3,
    hidden: int = 64,
    activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Module:
    """CNN on image rows: [Conv2d(k=3, same), act, 2×2 max-pool] per width in [16, 32]; Linear(64), act."""
    if info.image_shape is None:
        raise PluginError(f"model 'cnn' needs image rows, but data {info.name!r} has no image_shape; "
                          f"use a data set with images ({', '.join(IMAGE_DATASETS)}, or npz with x of shape "
                          "(N, H, W) or (N, C, H, W)), or model 'mlp'", field="name")
    _check_widths("channels", channels)
    _check_widths("kernel_size", [kernel_size])
    _check_widths("hidden", [hidden])
    _check_dropout(dropout)
    activation_layer(activation)
    c, h, w = info.image_shape
    layers: list[nn.Module] = [nn.Unflatten(1, (c, h, w))]
    for out in channels:
        layers += [nn.Conv2d(c, out, kernel_size, padding="same"), activation_layer(activation)]
        if min(h, w) >= 2:  # pool only while there is something to halve
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    layers += [nn.Flatten(), nn.Linear(c * h * w, hidden), activation_layer(activation)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, info.n_outputs))
    return nn.Sequential(*layers)
