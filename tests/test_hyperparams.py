"""Schedules of any hyperparameter, as ParameterSchedulers.jl's ``Scheduler(rule; field = schedule)``.

ParameterSchedulers' Scheduler rebuilds the rule with each scheduled field at its value for step t and
applies it, keeping the rule's state (src/scheduler.jl, ``apply!``). The references below write that
out in numpy for Flux's Momentum (``v = ρv + ηg; x -= v``, Optimisers.jl src/rules.jl).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retort import plugins
from retort.plugins.errors import RecipeError
from retort.recipes.schema import resolve

GRADS = [0.5, -0.2, 0.8, 0.1, -0.4, 0.3]


def _run(opt_spec, sched_spec, n=6, **fill):
    w = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = plugins.build("optimizer", opt_spec, [w])
    sched = plugins.build("scheduler", sched_spec, opt, **fill)
    seen = []
    for g in GRADS[:n]:
        seen.append(dict(opt.param_groups[0]))
        w.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        sched.step()
    return w.item(), seen, opt


def test_momentum_schedule_is_schedulers_momentum_rule():
    # Scheduler(Momentum, rho = s): at step t the rule is Momentum(η, ρ_t) with the velocity kept.
    # ρ_t = 0.9·(1 − 0.5·min(t, 4)/4) (retort's linear 1 → 0.5 over total 4, times the rule's ρ).
    final, seen, _ = _run({"name": "Momentum", "eta": 0.1, "rho": 0.9},
                          {"name": "Scheduler", "schedules": {"momentum": {"name": "linear", "end_factor": 0.5}}},
                          total=4)
    rhos = [0.9 * (1 - 0.5 * min(t, 4) / 4) for t in range(len(GRADS))]
    assert [s["rho"] for s in seen] == pytest.approx(rhos, rel=1e-12)
    x, v = 1.0, 0.0
    for g, rho in zip(GRADS, rhos):
        v = rho * v + 0.1 * g
        x -= v
    assert final == pytest.approx(x, rel=1e-12)
    assert seen[0]["lr"] == 0.1 and seen[-1]["lr"] == 0.1  # only ρ is scheduled


def test_lr_and_momentum_together_and_torch_sgd_momentum():
    spec = {"name": "hyperparams", "schedules": {"lr": {"name": "exp", "decay": 0.5},
                                                 "momentum": {"name": "constant", "factor": 0.5}}}
    _, seen, _ = _run({"name": "torch.optim.SGD", "lr": 0.2, "momentum": 0.8}, spec, n=3)
    assert [s["lr"] for s in seen] == pytest.approx([0.2, 0.1, 0.05])
    assert [s["momentum"] for s in seen] == pytest.approx([0.4, 0.4, 0.4])


def test_beta1_alone_and_betas_together():
    # OneCycle-style: Adam's β₁ follows a schedule, β₂ stays; `betas` scales both.
    one = {"name": "hyperparams", "schedules": {"beta1": {"name": "exp", "decay": 0.9}}}
    _, seen, _ = _run({"name": "adam"}, one, n=3)
    assert [s["betas"] for s in seen] == [pytest.approx((0.9 * 0.9**t, 0.999)) for t in range(3)]
    both = {"name": "hyperparams", "schedules": {"beta": {"name": "constant", "factor": 0.5}}}
    _, seen, _ = _run({"name": "adam"}, both, n=2)
    assert seen[1]["betas"] == pytest.approx((0.45, 0.4995))


def test_adam_with_a_beta1_schedule_matches_the_rebuilt_rule():
    # Scheduler(Adam, beta = t -> (β₁(t), 0.999)): Optimisers.jl Adam keeps βt = β^t as a running product,
    # so with β₁ changing, βt is the product of the β₁ used so far (retort's beta_t state, ported).
    betas1 = [0.9 * 0.5**t for t in range(3)]
    final, _, _ = _run({"name": "adam", "eta": 0.1},
                       {"name": "hyperparams", "schedules": {"beta1": {"name": "exp", "decay": 0.5}}}, n=3)
    x, m, v, b1t, b2t = 1.0, 0.0, 0.0, betas1[0], 0.999
    for t, g in enumerate(GRADS[:3]):
        b1 = betas1[t]
        m = b1 * m + (1 - b1) * g
        v = 0.999 * v + 0.001 * g * g
        x -= 0.1 * m / (1 - b1t) / (np.sqrt(v / (1 - b2t)) + 1e-8)
        b1t, b2t = b1t * b1, b2t * 0.999  # βt .* β, β the rule's at this step
    assert final == pytest.approx(x, rel=1e-12)


def test_weight_decay_of_a_chain_link_and_of_the_main_rule():
    chain = {"chain": [{"name": "weight_decay", "lambda": 0.1}, {"name": "descent", "eta": 0.1}]}
    spec = {"name": "hyperparams", "schedules": {"weight_decay": {"name": "exp", "decay": 0.5}}}
    final, _, opt = _run(chain, spec, n=3)
    link = opt.rules[0].param_groups[0]  # as adjust!(chain; lambda): every rule with it, each × its factor
    assert link["weight_decay"] == pytest.approx(0.1 * 0.5**3) and link["initial_weight_decay"] == 0.1
    assert opt.param_groups[0]["weight_decay"] == 0.0  # descent's own, 0 × factor
    x = 1.0
    for t, g in enumerate(GRADS[:3]):
        x -= 0.1 * (g + 0.1 * 0.5**t * x)
    assert final == pytest.approx(x, rel=1e-12)
    _, seen, _ = _run({"name": "adamw", "weight_decay": 0.01}, {**spec, "schedules": {"lambda": "constant"}}, n=1)
    assert seen[0]["weight_decay"] == 0.01


def test_unknown_or_non_numeric_hyperparameter_names_the_choices():
    w = torch.nn.Parameter(torch.zeros(1))
    for key in ("rhoo", "centred"):
        opt = plugins.build("optimizer", "rmsprop", [w])
        with pytest.raises(plugins.PluginError) as info:
            plugins.build("scheduler", {"name": "hyperparams", "schedules": {key: "constant"}}, opt)
        assert info.value.field == f"schedules.{key}"
        assert "valid choices: lr, rho, eps, weight_decay" in str(info.value)


def test_a_recipe_schedules_momentum_with_warmup_on_the_lr():
    from retort.recipes.module import RecipeModule
    from retort.recipes.runner import build

    r = resolve({"data": "wine", "model": {"name": "mlp", "hidden": [4]}, "loss": "logitcrossentropy",
                 "optimizer": {"name": "momentum", "lr": 0.1},
                 "scheduler": {"name": "hyperparams", "warmup": 2, "schedules": {
                     "momentum": {"name": "linear", "end_factor": 0.5}}},
                 "trainer": {"max_epochs": 6}})
    module = build(r).module
    assert isinstance(module, RecipeModule)
    config = module.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs, rhos = [], []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        rhos.append(opt.param_groups[0]["rho"])
        opt.step()
        sched.step()
    # warmup 0 → lr over 2 epochs, then the momentum schedule from its own t = 0 over the other 4 epochs
    assert lrs == pytest.approx([0.0, 0.05, 0.1, 0.1, 0.1, 0.1])
    assert rhos == pytest.approx([0.9, 0.9, 0.9, 0.9 * 0.875, 0.9 * 0.75, 0.9 * 0.625])
    with pytest.raises(RecipeError) as info:  # before any run exists: building is part of checking
        build(resolve({"data": "wine", "scheduler": {"name": "hyperparams", "schedules": {"lr": {"name": "nope"}}}}))
    assert info.value.field == "scheduler.schedules.lr.name"
