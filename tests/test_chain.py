"""Optimisers.jl's OptimiserChain and its gradient transforms, against Optimisers.jl's own examples.

Reference values come from FluxML/Optimisers.jl ``src/rules.jl``: the docstring examples of
``OptimiserChain`` and ``AccumGrad`` (jldoctests, so run by its CI), and the ``apply!`` of
``WeightDecay``, ``SignDecay``, ``ClipGrad`` and ``ClipNorm`` written out by hand below.
"""

from __future__ import annotations

import math

import pytest
import torch

from retort import plugins, recipes
from retort.plugins.errors import RecipeError
from retort.plugins.optimizers import Chain, clip_per_tensor_norm_
from retort.recipes.schema import resolve


def _steps(spec, x0, grads):
    x = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in x0]
    opt = plugins.build("optimizer", spec, x)
    out = []
    for g in grads:
        for p, gi in zip(x, g):
            p.grad = torch.tensor(gi, dtype=torch.float64)
        opt.step()
        out.append([v for p in x for v in p.detach().tolist()])  # every parameter, flattened
    return out


def test_chain_docstring_example_clips_before_discounting():
    # Optimisers.jl: update(setup(OptimiserChain(ClipGrad(1.0), Descent(0.1)), (zeros(3),)), m, ([0.3, 1, 7],))
    # == ([-0.03, -0.1, -0.1],)
    spec = {"chain": [{"name": "ClipGrad", "delta": 1.0}, {"name": "Descent", "eta": 0.1}]}
    assert _steps(spec, [[0.0, 0.0, 0.0]], [[[0.3, 1.0, 7.0]]])[-1] == pytest.approx([-0.03, -0.1, -0.1])


def test_accum_grad_docstring_example():
    # Optimisers.jl AccumGrad docstring: m = (x=[1f0], y=[2f0]); OptimiserChain(AccumGrad(2), WeightDecay(0.01),
    # Descent(0.1)); after gradients (x=[33], y=[0]) the model is unchanged, after (x=[0], y=[444]) it is
    # (x = [-0.651], y = [-20.202002]): mean gradient (16.5, 222) plus 0.01·(1, 2), times 0.1.
    spec = {"chain": [{"name": "accum_grad", "n": 2}, {"name": "weight_decay", "lambda": 0.01},
                      {"name": "descent", "eta": 0.1}]}
    first, second = _steps(spec, [[1.0], [2.0]], [[[33.0], [0.0]], [[0.0], [444.0]]])
    assert first == [1.0, 2.0]
    assert second == pytest.approx([-0.651, -20.202])


def test_rules_after_accum_grad_keep_their_state_between_its_steps():
    # Optimisers.jl's chain stops at AccumGrad's `nothing`: Adam sees one gradient per n steps, so a chain
    # over 4 steps with n = 2 moves as Adam over the 2 mean gradients.
    grads = [[[1.0, -2.0]], [[3.0, 0.0]], [[-1.0, 1.0]], [[0.0, 5.0]]]
    chained = _steps({"chain": [{"name": "accum_grad", "n": 2}, "adam"]}, [[0.5, 0.5]], grads)
    plain = _steps("adam", [[0.5, 0.5]], [[[2.0, -1.0]], [[-0.5, 3.0]]])
    assert chained[0] == [0.5, 0.5] and chained[2] == chained[1]
    assert chained[1] == pytest.approx(plain[0]) and chained[3] == pytest.approx(plain[1])


def test_weight_decay_in_front_is_the_rules_own_weight_decay():
    # retort's `weight_decay` field of a rule is documented as OptimiserChain(WeightDecay(λ), rule).
    grads = [[[0.3, -0.2]], [[-0.1, 0.4]], [[0.2, 0.0]]]
    chained = _steps({"chain": [{"name": "weight_decay", "lambda": 0.1}, {"name": "adam", "eta": 0.01}]},
                     [[1.0, -2.0]], grads)
    shorthand = _steps({"name": "adam", "eta": 0.01, "weight_decay": 0.1}, [[1.0, -2.0]], grads)
    for a, b in zip(chained, shorthand):
        assert a == pytest.approx(b, rel=1e-12)
    assert chained[-1] != pytest.approx(_steps({"name": "adam", "eta": 0.01}, [[1.0, -2.0]], grads)[-1])


def test_sign_decay_then_descent_is_signdecay_with_that_lr():
    # Flux SignDecay.apply!: dx + λ·sign(x); then Descent(η): x -= η(dx + λ sign x).
    grads = [[[0.3, -0.2, 0.0]]]
    chained = _steps({"chain": [{"name": "sign_decay", "lambda": 0.5}, {"name": "descent", "eta": 0.1}]},
                     [[1.0, -2.0, 0.0]], grads)
    assert chained[-1] == pytest.approx([1.0 - 0.1 * (0.3 + 0.5), -2.0 - 0.1 * (-0.2 - 0.5), 0.0])


def test_clip_norm_scales_each_tensor_to_its_own_norm():
    # Flux ClipNorm.apply!: dx·min(ω/‖dx‖ₚ, 1), per array. [3, 4] has 2-norm 5 and 1-norm 7; [0.1] is left alone.
    two = _steps({"name": "clip_norm", "omega": 1.0}, [[0.0, 0.0], [0.0]], [[[3.0, 4.0], [0.1]]])[-1]
    assert two == pytest.approx([-0.6, -0.8, -0.1])
    one = _steps({"name": "clip_norm", "omega": 1.0, "p": 1.0}, [[0.0, 0.0]], [[[3.0, 4.0]]])[-1]
    assert one == pytest.approx([-3 / 7, -4 / 7])
    with pytest.raises(RuntimeError, match="norm nan"):
        _steps({"name": "clip_norm"}, [[0.0]], [[[math.nan]]])
    assert math.isnan(_steps({"name": "clip_norm", "throw": False}, [[0.0]], [[[math.nan]]])[-1][0])


def test_clip_norm_in_a_chain_is_the_loops_per_tensor_clip():
    w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    w.grad = torch.tensor([3.0, -4.0], dtype=torch.float64)
    clip_per_tensor_norm_([w], 0.5)
    opt = plugins.build("optimizer", {"name": "adam", "eta": 0.1}, [w])
    opt.step()
    chained = _steps({"chain": [{"name": "clip_norm", "omega": 0.5}, {"name": "adam", "eta": 0.1}]},
                     [[1.0, 2.0]], [[[3.0, -4.0]]])
    assert chained[-1] == pytest.approx(w.tolist(), rel=1e-12)


def test_any_order_a_clip_after_adam_clips_the_update():
    # Adam's first step is η·g/(|g| + ϵ) ≈ ±η; ClipGrad(1e-4) after it caps every update at 1e-4.
    out = _steps({"chain": [{"name": "adam", "eta": 0.01}, {"name": "clip_grad", "delta": 1e-4}]},
                 [[0.0, 0.0]], [[[2.0, -0.5]]])
    assert out[-1] == pytest.approx([-1e-4, 1e-4])


def test_chain_shows_and_schedules_its_main_rule():
    w = torch.zeros(2, requires_grad=True)
    opt = plugins.build("optimizer", {"chain": [{"name": "clip_norm", "omega": 1.0}, {"name": "adam", "eta": 0.5}]},
                        [w])
    assert isinstance(opt, Chain) and opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert [g[0]["omega"] for g in opt.groups_with("omega")] == [1.0]
    assert [g[0]["lr"] for g in opt.groups_with("lr")] == [0.5]  # the main rule's only
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
    for _ in range(2):
        w.grad = torch.ones(2)
        opt.step()
        sched.step()
    assert opt.main.param_groups[0]["lr"] == 0.125
    state = opt.state_dict()
    again = plugins.build("optimizer", {"chain": ["clip_norm", "adam"]}, [w])
    again.load_state_dict(state)
    assert torch.equal(again.main.state[w]["exp_avg"], opt.main.state[w]["exp_avg"])


def test_flux_rule_names_are_aliases_listed_by_retort_plugins():
    rows = {name: doc for _, name, doc, _ in plugins.describe("optimizer")}
    for flux, name in [("Adam", "adam"), ("OAdam", "oadam"), ("AdaBelief", "adabelief"), ("RMSProp", "rmsprop"),
                       ("WeightDecay", "weight_decay"), ("ClipGrad", "clip_grad"), ("ClipNorm", "clip_norm"),
                       ("AccumGrad", "accum_grad"), ("SignDecay", "signdecay"), ("OptimiserChain", "chain")]:
        assert plugins.get("optimizer", flux).name == name and flux in rows[name]
    assert plugins.get("optimizer", "sign_decay").name == "signdecay"


def test_param_groups_reach_every_rule():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    groups = [{"params": a.parameters()}, {"params": b.parameters(), "lr": 0.5}]  # generators
    opt = plugins.build("optimizer", {"chain": ["clip_norm", {"name": "descent", "eta": 0.1}]}, groups)
    assert [len(r.param_groups[1]["params"]) for r in opt.rules] == [2, 2]
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]


def test_resolve_fills_every_rules_defaults_and_names_bad_fields():
    got = plugins.resolve("optimizer", {"chain": [{"name": "ClipNorm", "ω": 1.0}, "Adam"]})
    assert got == {"name": "chain", "chain": [
        {"name": "clip_norm", "omega": 1.0, "p": 2.0, "throw": True, "lr": 1.0},
        {"name": "adam", "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}]}
    assert plugins.resolve("optimizer", {"name": "OptimiserChain", "chain": ["adam"]})["name"] == "chain"
    for spec, field in [({"chain": [{"name": "adam", "eta": -1.0}]}, "chain.0.lr"),
                        ({"chain": ["adam", "adamm"]}, "chain.1.name"),
                        ({"chain": ["torch.optim.SGD"]}, "chain.0.name"),
                        ({"chain": ["clip_grad", {"name": "accum_grad"}]}, "chain.1.n"),
                        ({"chain": []}, "chain")]:
        with pytest.raises(plugins.PluginError) as info:
            plugins.build("optimizer", spec, [torch.zeros(1, requires_grad=True)])
        assert info.value.field == field, spec


def test_recipe_chain_keeps_the_loop_shorthands_and_names_the_dotted_field():
    r = resolve({"data": "wine", "optimizer": {"chain": [{"name": "clip_norm", "omega": 1.0}, "adam"],
                                               "accumulate": 2}})
    assert r.optimizer["name"] == "chain" and r.optimizer["accumulate"] == 2
    assert r.optimizer["chain"][1]["betas"] == [0.9, 0.999]
    with pytest.raises(RecipeError) as info:
        resolve({"data": "wine", "optimizer": {"chain": ["clip_norm", {"name": "adam", "rho": 0.9}]}})
    assert info.value.field == "optimizer.chain.1.rho" and "valid fields: lr, betas" in str(info.value)


@pytest.mark.slow
def test_a_chain_trains_as_the_shorthand_does(client):
    base = {"seed": 3, "data": {"name": "wine", "batch_size": 16}, "model": {"name": "mlp", "hidden": [8]},
            "loss": "logitcrossentropy", "trainer": {"max_epochs": 2, "accelerator": "cpu"},
            "tracking": {"experiment": "chain", "checkpoint": False}}
    shorthand = {"name": "descent", "lr": 0.05, "weight_decay": 0.01, "clip_norm": 0.05, "clip_per_tensor": True}
    chained = {"chain": [{"name": "clip_norm", "omega": 0.05}, {"name": "weight_decay", "lambda": 0.01},
                         {"name": "descent", "eta": 0.05}]}
    runs = [recipes.run(resolve({**base, "optimizer": o}), quiet=True) for o in (shorthand, chained)]
    a, b = ([m.value for m in sorted(client.get_metric_history(r.run_id, "train/loss"), key=lambda m: m.step)]
            for r in runs)
    assert len(a) > 10 and a == pytest.approx(b, rel=1e-6)


def test_lr_field_names_the_main_rules_rate():
    from retort.plugins.optimizers import lr_field

    assert lr_field(plugins.resolve("optimizer", "adam")) == "lr"
    assert lr_field(plugins.resolve("optimizer", {"chain": ["clip_norm", "adam", "clip_grad"]})) == "chain.1.lr"
    assert lr_field(plugins.resolve("optimizer", {"chain": ["weight_decay"]})) == "chain.0.lr"


@pytest.mark.slow
def test_lr_find_tests_a_chains_main_rate(workdir, capsys):
    from retort.recipes.cli import main

    chain = "optimizer={chain: [{name: clip_norm, omega: 1.0}, {name: rmsprop}]}"
    code = main(["lr-find", "iris-rmsprop", "--steps", "20", "-s", chain, "--plot", "chain.png"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "optimizer.chain.1.lr: {low: " in out and (workdir / "chain.png").exists()
