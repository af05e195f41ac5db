"""Composition of rules: Optimisers.jl's ``OptimiserChain`` and the gradient transforms made to be chained.

A chain passes each tensor's gradient through its rules in order, each rule's output being the next
one's gradient, and subtracts the last output from the parameter (Flux's ``foldl`` over ``apply!``).
``accum_grad`` returns nothing until its ``n``-th step, and then the rules after it do not run, as in
Optimisers.jl (where ``apply!`` of a chain stops at a ``nothing`` gradient)::

    >>> import torch
    >>> from retort import plugins
    >>> w = torch.zeros(3, requires_grad=True)
    >>> opt = plugins.build("optimizer", {"chain": [{"name": "clip_grad", "delta": 1.0},
    ...                                             {"name": "descent", "eta": 0.1}]}, [w])
    >>> w.grad = torch.tensor([0.3, 1.0, 7.0]); opt.step(); w.tolist()  # Optimisers.jl's docstring example
    [-0.03..., -0.1..., -0.1...]

The chain's ``param_groups`` are those of its main rule, the last rule that is not a gradient
transform (or the last rule), so schedulers and the lr monitor drive and see that rule's ``lr``;
:meth:`Chain.groups_with` finds every rule's groups holding a hyperparameter, for hyperparameter schedules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch

from retort.plugins import PluginError
from retort.plugins.optimizers.rules import FluxRule, Params


class WeightDecay(FluxRule):
    """Flux WeightDecay (L2): g + λθ, λ=5e-4; alone it is θ -= η·(g + λθ) with η=1; chain it before a rule."""

    decay_in_front = False
    gradient_transform = True

    def __init__(self, params: Params, *, weight_decay: float = 5e-4, lr: float = 1.0) -> None:
        super().__init__(params, weight_decay=weight_decay, lr=lr)

    def _update(self, state, p, g, group):
        return torch.add(g, p, alpha=group["weight_decay"]).mul_(group["lr"])


class ClipGrad(FluxRule):
    """Flux ClipGrad: each gradient element clamped to [−δ, δ], delta δ=10 (the loop's clip_value)."""

    gradient_transform = True
    flux_keywords: ClassVar[dict[str, str]] = {"delta": "δ"}

    def __init__(self, params: Params, *, delta: float = 10.0, lr: float = 1.0) -> None:
        if not delta >= 0:
            raise PluginError(f"optimizer 'clip_grad': field 'delta' must be >= 0, got {delta!r}", field="delta")
        super().__init__(params, delta=delta, lr=lr)

    def _update(self, state, p, g, group):
        return g.clamp(-group["delta"], group["delta"]).mul_(group["lr"])


class ClipNorm(FluxRule):
    """Flux ClipNorm: each tensor's gradient scaled down to p-norm ω when above it; ω=10, p=2, throw on NaN/Inf.

    Per tensor, as in Flux (the loop's ``clip_norm`` clips one global norm unless ``clip_per_tensor``).
    """

    gradient_transform = True
    flux_keywords: ClassVar[dict[str, str]] = {"omega": "ω"}

    def __init__(self, params: Params, *, omega: float = 10.0, p: float = 2.0, throw: bool = True,
                 lr: float = 1.0) -> None:
        if not omega >= 0:
            raise PluginError(f"optimizer 'clip_norm': field 'omega' must be >= 0, got {omega!r}", field="omega")
        super().__init__(params, omega=omega, p=p, throw=throw, lr=lr)

    def _update(self, state, p, g, group):
        norm = float(torch.linalg.vector_norm(g, group["p"]))
        if group["throw"] and not math.isfinite(norm):
            raise RuntimeError(f"gradient has {group['p']}-norm {norm}, for a tensor of shape {tuple(p.shape)} "
                               "(clip_norm: set throw: false to clip anyway)")
        scale = min(group["omega"] / norm, 1.0) if norm > 0 else 1.0
        return g * (scale * group["lr"])


class AccumGrad(FluxRule):
    """Flux AccumGrad: the mean of n gradients every n-th step, nothing in between (the loop's accumulate).

    Put it first in a chain: the rules after it run once per n steps, on the mean.
    """

    gradient_transform = True

    def __init__(self, params: Params, *, n: int, lr: float = 1.0) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PluginError(f"optimizer 'accum_grad': field 'n' must be an integer >= 1, got {n!r}", field="n")
        super().__init__(params, n=n, lr=lr)

    def _init_state(self, state, p, group):
        state["accum"] = torch.zeros_like(p)
        state["counter"] = 1

    def _update(self, state, p, g, group):
        n, accum = group["n"], state["accum"]
        if state["counter"] == 1:
            torch.div(g, n, out=accum)
        else:
            accum.add_(g, alpha=1 / n)
        if state["counter"] == n:
            state["counter"] = 1
            return accum * group["lr"]
        state["counter"] += 1
        return None


TRANSFORMS: dict[str, type[FluxRule]] = {
    "weight_decay": WeightDecay, "clip_grad": ClipGrad, "clip_norm": ClipNorm, "accum_grad": AccumGrad,
}


class Chain(torch.optim.Optimizer):
    """Optimisers.jl ``OptimiserChain``: each rule transforms the previous rule's output; θ -= the last one.

    ``rules`` are ``(rule class, config)`` pairs, each built on the same parameters (and groups).
    """

    def __init__(self, params: Params, rules: list[tuple[type[FluxRule], dict[str, Any]]]) -> None:
        # each rule gets its own copy of the groups; a group's params may be a generator, read once here
        params = [{**g, "params": list(g["params"])} if isinstance(g, dict) else g for g in params]

        def groups() -> list[Any]:
            return [dict(g) if isinstance(g, dict) else g for g in params]

        self.rules: list[FluxRule] = []
        for i, (cls, config) in enumerate(rules):
            try:
                self.rules.append(cls(groups(), **config))
            except PluginError as exc:  # range checks happen here: name the rule's field
                raise PluginError(f"optimizer 'chain' rule {i}: {exc}",
                                  field=f"chain.{i}.{exc.field}" if exc.field else f"chain.{i}") from None
        self.main = next((r for r in reversed(self.rules) if not r.gradient_transform), self.rules[-1])
        super().__init__(groups(), {})  # the hooks and bookkeeping of an Optimizer
        self.param_groups = self.main.param_groups
        self.defaults = self.main.defaults

    def groups_with(self, key: str) -> list[list[dict[str, Any]]]:
        """The param groups of every rule holding hyperparameter ``key``, as Optimisers.jl's ``adjust!`` of a
        chain sets every rule that has the field; ``lr`` is the main rule's only (the transforms' ``lr`` is
        the step they take alone)."""
        rules = [self.main] if key == "lr" else self.rules
        return [r.param_groups for r in rules if r.param_groups and key in r.param_groups[0]]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is None:
                    continue
                dx = p.grad
                for rule in self.rules:
                    dx = rule.transform(p, dx, rule.param_groups[i])
                    if dx is None:  # accum_grad between its steps: the rest of the chain waits
                        break
                else:
                    p.sub_(dx)
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"rules": [rule.state_dict() for rule in self.rules]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        for rule, state in zip(self.rules, state_dict["rules"]):
            rule.load_state_dict(state)

    def __repr__(self) -> str:
        return f"Chain({', '.join(type(r).__name__ for r in self.rules)})"


def clip_per_tensor_norm_(parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float,
                          norm_type: float = 2.0, error_if_nonfinite: bool = True) -> list[torch.Tensor]:
    """Flux ``ClipNorm(ω, p)``: scale each gradient tensor whose own p-norm exceeds ``max_norm`` down to it.

    Unlike ``torch.nn.utils.clip_grad_norm_`` (one norm over all tensors), every tensor is clipped
    independently: ``g *= min(ω / ‖g‖, 1)``. A non-finite norm raises, as Flux's ``throw=true``
    does, unless ``error_if_nonfinite`` is False. Returns each gradient's norm before clipping.
    """
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    norms = [torch.linalg.vector_norm(g, norm_type) for g in grads]
    if not grads:
        return norms
    # One host sync for all tensors, and none of them touched before the check.
    if error_if_nonfinite and not torch.stack([n.to(norms[0].device) for n in norms]).isfinite().all():
        bad = [i for i, n in enumerate(norms) if not torch.isfinite(n)]
        raise RuntimeError(f"gradient {bad[0]} has a non-finite {norm_type}-norm ({norms[bad[0]].item()}); "
                           "pass error_if_nonfinite=False to clip anyway")
    for g, n in zip(grads, norms):
        g.mul_((max_norm / n).clamp(max=1.0))
    return norms
