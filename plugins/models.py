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

import torch
from torch import Tensor, nn

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


# --- images of any size, and sequences ------------------------------------------------------------

class _Block(nn.Module):
    """ResNet's basic block: two 3×3 convolutions with batch norm, and the input added back (projected when
    the stride or the width changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    """Stem, stages of basic blocks (each stage after the first halves the resolution), global average pooling,
    one Linear: any image size goes in. Rows of flattened images (N, C*H*W) are reshaped first."""

    def __init__(self, image_shape: tuple[int, int, int], n_outputs: int, channels: list[int], blocks: int):
        super().__init__()
        self.image_shape = image_shape
        layers: list[nn.Module] = [nn.Conv2d(image_shape[0], channels[0], 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)]
        c = channels[0]
        for i, width in enumerate(channels):
            for b in range(blocks):
                layers.append(_Block(c, width, 2 if i > 0 and b == 0 else 1))
                c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            x = x.reshape(len(x), *self.image_shape)
        return self.head(self.features(x).mean(dim=(2, 3)))


@register("model", "resnet")
def resnet(
    info: DataInfo,
    *,
    channels: list[int] = [16, 32, 64],  # noqa: B006 (a signature default is read, never mutated)
    blocks: int = 1,
) -> nn.Module:
    """ResNet-style CNN for images of any size: 3×3 stem, basic blocks per width in [16, 32, 64], average pool."""
    if info.image_shape is None:
        raise PluginError(f"model 'resnet' needs images, but data {info.name!r} has none; use an image data set "
                          f"(image_folder, shapes, {', '.join(IMAGE_DATASETS)}, npz of (N, H, W)), or model 'mlp'",
                          field="name")
    if not channels:
        raise PluginError("channels needs at least one width", field="channels")
    _check_widths("channels", channels)
    _check_widths("blocks", [blocks])
    return ResNet(info.image_shape, info.n_outputs, channels, blocks)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = (z.reshape(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                       dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class _GPTBlock(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = _Attention(width, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width),
                                 nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Token and position embeddings, pre-norm blocks of causal self-attention and MLP, a final norm, and a head
    that shares the token embedding's weights: token ids (B, T) -> next-token logits (B, T, vocab)."""

    def __init__(self, vocab: int, block_size: int, layers: int, heads: int, width: int, dropout: float):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, width), nn.Embedding(block_size, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(_GPTBlock(width, heads, dropout) for _ in range(layers)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tokens.weight  # tied
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        h = self.drop(self.tokens(x) + self.positions(torch.arange(t, device=x.device)))
        return self.head(self.norm(self.blocks(h)))


@register("model", "gpt")
def gpt(info: DataInfo, *, layers: int = 2, heads: int = 4, width: int = 64, dropout: float = 0.0) -> nn.Module:
    """Small causal transformer (GPT-style): 2 blocks of 4-head attention and MLP, width 64, tied head."""
    _check_widths("layers", [layers])
    _check_widths("heads", [heads])
    _check_dropout(dropout)
    if width % heads:
        raise PluginError(f"width ({width}) must be a multiple of heads ({heads})", field="width")
    if info.task != "multiclass" or info.image_shape is not None:
        raise PluginError(f"model 'gpt' needs sequences of token ids with next-token targets (data 'text', "
                          f"'python_docs'), but data {info.name!r} is {info.task}", field="name")
    return GPT(info.n_outputs, info.n_features, layers, heads, width, dropout)
