"""Losses: Flux.Losses under their Flux names, with Flux's formulas and defaults, on batch-first tensors.

Ports of FluxML/Flux.jl ``src/losses/functions.jl`` (and ``utils.jl``: ``xlogy``, ``xlogx``). Every
factory returns a :class:`Loss`, a callable ``loss(yhat, y) -> Tensor``::

    >>> import plugins, torch
    >>> mse = plugins.build("loss", "mse")
    >>> round(mse(torch.tensor([0.5, 1.8, 3.3]), torch.tensor([0.6, 2.0, 3.0])).item(), 6)
    0.046667
    >>> ce = plugins.build("loss", {"name": "logitcrossentropy", "label_smoothing": 0.1})
    >>> round(ce(torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]]), torch.tensor([1, 0])).item(), 6)
    0.849485
    >>> ce.name, ce.task, ce.input
    ('logitcrossentropy', ('multiclass',), 'logits')

Layout: PyTorch's batch-first, so the class dimension is 1 (Flux's ``dims=1`` in its features x batch
layout); the class losses take ``dims`` to move it, ``dims: -1`` for a sequence model's (N, T, C)
output (Flux's ``dims=1`` on its (C, T, N) arrays, the same memory). Targets are Flux style (one-hot
or soft labels of yhat's shape) or PyTorch style (integer class indices of yhat's shape without the
class dimension), turned into one-hot here. A target that differs
from yhat only by a trailing dimension of size 1 ((N,) against (N, 1), or the reverse) is reshaped to
yhat's shape; any other mismatch raises instead of broadcasting.

``agg`` is Flux's: ``mean`` or ``sum`` over every element for elementwise losses; class losses
(crossentropy, logitcrossentropy, kldivergence, focal) first sum over the class dimension, then
aggregate over samples; ``none`` returns the unaggregated values (yhat's shape, or (N, ...) without
the class dimension for class losses). ε defaults to ``torch.finfo(yhat.dtype).eps`` (Flux's
``eps(ŷ)``). dice_coeff and tversky reduce the whole batch to one number, as in Flux (no ``agg``).

The module is longer than most because it holds one short formula per Flux loss side by side, as
Flux's ``functions.jl`` does, with the target handling they share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from retort.plugins import PluginError, alias, register

Agg = Literal["mean", "sum", "none"]

_AGG: dict[str, Callable[[Tensor], Tensor]] = {"mean": torch.mean, "sum": torch.sum, "none": lambda t: t}
_EPS = {"ϵ": "eps"}  # Flux's Greek keyword, accepted as an alias
_META: dict[str, tuple[tuple[str, ...], str]] = {}  # loss name -> (task, input), shared with the registry


class Loss(torch.nn.Module):
    """A configured loss ``loss(yhat, y) -> Tensor``, described by ``name``, ``task``, ``input``, ``config``.

    ``task`` lists the data tasks it fits ("multiclass", "binary", "regression"); ``input`` is what
    yhat must be: "logits", "probabilities" or "values". ``fn(yhat, y, name=..., **config)`` computes it.
    """

    def __init__(self, name: str, fn: Callable[..., Tensor], *, task: tuple[str, ...], input: str,
                 **config: Any):
        super().__init__()
        self.name, self.task, self.input, self.config = name, task, input, config
        self._fn = fn

    def forward(self, yhat: Tensor, y: Tensor) -> Tensor:
        yhat = torch.as_tensor(yhat)
        if not (yhat.is_floating_point() or yhat.is_complex()):
            yhat = yhat.to(torch.get_default_dtype())
        return self._fn(yhat, torch.as_tensor(y, device=yhat.device), name=self.name, **self.config)

    def extra_repr(self) -> str:
        return ", ".join([f"name={self.name!r}", *(f"{k}={v!r}" for k, v in self.config.items())])


def _loss(*, task: tuple[str, ...], input: str, aliases: dict[str, str] | None = None):
    """Register a factory under its own name with its ``task`` and ``input`` meta."""

    def deco(factory: Callable[..., Loss]) -> Callable[..., Loss]:
        _META[factory.__name__] = (task, input)
        return register("loss", aliases=aliases, task=task, input=input)(factory)

    return deco


def _make(name: str, fn: Callable[..., Tensor], **config: Any) -> Loss:
    agg = config.get("agg", "mean")
    if agg not in _AGG:
        raise PluginError(f"loss {name!r} field 'agg' must be one of {', '.join(_AGG)}, got {agg!r}",
                          field="agg")
    task, input = _META[name]
    return Loss(name, fn, task=task, input=input, **config)


def _check(name: str, field: str, value: float, ok: bool, demand: str) -> None:
    if not ok:
        raise PluginError(f"loss {name!r} field {field!r} must be {demand}, got {value!r}", field=field)


def _check_eps(name: str, eps: float | None) -> None:
    if eps is not None:
        _check(name, "eps", eps, eps >= 0, ">= 0 (or null for the machine epsilon of yhat's dtype)")


def _check_smoothing(name: str, alpha: float) -> None:
    _check(name, "label_smoothing", alpha, 0 <= alpha < 1, "in [0, 1) (0 switches smoothing off)")


# --- targets ----------------------------------------------------------------------------------

def _is_index(y: Tensor) -> bool:
    return not (y.is_floating_point() or y.is_complex())


def _class_dim(name: str, yhat: Tensor, dims: int) -> int:
    """``dims`` as a non-negative dimension of yhat, which must have classes there and a batch before."""
    if yhat.ndim < 2 or not -yhat.ndim <= dims < yhat.ndim or dims % yhat.ndim == 0:
        raise ValueError(f"{name}: yhat must hold class scores on dimension dims={dims} after the batch "
                         f"dimension, got shape {tuple(yhat.shape)}")
    return dims % yhat.ndim


def _targets(name: str, yhat: Tensor, y: Tensor, *, classes: bool = False, dim: int = 1) -> Tensor:
    """``y`` as a float tensor of yhat's shape: as is, one-hot from class indices, or reshaped.

    ``classes``: yhat has classes on dimension ``dim`` ((N, C, ...) by default), so y must be
    one-hot/soft labels or indices. Otherwise a (N,) vs (N, 1) difference is reshaped away; indices
    still become one-hot when yhat has more than one column.
    """
    if classes:
        dim = _class_dim(name, yhat, dim)
    if y.shape == yhat.shape:
        return y.to(yhat.dtype)
    index_shape = tuple(yhat.shape[:dim] + yhat.shape[dim + 1:])
    if yhat.ndim >= 2 and y.shape == index_shape and (classes or yhat.shape[1] > 1):
        if not _is_index(y):
            raise ValueError(f"{name}: class indices must be an integer tensor, got dtype {y.dtype} "
                             f"(use y.long()), or pass one-hot targets of shape {tuple(yhat.shape)}")
        return F.one_hot(y.long(), yhat.shape[dim]).movedim(-1, dim).to(yhat.dtype)
    if not classes and (y.shape == (*yhat.shape, 1) or yhat.shape == (*y.shape, 1)):
        return y.reshape(yhat.shape).to(yhat.dtype)
    if classes:
        want = f"one-hot/soft labels of shape {tuple(yhat.shape)} or class indices of shape {index_shape}"
    else:
        want = f"shape {tuple(yhat.shape)} (a trailing dimension of size 1 may differ)"
        if yhat.ndim >= 2 and yhat.shape[1] > 1:
            want += f" or class indices of shape {index_shape}"
    raise ValueError(f"{name}: yhat has shape {tuple(yhat.shape)} but y has shape {tuple(y.shape)}; "
                     f"expected y of {want}")


def _smooth(y: Tensor, alpha: float, n: int) -> Tensor:
    """Flux ``label_smoothing``: ``y(1 − α) + α/n``; n = classes, or 2 for binary labels (``dims=0``)."""
    return y * (1 - alpha) + alpha / n if alpha > 0 else y


def _eps_of(yhat: Tensor, eps: float | None) -> float:
    return torch.finfo(yhat.dtype).eps if eps is None else eps


# --- regression -------------------------------------------------------------------------------

def _mae(yhat: Tensor, y: Tensor, *, name: str, agg: str) -> Tensor:
    return _AGG[agg]((yhat - _targets(name, yhat, y)).abs())


def _mse(yhat: Tensor, y: Tensor, *, name: str, agg: str) -> Tensor:
    err = yhat - _targets(name, yhat, y)
    return _AGG[agg](err.abs() ** 2 if err.is_complex() else err**2)  # Flux's abs2


def _msle(yhat: Tensor, y: Tensor, *, name: str, agg: str, eps: float | None) -> Tensor:
    e = _eps_of(yhat, eps)
    return _AGG[agg](torch.log((yhat + e) / (_targets(name, yhat, y) + e)) ** 2)


def _huber(yhat: Tensor, y: Tensor, *, name: str, agg: str, delta: float) -> Tensor:
    err = (yhat - _targets(name, yhat, y)).abs()
    return _AGG[agg](torch.where(err < delta, 0.5 * err**2, delta * (err - 0.5 * delta)))


def _poisson(yhat: Tensor, y: Tensor, *, name: str, agg: str) -> Tensor:
    return _AGG[agg](yhat - torch.xlogy(_targets(name, yhat, y), yhat))


@_loss(task=("regression",), input="values")
def mae(*, agg: Agg = "mean") -> Loss:
    """Mean absolute error: agg(|ŷ − y|) (torch F.l1_loss)."""
    return _make("mae", _mae, agg=agg)


@_loss(task=("regression",), input="values")
def mse(*, agg: Agg = "mean") -> Loss:
    """Mean squared error: agg(|ŷ − y|²), Flux's abs2, so complex values work (torch F.mse_loss for real)."""
    return _make("mse", _mse, agg=agg)


@_loss(task=("regression",), input="values", aliases=_EPS)
def msle(*, agg: Agg = "mean", eps: float | None = None) -> Loss:
    """Mean squared log error: agg(log((ŷ + ε)/(y + ε))²), ε = eps of ŷ's dtype (not torchmetrics' log1p)."""
    _check_eps("msle", eps)
    return _make("msle", _msle, agg=agg, eps=eps)


@_loss(task=("regression",), input="values", aliases={"δ": "delta"})
def huber(*, agg: Agg = "mean", delta: float = 1.0) -> Loss:
    """Huber: agg(0.5e² if |e| < δ else δ(|e| − δ/2)), e = ŷ − y, delta δ = 1 (torch F.huber_loss)."""
    _check("huber", "delta", delta, delta > 0, "> 0")
    return _make("huber", _huber, agg=agg, delta=delta)


@_loss(task=("regression",), input="values")
def poisson(*, agg: Agg = "mean") -> Loss:
    """Poisson: agg(ŷ − y·log ŷ), ŷ a positive rate (torch F.poisson_nll_loss(log_input=False))."""
    return _make("poisson", _poisson, agg=agg)


# --- multiclass -------------------------------------------------------------------------------

def _crossentropy(yhat: Tensor, y: Tensor, *, name: str, agg: str, eps: float | None,
                  label_smoothing: float, dims: int) -> Tensor:
    y = _smooth(_targets(name, yhat, y, classes=True, dim=dims), label_smoothing, yhat.shape[dims])
    return _AGG[agg](-torch.xlogy(y, yhat + _eps_of(yhat, eps)).sum(dim=dims))


def _logitcrossentropy(yhat: Tensor, y: Tensor, *, name: str, agg: str, label_smoothing: float,
                       dims: int) -> Tensor:
    y = _smooth(_targets(name, yhat, y, classes=True, dim=dims), label_smoothing, yhat.shape[dims])
    return _AGG[agg](-(y * F.log_softmax(yhat, dim=dims)).sum(dim=dims))


def _kldivergence(yhat: Tensor, y: Tensor, *, name: str, agg: str, eps: float | None, dims: int) -> Tensor:
    y = _targets(name, yhat, y, classes=True, dim=dims)
    # Flux: agg(Σ xlogx(y)) + crossentropy(ŷ, y); one sum per sample gives the same for every agg
    return _AGG[agg]((torch.xlogy(y, y) - torch.xlogy(y, yhat + _eps_of(yhat, eps))).sum(dim=dims))


def _focal(yhat: Tensor, y: Tensor, *, name: str, agg: str, gamma: float, eps: float | None,
           dims: int) -> Tensor:
    y = _targets(name, yhat, y, classes=True, dim=dims)
    p = yhat + _eps_of(yhat, eps)
    # clamped: p may exceed 1 by ε, and a fractional γ of a negative number is NaN
    weight = (1 - p).clamp(min=0) ** gamma
    return _AGG[agg]((-y * weight * torch.log(p)).sum(dim=dims))


def _check_dims(name: str, dims: int) -> None:
    _check(name, "dims", dims, dims != 0, "a class dimension other than 0, the batch (1: (N, C, ...); "
           "-1: a sequence model's (N, T, C))")


@_loss(task=("multiclass",), input="probabilities", aliases=_EPS)
def crossentropy(*, agg: Agg = "mean", eps: float | None = None, label_smoothing: float = 0.0,
                 dims: int = 1) -> Loss:
    """Cross entropy of probabilities: agg(−Σ_c y·log(ŷ + ε)); label_smoothing 0 is off (Flux: 0 < α < 1)."""
    _check_eps("crossentropy", eps)
    _check_smoothing("crossentropy", label_smoothing)
    _check_dims("crossentropy", dims)
    return _make("crossentropy", _crossentropy, agg=agg, eps=eps, label_smoothing=label_smoothing, dims=dims)


@_loss(task=("multiclass",), input="logits")
def logitcrossentropy(*, agg: Agg = "mean", label_smoothing: float = 0.0, dims: int = 1) -> Loss:
    """Cross entropy of logits: agg(−Σ_c y·logsoftmax(ŷ)) (F.cross_entropy); label_smoothing 0 is off (Flux: 0 < α)."""
    _check_smoothing("logitcrossentropy", label_smoothing)
    _check_dims("logitcrossentropy", dims)
    return _make("logitcrossentropy", _logitcrossentropy, agg=agg, label_smoothing=label_smoothing, dims=dims)


@_loss(task=("multiclass",), input="probabilities", aliases=_EPS)
def kldivergence(*, agg: Agg = "mean", eps: float | None = None, dims: int = 1) -> Loss:
    """KL divergence of probabilities: agg(Σ_c y·log y) + crossentropy(ŷ, y) (F.kl_div, 'batchmean')."""
    _check_eps("kldivergence", eps)
    _check_dims("kldivergence", dims)
    return _make("kldivergence", _kldivergence, agg=agg, eps=eps, dims=dims)


@_loss(task=("multiclass",), input="probabilities", aliases={"γ": "gamma", **_EPS})
def focal(*, agg: Agg = "mean", gamma: float = 2.0, eps: float | None = None, dims: int = 1) -> Loss:
    """Focal loss of softmax probabilities: agg(Σ_c −y(1 − ŷ)^γ log ŷ), ŷ ← ŷ + ε, gamma γ = 2."""
    _check("focal", "gamma", gamma, gamma >= 0, ">= 0")
    _check_eps("focal", eps)
    _check_dims("focal", dims)
    return _make("focal", _focal, agg=agg, gamma=gamma, eps=eps, dims=dims)


# --- binary -----------------------------------------------------------------------------------

def _binarycrossentropy(yhat: Tensor, y: Tensor, *, name: str, agg: str, eps: float | None,
                        label_smoothing: float) -> Tensor:
    y = _smooth(_targets(name, yhat, y), label_smoothing, 2)
    e = _eps_of(yhat, eps)
    return _AGG[agg](-torch.xlogy(y, yhat + e) - torch.xlogy(1 - y, 1 - yhat + e))


def _logitbinarycrossentropy(yhat: Tensor, y: Tensor, *, name: str, agg: str,
                             label_smoothing: float) -> Tensor:
    y = _smooth(_targets(name, yhat, y), label_smoothing, 2)
    return _AGG[agg]((1 - y) * yhat - F.logsigmoid(yhat))


def _binary_focal(yhat: Tensor, y: Tensor, *, name: str, agg: str, gamma: float, eps: float | None) -> Tensor:
    y = _targets(name, yhat, y)
    # ε is added to p_t, not to ŷ as in Flux, where ŷ = 1 with y = 0 gives log(−ε) = NaN; p_t moves
    # by at most 2ε, and with 0/1 labels γ = 0 is exactly binarycrossentropy
    p_t = y * yhat + (1 - y) * (1 - yhat) + _eps_of(yhat, eps)
    return _AGG[agg]((1 - p_t).clamp(min=0) ** gamma * -torch.log(p_t))


def _hinge_targets(name: str, yhat: Tensor, y: Tensor) -> Tensor:
    labels = _is_index(y)
    y = _targets(name, yhat, y)
    return torch.where(y == 0, -1.0, y) if labels else y


def _hinge(yhat: Tensor, y: Tensor, *, name: str, agg: str) -> Tensor:
    return _AGG[agg](F.relu(1 - yhat * _hinge_targets(name, yhat, y)))


def _squared_hinge(yhat: Tensor, y: Tensor, *, name: str, agg: str) -> Tensor:
    return _AGG[agg](F.relu(1 - yhat * _hinge_targets(name, yhat, y)) ** 2)


def _dice_coeff(yhat: Tensor, y: Tensor, *, name: str, smooth: float) -> Tensor:
    y = _targets(name, yhat, y)
    return 1 - (2 * (y * yhat).sum() + smooth) / ((y**2).sum() + (yhat**2).sum() + smooth)


def _tversky(yhat: Tensor, y: Tensor, *, name: str, beta: float) -> Tensor:
    y = _targets(name, yhat, y)
    num = (y * yhat).sum() + 1
    den = (y * yhat + beta * (1 - y) * yhat + (1 - beta) * y * (1 - yhat)).sum() + 1
    return 1 - num / den


def _siamese_contrastive(yhat: Tensor, y: Tensor, *, name: str, agg: str, margin: float) -> Tensor:
    y = _targets(name, yhat, y)
    return _AGG[agg]((1 - y) * yhat**2 + y * F.relu(margin - yhat) ** 2)


@_loss(task=("binary",), input="probabilities", aliases=_EPS)
def binarycrossentropy(*, agg: Agg = "mean", eps: float | None = None, label_smoothing: float = 0.0) -> Loss:
    """Binary cross entropy of probabilities: agg(−y·log(ŷ + ε) − (1 − y)·log(1 − ŷ + ε)); label_smoothing 0: off.

    torch's F.binary_cross_entropy clamps the logs at −100 where Flux adds ε.

    ``label_smoothing`` α uses Flux's binary rule, y(1 − α) + α/2; α = 0 means none, where Flux's
    ``label_smoothing`` refuses 0.
    """
    _check_eps("binarycrossentropy", eps)
    _check_smoothing("binarycrossentropy", label_smoothing)
    return _make("binarycrossentropy", _binarycrossentropy, agg=agg, eps=eps, label_smoothing=label_smoothing)


@_loss(task=("binary",), input="logits")
def logitbinarycrossentropy(*, agg: Agg = "mean", label_smoothing: float = 0.0) -> Loss:
    """Binary cross entropy of logits: agg((1 − y)·ŷ − logσ(ŷ)) (F.binary_cross_entropy_with_logits); smoothing 0: off.

    ``label_smoothing`` α uses Flux's binary rule, y(1 − α) + α/2.
    """
    _check_smoothing("logitbinarycrossentropy", label_smoothing)
    return _make("logitbinarycrossentropy", _logitbinarycrossentropy, agg=agg,
                 label_smoothing=label_smoothing)


@_loss(task=("binary",), input="probabilities", aliases={"γ": "gamma", **_EPS})
def binary_focal(*, agg: Agg = "mean", gamma: float = 2.0, eps: float | None = None) -> Loss:
    """Binary focal loss: agg(−(1 − p_t)^γ log p_t), p_t = yŷ + (1 − y)(1 − ŷ) + ε (Flux: ŷ + ε), γ = 2."""
    _check("binary_focal", "gamma", gamma, gamma >= 0, ">= 0")
    _check_eps("binary_focal", eps)
    return _make("binary_focal", _binary_focal, agg=agg, gamma=gamma, eps=eps)


@_loss(task=("binary",), input="logits")
def hinge(*, agg: Agg = "mean") -> Loss:
    """Hinge: agg(max(0, 1 − ŷ·y)) for raw scores ŷ and y in {−1, +1}; integer labels 0 count as −1.

    Integer or bool targets have 0 mapped to −1 (so {0, 1} class indices work, and integer ±1 labels
    are unchanged); float targets are used as given, as in Flux.
    """
    return _make("hinge", _hinge, agg=agg)


@_loss(task=("binary",), input="logits")
def squared_hinge(*, agg: Agg = "mean") -> Loss:
    """Squared hinge: agg(max(0, 1 − ŷ·y)²) for raw scores ŷ and y in {−1, +1}; integer labels 0 count as −1.

    Targets are read as for ``hinge``.
    """
    return _make("squared_hinge", _squared_hinge, agg=agg)


@_loss(task=("binary",), input="probabilities")
def dice_coeff(*, smooth: float = 1.0) -> Loss:
    """Dice loss over the whole batch: 1 − (2Σyŷ + s)/(Σy² + Σŷ² + s), smooth s = 1 (no agg, as in Flux)."""
    _check("dice_coeff", "smooth", smooth, smooth >= 0, ">= 0")
    return _make("dice_coeff", _dice_coeff, smooth=smooth)


@_loss(task=("binary",), input="probabilities", aliases={"β": "beta"})
def tversky(*, beta: float = 0.7) -> Loss:
    """Tversky loss of the batch: 1 − (Σyŷ + 1)/(Σ[yŷ + β(1 − y)ŷ + (1 − β)y(1 − ŷ)] + 1), β = 0.7, no agg.

    This is the formula Flux computes (and tests): β weighs the false positives (1 − y)ŷ and 1 − β the
    false negatives y(1 − ŷ), so a larger β favours precision. (Flux's docstring describes the
    opposite weighting, FluxML/Flux.jl issue #1993.)
    """
    _check("tversky", "beta", beta, 0 <= beta <= 1, "in [0, 1]")
    return _make("tversky", _tversky, beta=beta)


@_loss(task=("binary",), input="values")
def siamese_contrastive(*, agg: Agg = "mean", margin: float = 1.0) -> Loss:
    """Contrastive loss of pair distances ŷ: agg((1 − y)ŷ² + y·max(0, m − ŷ)²), margin m = 1; y=1: unlike."""
    _check("siamese_contrastive", "margin", margin, margin >= 0, ">= 0")
    return _make("siamese_contrastive", _siamese_contrastive, agg=agg, margin=margin)


# --- sequences --------------------------------------------------------------------------------

def _ctc(yhat: Tensor, y: Tensor, *, name: str, agg: str, blank: int) -> Tensor:
    if yhat.ndim == 2:  # one sequence (T, C), as Flux takes it
        yhat, y = yhat.unsqueeze(0), y.reshape(1, -1)
    if yhat.ndim != 3 or y.ndim != 2 or len(y) != len(yhat) or not _is_index(y):
        raise ValueError(f"{name}: yhat must be (N, T, C) logits and y (N, S) integer labels padded with -1, "
                         f"got shapes {tuple(yhat.shape)} and {tuple(y.shape)} ({y.dtype})")
    n, steps, classes = yhat.shape
    log_probs = F.log_softmax(yhat, dim=-1).transpose(0, 1)  # torch takes (T, N, C)
    lengths = (y >= 0).sum(dim=1)
    per_sequence = F.ctc_loss(log_probs, y.clamp(min=0).long(), torch.full((n,), steps, dtype=torch.long),
                              lengths, blank=blank % classes, reduction="none")
    return _AGG[agg](per_sequence)


@_loss(task=("sequence",), input="logits")
def ctc(*, agg: Agg = "mean", blank: int = -1) -> Loss:
    """CTC loss of (N, T, C) logits and (N, S) labels padded with −1: agg(−log p(y|ŷ)); blank = last class (Flux).

    Flux's ctc_loss takes one (C, T) sequence with the blank last; torch's F.ctc_loss defaults to
    blank 0 and (mean reduction) divides by the label lengths, which this does not.
    """
    return _make("ctc", _ctc, agg=agg, blank=blank)


# Flux.Losses' own function names
for _short in ("huber", "poisson", "hinge", "squared_hinge", "dice_coeff", "tversky", "binary_focal", "focal",
               "siamese_contrastive", "ctc"):
    alias("loss", f"{_short}_loss", to=_short)
