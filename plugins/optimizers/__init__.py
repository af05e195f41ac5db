"""Optimizers: every Optimisers.jl rule under its Flux name, their chains, and every torch.optim class.

The Flux rules (``rules``) are ports of FluxML/Optimisers.jl ``src/rules.jl``: Flux's defaults and
Flux's update, as ``torch.optim.Optimizer`` subclasses, so torch schedulers, checkpoints and Lightning
work with them. Each config field has a canonical (torch-style) name and the Flux keyword as an alias,
and each rule answers to its Flux name too (``Adam``, ``OAdam``, ``WeightDecay``)::

    >>> from retort import plugins
    >>> plugins.resolve("optimizer", {"name": "Adam", "eta": 0.01})
    {'name': 'adam', 'lr': 0.01, 'betas': [0.9, 0.999], 'eps': 1e-08, 'weight_decay': 0.0}

Conventions shared by every Flux rule here:

- every hyperparameter, ``lr`` included, is read from ``param_groups[i]`` at every step, so torch
  lr schedulers and Lightning's LR monitor see and drive the rate the update really uses;
- ``weight_decay`` (Flux ``lambda``) is ``OptimiserChain(WeightDecay(λ), rule)``: the rule sees
  ``g + λθ`` (AdamW keeps its own λ, as in Optimisers.jl);
- parameters whose ``.grad`` is None are skipped (Flux's ``nothing`` gradient).

``{chain: [rule, ...]}`` is Optimisers.jl's ``OptimiserChain`` (``chain``): ``weight_decay``,
``sign_decay``, ``clip_grad``, ``clip_norm``, ``accum_grad`` and any rule, in any order.
``torch.optim.<ClassName>`` names every torch optimizer with torch's own defaults, and
:func:`clip_per_tensor_norm_` is Flux's ``ClipNorm`` for the loop's ``clip_norm``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from retort import plugins
from retort.plugins import PluginError, add, alias
from retort.plugins.optimizers.chain import TRANSFORMS, Chain, clip_per_tensor_norm_
from retort.plugins.optimizers.rules import (
    AdaBelief,
    AdaDelta,
    AdaGrad,
    Adam,
    AdaMax,
    AdamW,
    AMSGrad,
    Descent,
    FluxRule,
    Lion,
    Momentum,
    NAdam,
    Nesterov,
    OAdam,
    Params,
    RAdam,
    RMSProp,
    Rprop,
    SignDecay,
)

_ORIGIN = "retort.plugins.optimizers"

FLUX_RULES: dict[str, type[FluxRule]] = {
    "descent": Descent, "sgd": Descent, "momentum": Momentum, "nesterov": Nesterov, "rprop": Rprop,
    "rmsprop": RMSProp, "adam": Adam, "radam": RAdam, "adamax": AdaMax, "oadam": OAdam,
    "adagrad": AdaGrad, "adadelta": AdaDelta, "amsgrad": AMSGrad, "nadam": NAdam, "adamw": AdamW,
    "adabelief": AdaBelief, "lion": Lion, "signdecay": SignDecay,
}

for _name, _cls in {**FLUX_RULES, **TRANSFORMS}.items():
    add("optimizer", _name, _cls, aliases={k: f for f, k in _cls.keywords().items()}, origin=_ORIGIN)
    if _name != "sgd":  # Flux's name (any case is accepted; listed by `retort plugins`)
        alias("optimizer", _cls.__name__, to=_name)
alias("optimizer", "sign_decay", to="signdecay")


# --- OptimiserChain -------------------------------------------------------------------------------

def _rule_class(name: str, field: str) -> type[FluxRule]:
    factory = plugins.get("optimizer", name).factory
    if not (inspect.isclass(factory) and issubclass(factory, FluxRule)):
        raise PluginError(f"a chain links Flux rules ({', '.join(sorted({**FLUX_RULES, **TRANSFORMS}))}), "
                          f"not {name!r}", field=field)
    return factory


def _resolve_chain(resolved: dict[str, Any]) -> dict[str, Any]:
    rules = resolved["chain"]
    if not isinstance(rules, list) or not rules:
        raise PluginError(f"optimizer 'chain': chain must be a non-empty list of rules, e.g. "
                          f"[{{name: clip_norm, omega: 1.0}}, {{name: adam}}], got {rules!r}", field="chain")
    out = []
    for i, spec in enumerate(rules):
        try:
            name, _ = plugins.split_spec("optimizer", spec)
            _rule_class(name, "name")
            out.append(plugins.resolve("optimizer", spec))
        except PluginError as exc:
            raise PluginError(f"optimizer 'chain' rule {i}: {exc}",
                              field=f"chain.{i}.{exc.field}" if exc.field else f"chain.{i}") from None
    return {**resolved, "chain": out}


def chain(params: Params, *, chain: list[Any]) -> Chain:
    """Optimisers.jl OptimiserChain: each rule transforms the gradient the previous one returned, in order."""
    specs = _resolve_chain({"chain": chain})["chain"]
    return Chain(params, [(_rule_class(s["name"], "name"), {k: v for k, v in s.items() if k != "name"})
                          for s in specs])


def lr_field(section: dict[str, Any]) -> str | None:
    """The dotted field of a resolved optimizer section's learning rate: ``lr``, a chain's main rule's
    ``chain.<i>.lr`` (the rate its ``param_groups`` show), or None when it has none."""
    if section.get("name") != "chain":
        return "lr" if "lr" in section else None
    rules = section["chain"]
    main = next((i for i in reversed(range(len(rules)))
                 if not plugins.get("optimizer", rules[i]["name"]).factory.gradient_transform), len(rules) - 1)
    return f"chain.{main}.lr" if "lr" in rules[main] else None


add("optimizer", "chain", chain, origin=_ORIGIN, resolve=_resolve_chain)
alias("optimizer", "OptimiserChain", to="chain")


# --- every torch.optim optimizer, with torch's defaults --------------------------------------------

# Implementation switches, left out of the one-line doc so that it shows the hyperparameters.
_TORCH_FLAGS = {"foreach", "maximize", "capturable", "differentiable", "fused"}


def _torch_doc(name: str, cls: type) -> str:
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, params
    shown = ", ".join(f"{p.name}={p.default!r}" for p in params
                      if p.default is not p.empty and p.name not in _TORCH_FLAGS)
    return f"torch's {name}, torch defaults: {shown}"


def torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    """Every optimizer class that ``torch.optim`` exposes, by class name."""
    base = torch.optim.Optimizer
    found = {name: getattr(torch.optim, name) for name in dir(torch.optim)}
    return {name: cls for name, cls in sorted(found.items())
            if inspect.isclass(cls) and issubclass(cls, base) and cls is not base}


for _name, _cls in torch_optimizers().items():
    add("optimizer", f"torch.optim.{_name}", _cls, doc=_torch_doc(_name, _cls), origin="torch.optim")


__all__ = ["FLUX_RULES", "TRANSFORMS", "Chain", "FluxRule", "clip_per_tensor_norm_", "lr_field", "torch_optimizers"]
