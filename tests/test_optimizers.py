"""The optimizer catalogue: Flux rules against Optimisers.jl's formulas written out here in numpy.

Each reference below is a separate transcription of FluxML/Optimisers.jl ``src/rules.jl``
(``init`` and ``apply!``; ``update!`` then does ``x .-= dx′``), run on a fixed parameter vector and a
fixed gradient sequence with a sign change and zeros in it.
"""

from __future__ import annotations

import copy
import inspect
import math

import numpy as np
import pytest
import torch

from retort import plugins
from retort.plugins.optimizers import clip_per_tensor_norm_

# The last element's gradient keeps its sign for four steps then flips: momentum outweighs it there.
X0 = np.array([0.5, -1.0, 2.0, 0.0, 1.5])
GRADS = np.array([
    [0.3, -0.2, 1.0, 0.0, 1.0],
    [-0.1, -0.4, 0.5, 0.0, 0.8],
    [0.2, 0.0, -0.7, 0.1, 1.2],
    [0.0, 0.3, -0.2, -0.1, 0.9],
    [-0.5, 0.1, 0.4, 0.2, -0.3],
    [0.4, -0.6, 0.0, -0.3, -0.2],
    [0.1, -0.2, 0.3, 0.0, 1.0],
])
LR_FACTORS = [1.0, 1.0, 0.5, 0.5, 2.0, 2.0, 0.1]  # the "schedule" case's LambdaLR

# Flux's defaults, under retort's canonical field names: exactly what resolve() must fill in.
FLUX_DEFAULTS: dict[str, dict] = {
    "descent": {"lr": 0.1, "weight_decay": 0.0},
    "sgd": {"lr": 0.1, "weight_decay": 0.0},
    "momentum": {"lr": 0.01, "rho": 0.9, "weight_decay": 0.0},
    "nesterov": {"lr": 0.001, "rho": 0.9, "weight_decay": 0.0},
    "rprop": {"lr": 0.001, "etas": [0.5, 1.2], "step_sizes": [1e-6, 50.0], "weight_decay": 0.0},
    "rmsprop": {"lr": 0.001, "rho": 0.9, "eps": 1e-8, "centred": False, "weight_decay": 0.0},
    "adam": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
    "radam": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
    "adamax": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
    "oadam": {"lr": 0.001, "betas": [0.5, 0.9], "eps": 1e-8, "weight_decay": 0.0},
    "adagrad": {"lr": 0.1, "eps": 1e-8, "weight_decay": 0.0},
    "adadelta": {"lr": 1.0, "rho": 0.9, "eps": 1e-8, "weight_decay": 0.0},
    "amsgrad": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
    "nadam": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 0.001, "betas": [0.9, 0.999], "weight_decay": 0.0, "eps": 1e-8, "couple": True},
    "adabelief": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-16, "weight_decay": 0.0},
    "lion": {"lr": 0.001, "betas": [0.9, 0.999], "weight_decay": 0.0},
    "signdecay": {"lr": 1.0, "sign_decay": 1e-3, "weight_decay": 0.0},
}

# Non-default settings that move the parameters far, clamp Rprop at both bounds and rectify RAdam.
CUSTOM: dict[str, dict] = {
    "descent": {"lr": 0.05, "weight_decay": 0.01},
    "sgd": {"lr": 0.05, "weight_decay": 0.01},
    "momentum": {"lr": 0.05, "rho": 0.8, "weight_decay": 0.01},
    "nesterov": {"lr": 0.05, "rho": 0.7, "weight_decay": 0.01},
    "rprop": {"lr": 0.01, "etas": [0.4, 1.5], "step_sizes": [0.005, 0.02], "weight_decay": 0.01},
    "rmsprop": {"lr": 0.01, "rho": 0.8, "eps": 1e-6, "centred": True, "weight_decay": 0.01},
    "adam": {"lr": 0.05, "betas": [0.8, 0.95], "eps": 1e-6, "weight_decay": 0.01},
    "radam": {"lr": 0.05, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.01},
    "adamax": {"lr": 0.05, "betas": [0.8, 0.95], "eps": 1e-6, "weight_decay": 0.01},
    "oadam": {"lr": 0.05, "betas": [0.6, 0.95], "eps": 1e-6, "weight_decay": 0.01},
    "adagrad": {"lr": 0.05, "eps": 1e-6, "weight_decay": 0.01},
    "adadelta": {"lr": 0.5, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.01},
    "amsgrad": {"lr": 0.05, "betas": [0.8, 0.95], "eps": 1e-6, "weight_decay": 0.01},
    "nadam": {"lr": 0.05, "betas": [0.8, 0.95], "eps": 1e-6, "weight_decay": 0.01},
    "adamw": {"lr": 0.05, "betas": [0.8, 0.95], "weight_decay": 0.1, "eps": 1e-6, "couple": True},
    "adabelief": {"lr": 0.05, "betas": [0.8, 0.95], "eps": 1e-4, "weight_decay": 0.01},
    "lion": {"lr": 0.05, "betas": [0.8, 0.95], "weight_decay": 0.01},
    "signdecay": {"lr": 0.1, "sign_decay": 0.05, "weight_decay": 0.01},
}


# --- Optimisers.jl, transcribed: init(hp, x, eta) -> state; apply(state, x, g, eta, hp) -> (state, dx) --

def _zero(x):
    return np.zeros_like(x)


def _descent_apply(s, x, g, eta, hp):
    return s, g * eta


def _momentum_apply(v, x, g, eta, hp):
    v = hp["rho"] * v + eta * g
    return v, v


def _nesterov_apply(v, x, g, eta, hp):
    rho = hp["rho"]
    newdx = -rho**2 * v + (1 + rho) * eta * g
    return rho * v - eta * g, newdx


def _rprop_apply(state, x, dx, eta, hp):
    (l1, l2), (G1, G2) = hp["etas"], hp["step_sizes"]
    gs, etas = state
    new_eta = [min(e * l2, G2) if g * d > 0 else max(e * l1, G1) if g * d < 0 else e
               for g, e, d in zip(gs, etas, dx)]
    new_g = [0.0 if g * d < 0 else d for g, d in zip(gs, dx)]
    step = np.array([e * np.sign(g) for e, g in zip(new_eta, new_g)])
    return (new_g, new_eta), step


def _rmsprop_apply(state, x, g, eta, hp):
    rho, eps = hp["rho"], hp["eps"]
    quad, lin = state
    quad = rho * quad + (1 - rho) * g**2
    if hp["centred"]:
        lin = rho * lin + (1 - rho) * g
    return (quad, lin), g * eta / (np.sqrt(quad - lin**2) + eps)


def _adam_init(x, hp, eta):
    return _zero(x), _zero(x), tuple(hp["betas"])


def _adam_apply(state, x, g, eta, hp):
    (b1, b2), eps = hp["betas"], hp["eps"]
    mt, vt, bt = state
    mt = b1 * mt + (1 - b1) * g
    vt = b2 * vt + (1 - b2) * g**2
    dx = mt / (1 - bt[0]) / (np.sqrt(vt / (1 - bt[1])) + eps) * eta
    return (mt, vt, (bt[0] * b1, bt[1] * b2)), dx


def _radam_apply(state, x, g, eta, hp):
    (b1, b2), eps = hp["betas"], hp["eps"]
    rho_inf = 2 / (1 - b2) - 1
    mt, vt, bt, t = state
    mt = b1 * mt + (1 - b1) * g
    vt = b2 * vt + (1 - b2) * g**2
    rho = rho_inf - 2 * t * bt[1] / (1 - bt[1])
    if rho > 4:
        r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        dx = mt / (1 - bt[0]) / (np.sqrt(vt / (1 - bt[1])) + eps) * eta * r
    else:
        dx = mt / (1 - bt[0]) * eta
    return (mt, vt, (bt[0] * b1, bt[1] * b2), t + 1), dx


def _adamax_apply(state, x, g, eta, hp):
    (b1, b2), eps = hp["betas"], hp["eps"]
    mt, ut, bt = state
    mt = b1 * mt + (1 - b1) * g
    ut = np.maximum(b2 * ut, np.abs(g))
    return (mt, ut, (bt[0] * b1, bt[1] * b2)), (eta / (1 - bt[0])) * mt / (ut + eps)


def _oadam_apply(state, x, g, eta, hp):
    (b1, b2), eps = hp["betas"], hp["eps"]
    mt, vt, bt, term = state
    mt = b1 * mt + (1 - b1) * g
    vt = b2 * vt + (1 - b2) * g**2
    prev = term
    term = eta * mt / (1 - bt[0]) / (np.sqrt(vt / (1 - bt[1])) + eps)
    return (mt, vt, (bt[0] * b1, bt[1] * b2), term), 2 * term - prev


def _adagrad_apply(acc, x, g, eta, hp):
    acc = acc + g**2
    return acc, g * eta / (np.sqrt(acc) + hp["eps"])


def _adadelta_apply(state, x, g, eta, hp):
    rho, eps = hp["rho"], hp["eps"]
    acc, dacc = state
    acc = rho * acc + (1 - rho) * g**2
    dx = g * np.sqrt(dacc + eps) / np.sqrt(acc + eps)
    dacc = rho * dacc + (1 - rho) * dx**2
    return (acc, dacc), eta * dx  # eta: retort's lr on top of Flux's rule (1 = Flux)


def _amsgrad_apply(state, x, g, eta, hp):
    (b1, b2), eps = hp["betas"], hp["eps"]
    mt, vt, vhat = state
    mt = b1 * mt + (1 - b1) * g
    vt = b2 * vt + (1 - b2) * g**2
    vhat = np.maximum(vhat, vt)
    return (mt, vt, vhat), eta * mt / (np.sqrt(vhat) + eps)


def _nadam_apply(state, x, g, eta, hp):
    (b1, b2), eps = hp["betas"], hp["eps"]
    mt, vt, bt = state
    mt = b1 * mt + (1 - b1) * g
    vt = b2 * vt + (1 - b2) * g**2
    dx = (b1 * mt / (1 - b1 * bt[0]) + (1 - b1) * g / (1 - bt[0])) / (np.sqrt(vt * b2 / (1 - bt[1])) + eps)
    dx = dx * eta
    return (mt, vt, (bt[0] * b1, bt[1] * b2)), dx


def _adamw_apply(state, x, g, eta, hp):
    (b1, b2), eps, lam = hp["betas"], hp["eps"], hp["weight_decay"]
    mt, vt, bt = state
    mt = b1 * mt + (1 - b1) * g
    vt = b2 * vt + (1 - b2) * g**2
    dx = mt / (1 - bt[0]) / (np.sqrt(vt / (1 - bt[1])) + eps)
    dx2 = eta * (dx + lam * x) if hp["couple"] else eta * dx + lam * x
    return (mt, vt, (bt[0] * b1, bt[1] * b2)), dx2


def _adabelief_apply(state, x, g, eta, hp):
    (b1, b2), eps = hp["betas"], hp["eps"]
    mt, st, bt = state
    mt = b1 * mt + (1 - b1) * g
    st = b2 * st + (1 - b2) * (g - mt) ** 2 + eps
    return (mt, st, (bt[0] * b1, bt[1] * b2)), eta * mt / (1 - bt[0]) / (np.sqrt(st / (1 - bt[1])) + eps)


def _lion_apply(m, x, g, eta, hp):
    b1, b2 = hp["betas"]
    m = b2 * g + (1 - b2) * m  # sic: Optimisers.jl's Lion
    return m, eta * np.sign((b2 - b1) * g + b1 * m)


def _signdecay_apply(s, x, g, eta, hp):
    return s, eta * (g + hp["sign_decay"] * np.sign(x))  # OptimiserChain(SignDecay(λ), Descent(η))


REFERENCE = {
    "descent": (lambda x, hp, eta: None, _descent_apply),
    "sgd": (lambda x, hp, eta: None, _descent_apply),
    "momentum": (lambda x, hp, eta: _zero(x), _momentum_apply),
    "nesterov": (lambda x, hp, eta: _zero(x), _nesterov_apply),
    "rprop": (lambda x, hp, eta: ([0.0] * len(x), [eta] * len(x)), _rprop_apply),
    "rmsprop": (lambda x, hp, eta: (_zero(x), _zero(x)), _rmsprop_apply),
    "adam": (_adam_init, _adam_apply),
    "radam": (lambda x, hp, eta: (*_adam_init(x, hp, eta), 1), _radam_apply),
    "adamax": (_adam_init, _adamax_apply),
    "oadam": (lambda x, hp, eta: (*_adam_init(x, hp, eta), _zero(x)), _oadam_apply),
    "adagrad": (lambda x, hp, eta: np.full_like(x, hp["eps"]), _adagrad_apply),
    "adadelta": (lambda x, hp, eta: (_zero(x), _zero(x)), _adadelta_apply),
    "amsgrad": (lambda x, hp, eta: tuple(np.full_like(x, hp["eps"]) for _ in range(3)), _amsgrad_apply),
    "nadam": (_adam_init, _nadam_apply),
    "adamw": (_adam_init, _adamw_apply),
    "adabelief": (_adam_init, _adabelief_apply),
    "lion": (lambda x, hp, eta: _zero(x), _lion_apply),
    "signdecay": (lambda x, hp, eta: None, _signdecay_apply),
}


def reference_trajectory(name: str, hp: dict, lrs: list[float]) -> list[np.ndarray]:
    """Parameters after each step of OptimiserChain(WeightDecay(λ), rule) (AdamW: the rule alone)."""
    init, apply = REFERENCE[name]
    x = X0.copy()
    state = init(x, hp, lrs[0])
    out = []
    for g, eta in zip(GRADS, lrs):
        if name != "adamw":
            g = g + hp["weight_decay"] * x
        state, dx = apply(state, x, g, eta, hp)
        x = x - dx
        out.append(x)
    return out


def run_retort(name: str, kwargs: dict, dtype: torch.dtype, factors: list[float] | None = None):
    p = torch.nn.Parameter(torch.tensor(X0, dtype=dtype))
    opt = plugins.build("optimizer", {"name": name, **kwargs}, [p])
    sched = None
    if factors is not None:  # the scheduler writes param_groups[0]["lr"]; its final step() is past the end
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: factors[min(k, len(factors) - 1)])
    out = []
    for g in GRADS:
        p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
        if sched is not None:
            sched.step()
        out.append(p.detach().double().numpy().copy())
    return out


CASES = [(n, c) for n in FLUX_DEFAULTS for c in ("defaults", "custom", "schedule")]
CASES.append(("adamw", "decoupled"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("name", "case"), CASES)
def test_trajectory_matches_optimisers_jl(name, case, dtype):
    kwargs = {
        "defaults": {}, "custom": CUSTOM[name], "schedule": CUSTOM[name],
        "decoupled": {**CUSTOM["adamw"], "couple": False, "weight_decay": 0.02},
    }[case]
    hp = {**FLUX_DEFAULTS[name], **kwargs}
    factors = LR_FACTORS if case == "schedule" else [1.0] * len(GRADS)
    expected = reference_trajectory(name, hp, [hp["lr"] * f for f in factors])
    got = run_retort(name, kwargs, dtype, factors if case == "schedule" else None)
    tol = {"rtol": 1e-10, "atol": 1e-13} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    for step, (e, g) in enumerate(zip(expected, got), 1):
        np.testing.assert_allclose(g, e, **tol, err_msg=f"{name} {case} step {step}")
    # The trajectory must actually move, and differently from the initial point in every case.
    assert not np.allclose(got[-1], X0)


def test_every_flux_rule_has_a_trajectory_test():
    flux = {e.name for e in plugins.entries("optimizer") if e.origin == "retort.plugins.optimizers"}
    flux -= {"chain", "weight_decay", "clip_grad", "clip_norm", "accum_grad"}  # tests/test_chain.py
    assert flux == set(REFERENCE) == set(FLUX_DEFAULTS) == set(CUSTOM)
    assert {"descent", "sgd", "momentum", "nesterov", "rprop", "rmsprop", "adam", "radam", "adamax", "oadam",
            "adagrad", "adadelta", "amsgrad", "nadam", "adamw", "adabelief", "lion"} <= flux


def test_radam_rectifies_from_step_5_with_flux_threshold():
    # ρ₅ ≈ 4.99 with β₂ = 0.999: rectified in Flux (ρ > 4), not in torch (ρ > 5).
    rho_inf = 2 / (1 - 0.999) - 1
    rho = [rho_inf - 2 * t * 0.999**t / (1 - 0.999**t) for t in (4, 5)]
    assert rho[0] < 4 < rho[1] < 5
    flux = run_retort("radam", {}, torch.float64)
    p = torch.nn.Parameter(torch.tensor(X0))
    torch_opt = torch.optim.RAdam([p])
    for g in GRADS[:5]:
        p.grad = torch.tensor(g)
        torch_opt.step()
    assert not np.allclose(flux[4], p.detach().numpy(), rtol=1e-9, atol=0)


def test_float16_floors_eps_so_a_zero_gradient_is_not_nan():
    # ϵ=1e-8 rounds to 0 in Float16 and 0/(√0 + 0) is NaN; Optimisers.jl's _eps floors it at 1e-7.
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float16))
    opt = plugins.build("optimizer", "adam", [p])
    p.grad = torch.tensor([0.0, 1.0], dtype=torch.float16)
    opt.step()
    assert p[0].item() == 1.0
    assert p[1].item() == pytest.approx(0.999, abs=5e-4)


@pytest.mark.parametrize("name", sorted(FLUX_DEFAULTS))
def test_defaults_are_flux_defaults(name):
    assert plugins.resolve("optimizer", name) == {"name": name, **FLUX_DEFAULTS[name]}


def test_defaults_reach_the_param_groups():
    opt = plugins.build("optimizer", "adam", [torch.nn.Parameter(torch.zeros(2))])
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (0.001, (0.9, 0.999), 1e-8)
    assert group["weight_decay"] == 0.0
    assert plugins.resolve("optimizer", "rmsprop")["rho"] == 0.9  # Flux ρ, torch's alpha (0.99 there)


def test_flux_aliases_map_to_canonical_fields():
    spec = {"name": "adam", "eta": 0.01, "beta": [0.8, 0.9], "epsilon": 1e-6, "lambda": 0.1}
    assert plugins.resolve("optimizer", spec) == {
        "name": "adam", "lr": 0.01, "betas": [0.8, 0.9], "eps": 1e-6, "weight_decay": 0.1}
    group = plugins.build("optimizer", spec, [torch.nn.Parameter(torch.zeros(1))]).param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (0.01, (0.8, 0.9), 1e-6, 0.1)

    rprop = plugins.resolve("optimizer", {"name": "rprop", "ell": [0.3, 1.1], "gamma": [1e-5, 9.0]})
    assert (rprop["etas"], rprop["step_sizes"]) == ([0.3, 1.1], [1e-5, 9.0])
    assert plugins.resolve("optimizer", {"name": "rmsprop", "centered": True})["centred"] is True
    assert plugins.resolve("optimizer", {"name": "adadelta", "rho": 0.5})["rho"] == 0.5
    # SignDecay's own λ is the L1 strength, as in Flux.
    sign = plugins.resolve("optimizer", {"name": "signdecay", "lambda": 0.2})
    assert (sign["sign_decay"], sign["weight_decay"]) == (0.2, 0.0)
    with pytest.raises(plugins.PluginError) as err:
        plugins.resolve("optimizer", {"name": "adam", "eta": 0.1, "lr": 0.2})
    assert err.value.field == "lr"


def test_weight_decay_is_chained_before_the_rule():
    # Descent: θ -= η(g + λθ) = 2 - 0.1·(0.5 + 0.1·2) = 1.93
    p = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = plugins.build("optimizer", {"name": "descent", "lambda": 0.1}, [p])
    p.grad = torch.tensor([0.5], dtype=torch.float64)
    opt.step()
    assert p.item() == pytest.approx(1.93, abs=1e-15)
    # Adam sees g + λθ, so its first step is η·sign(g + λθ) (up to ϵ): the decay flips the step here.
    p = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = plugins.build("optimizer", {"name": "adam", "lambda": 0.5}, [p])
    p.grad = torch.tensor([-0.5], dtype=torch.float64)  # g + λθ = 0.5
    opt.step()
    assert p.item() == pytest.approx(2.0 - 0.001 * 0.5 / (0.5 + 1e-8), abs=1e-15)
    # AdamW (coupled, Optimisers.jl's default): θ -= η(a + λθ) with a = 1 - 1e-8/(0.5 + 1e-8) at step 1.
    p = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = plugins.build("optimizer", {"name": "adamw", "lambda": 0.5}, [p])
    p.grad = torch.tensor([0.5], dtype=torch.float64)
    opt.step()
    assert p.item() == pytest.approx(2.0 - 0.001 * (0.5 / (0.5 + 1e-8) + 0.5 * 2.0), abs=1e-15)


def test_momentum_equals_torch_sgd_momentum_at_constant_lr():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    grads = [torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(6)]
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    flux = plugins.build("optimizer", {"name": "momentum", "eta": 0.05, "rho": 0.8, "lambda": 0.01}, [a])
    ref = torch.optim.SGD([b], lr=0.05, momentum=0.8, weight_decay=0.01)
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        flux.step()
        ref.step()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_lr_changed_in_param_groups_mid_run_is_used():
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = plugins.build("optimizer", "descent", [p])
    p.grad = torch.tensor([1.0], dtype=torch.float64)
    opt.step()
    assert p.item() == pytest.approx(0.9, abs=1e-15)
    opt.param_groups[0]["lr"] = 0.5
    opt.step()
    assert p.item() == pytest.approx(0.4, abs=1e-15)
    # Momentum: the velocity carries the old η, as in Flux: v = 0.9·0.01 + 0.5·1, θ = 0.99 - 0.509.
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = plugins.build("optimizer", "momentum", [p])
    p.grad = torch.tensor([1.0], dtype=torch.float64)
    opt.step()
    opt.param_groups[0]["lr"] = 0.5
    opt.step()
    assert p.item() == pytest.approx(0.99 - 0.509, abs=1e-15)


def test_param_groups_each_use_their_own_settings_and_gradless_params_stay():
    a, b, c = (torch.nn.Parameter(torch.ones(2, dtype=torch.float64)) for _ in range(3))
    opt = plugins.build("optimizer", "descent", [{"params": [a], "lr": 0.5}, {"params": [b, c]}])
    a.grad = b.grad = torch.ones(2, dtype=torch.float64)
    opt.step()
    assert a.tolist() == [0.5, 0.5] and b.tolist() == [0.9, 0.9] and c.tolist() == [1.0, 1.0]
    assert not opt.state[c]


@pytest.mark.parametrize("name", sorted(FLUX_DEFAULTS))
def test_state_dict_resumes_the_same_trajectory(name):
    def fresh():
        p = torch.nn.Parameter(torch.tensor(X0))
        return p, plugins.build("optimizer", {"name": name, **CUSTOM[name]}, [p])

    p, opt = fresh()
    for g in GRADS:
        p.grad = torch.tensor(g)
        opt.step()
    q, first = fresh()
    for g in GRADS[:3]:
        q.grad = torch.tensor(g)
        first.step()
    saved = copy.deepcopy(first.state_dict())
    r, second = fresh()
    with torch.no_grad():
        r.copy_(q)
    second.load_state_dict(saved)
    for g in GRADS[3:]:
        r.grad = torch.tensor(g)
        second.step()
    torch.testing.assert_close(r, p, rtol=0, atol=0)


def test_every_torch_optim_class_is_registered_with_torch_defaults():
    base = torch.optim.Optimizer
    classes = {n for n, c in vars(torch.optim).items()
               if inspect.isclass(c) and issubclass(c, base) and c is not base}
    assert {"SGD", "Adam", "AdamW", "RMSprop", "Rprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam",
            "ASGD", "LBFGS", "SparseAdam"} <= classes
    entries = {e.name: e for e in plugins.entries("optimizer") if e.name.startswith("torch.")}
    assert set(entries) == {f"torch.optim.{n}" for n in classes}
    assert {e.origin for e in entries.values()} == {"torch.optim"}

    rms = plugins.resolve("optimizer", "torch.optim.RMSprop")
    assert (rms["lr"], rms["alpha"], rms["eps"], rms["centered"]) == (0.01, 0.99, 1e-8, False)
    adam = plugins.resolve("optimizer", "torch.optim.Adam")
    assert (adam["lr"], adam["betas"], adam["weight_decay"]) == (0.001, [0.9, 0.999], 0)
    assert plugins.resolve("optimizer", "torch.optim.AdamW")["weight_decay"] == 0.01

    p = torch.nn.Parameter(torch.zeros(2))
    opt = plugins.build("optimizer", "torch.optim.RMSprop", [p])
    assert type(opt) is torch.optim.RMSprop
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["alpha"]) == (0.01, 0.99)
    opt = plugins.build("optimizer", {"name": "torch.optim.Adam", "lr": 0.1}, [p])
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == 0.1
    assert "lr=0.01" in plugins.get("optimizer", "torch.optim.RMSprop").doc


@pytest.mark.parametrize(("name", "kwargs", "field"), [
    ("adam", {"eta": -1.0}, "lr"),
    ("momentum", {"rho": 1.0}, "rho"),
    ("rmsprop", {"rho": float("nan")}, "rho"),
    ("adam", {"beta": [0.9, 1.0]}, "betas"),
    ("lion", {"betas": [-0.1, 0.9]}, "betas"),
    ("adam", {"epsilon": 0.0}, "eps"),
    ("descent", {"lambda": -0.1}, "weight_decay"),
    ("rprop", {"ell": [1.5, 1.2]}, "etas"),
    ("rprop", {"gamma": [1.0, 0.1]}, "step_sizes"),
    ("signdecay", {"lambda": -1.0}, "sign_decay"),
])
def test_out_of_range_value_names_the_field(name, kwargs, field):
    with pytest.raises(plugins.PluginError) as err:
        plugins.build("optimizer", {"name": name, **kwargs}, [torch.nn.Parameter(torch.zeros(1))])
    assert err.value.field == field
    assert repr(field) in str(err.value)


def test_wrong_type_is_caught_by_resolve():
    with pytest.raises(plugins.PluginError) as err:
        plugins.resolve("optimizer", {"name": "adam", "eta": "fast"})
    assert err.value.field == "lr"


def test_clip_per_tensor_norm_clips_each_tensor_to_its_own_norm():
    a, b, c, d = (torch.nn.Parameter(torch.zeros(2)) for _ in range(4))
    a.grad = torch.tensor([3.0, 4.0])   # norm 5 -> scaled by 2/5
    b.grad = torch.tensor([0.6, 0.8])   # norm 1 -> unchanged (a global norm would shrink it)
    c.grad = torch.zeros(2)             # norm 0 -> unchanged, no NaN
    norms = clip_per_tensor_norm_([a, b, c, d], 2.0)
    assert [n.item() for n in norms] == pytest.approx([5.0, 1.0, 0.0])
    assert a.grad.tolist() == pytest.approx([1.2, 1.6], abs=1e-7)
    assert b.grad.tolist() == pytest.approx([0.6, 0.8], abs=1e-7)
    assert c.grad.tolist() == [0.0, 0.0] and d.grad is None

    a.grad = torch.tensor([3.0, -4.0])
    clip_per_tensor_norm_(a, 2.0, norm_type=math.inf)  # ∞-norm 4 -> halved
    assert a.grad.tolist() == [1.5, -2.0]

    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([math.inf, 1.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_per_tensor_norm_([a, b], 2.0)
    assert a.grad.tolist() == [3.0, 4.0]  # nothing clipped before the error


def test_adam_follows_flux_when_a_schedule_changes_beta_mid_run():
    # fixed β runs torch's fused kernel; a changed β hands the state to the written-out rule, whose βt
    # (the product of the β of every step so far) carries on from the kernel's step count
    hp = {**FLUX_DEFAULTS["adam"], "betas": [0.8, 0.95]}
    p = torch.nn.Parameter(torch.tensor(X0))
    opt = plugins.build("optimizer", {"name": "adam", "betas": [0.8, 0.95]}, [p])
    init, apply = REFERENCE["adam"]
    x, state = X0.copy(), init(X0, hp, hp["lr"])
    for i, g in enumerate(GRADS):
        if i == 3:
            opt.param_groups[0]["betas"] = (0.7, 0.9)
            hp["betas"] = [0.7, 0.9]
        assert ("step" in opt.state[p]) == (0 < i <= 3)  # the kernel's state until β changed
        p.grad = torch.tensor(g)
        opt.step()
        state, dx = apply(state, x, g, hp["lr"], hp)
        x = x - dx
        np.testing.assert_allclose(p.detach().numpy(), x, rtol=1e-10, atol=1e-13, err_msg=f"step {i + 1}")


# --- complex parameters (Optimisers.jl test/rules.jl "with complex numbers: Flux#1776") ---------------

# AMSGrad is left out: Flux starts its momentum at the real ϵ, which a rotation does not turn.
COMPLEX_RULES = ["adam", "rmsprop", "radam", "oadam", "adagrad", "adadelta", "nadam", "adabelief", "adamw",
                 "descent", "momentum", "nesterov"]


@pytest.mark.parametrize("name", COMPLEX_RULES)
def test_complex_trajectory_is_the_real_one_rotated(name):
    # With abs2 every rule here is equivariant under a rotation z -> e^{iφ}z of parameters and gradients
    # (|g|² does not change, linear states rotate): the complex run is the real run (checked against
    # Optimisers.jl above) times e^{iφ}. Squaring as g·g instead rotates g² by e^{2iφ} and breaks this.
    rot = (3 + 4j) / 5
    kwargs = {**CUSTOM[name], "centred": True} if name == "rmsprop" else CUSTOM[name]
    real = run_retort(name, kwargs, torch.float64)
    p = torch.nn.Parameter(torch.tensor(X0 * rot, dtype=torch.complex128))
    opt = plugins.build("optimizer", {"name": name, **kwargs}, [p])
    for step, g in enumerate(GRADS):
        p.grad = torch.tensor(g * rot, dtype=torch.complex128)
        opt.step()
        np.testing.assert_allclose(p.detach().numpy(), real[step] * rot, rtol=1e-10, atol=1e-13,
                                   err_msg=f"{name} step {step + 1}")
    for key in ("exp_avg_sq", "square_avg", "sum", "acc_delta", "max_exp_avg_sq"):
        if key in opt.state[p]:
            assert not opt.state[p][key].is_complex() and (opt.state[p][key] >= 0).all()


def test_complex_adam_first_step_divides_by_the_modulus():
    # Flux Adam, first step: m̂ = g, v̂ = abs2(g) = 25 for g = 3+4i, so dx = η·g/(5 + ϵ) = 0.001·(0.6 + 0.8i).
    # (With g·g, v̂ = -7+24i and √v̂ = 3+4i: dx would be the real 0.001.)
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.complex128))
    opt = plugins.build("optimizer", "adam", [p])
    p.grad = torch.tensor([3 + 4j], dtype=torch.complex128)
    opt.step()
    assert complex(p.detach()[0]) == pytest.approx(-0.001 * (3 + 4j) / (5 + 1e-8), rel=1e-12)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("adam", {"lr": 1e-2}), ("rmsprop", {"lr": 1e-2}), ("radam", {"lr": 1e-2}), ("oadam", {"lr": 1e-2}),
    ("adagrad", {"lr": 1e-2}), ("adadelta", {"rho": 0.9, "eps": 1e-5}), ("nadam", {"lr": 1e-2}),
    ("adabelief", {"lr": 1e-2}), ("descent", {"lr": 1e-2}), ("momentum", {"lr": 1e-2}),
    ("nesterov", {"lr": 1e-2}), ("adamw", {"lr": 1e-2}),
])
def test_complex_model_learns_conj_as_in_optimisers_jl(name, kwargs):
    # Optimisers.jl: w = 0 learns f(x) = conj(x) as f(x) = w·x from x = 1+i; loss = abs2(w·x - conj(x)),
    # 2 at the start, decreasing at each of 10 steps (Momentum, Nesterov: the first 8), below 1.9 after.
    w = torch.nn.Parameter(torch.zeros(1, dtype=torch.complex128))
    x = torch.tensor([1 + 1j], dtype=torch.complex128)

    def loss():
        return ((w * x - x.conj()).abs() ** 2).sum()

    assert float(loss()) == pytest.approx(2.0)
    opt = plugins.build("optimizer", {"name": name, **kwargs}, [w])
    last = math.inf
    for step in range(10):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
        if name in ("momentum", "nesterov") and step >= 8:
            continue
        assert float(loss()) < last
        last = float(loss())
    assert float(loss()) < 1.9
