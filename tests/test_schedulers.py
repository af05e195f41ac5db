"""Learning-rate schedules: every retort schedule's lr trajectory against ParameterSchedulers.jl's formula.

The reference functions below are transcribed from ParameterSchedulers.jl (src/ and test/): its
schedules start at t = 1 and give absolute values, so a retort schedule relative to lr = 0.1 must
produce ``[s(1), s(2), ...]`` with start values written as fractions of 0.1.
"""

import io
import itertools
import math

import pytest
import torch
from torch.optim import lr_scheduler

from retort import plugins
from retort.plugins import PluginError
from retort.plugins.schedulers import with_warmup

LR = 0.1
N = 16


# --- ParameterSchedulers.jl, transcribed ------------------------------------------------------------

def _cycle(l0, l1, g):
    return abs(l0 - l1) * g + min(l0, l1)


def _tri(t, period):
    return (2 / math.pi) * abs(math.asin(math.sin(math.pi * (t - 1) / period)))


def _sin(t, period):
    return abs(math.sin(math.pi * (t - 1) / period))


def _cos(t, period):
    return (1 + math.cos(math.pi * (t - 1) / period)) / 2


def _cosrestart(t, period):
    return (1 + math.cos(math.pi * ((t - 1) % period) / period)) / 2


def Step(start, decay, step_sizes):
    if isinstance(step_sizes, int):  # decay every step_sizes steps
        return lambda t: start * decay ** ((t - 1) // step_sizes)
    ends = list(itertools.accumulate(step_sizes))
    return lambda t: start * decay ** sum(t > e for e in ends)


def Exp(start, decay):
    return lambda t: start * decay ** (t - 1)


def Poly(start, degree, max_iter):
    # ParameterSchedulers raises a BoundsError past max_iter; retort (torch PolynomialLR) holds 0.
    return lambda t: start * (1 - (t - 1) / max_iter) ** degree if t <= max_iter else 0.0


def Inv(start, decay, degree):
    return lambda t: start / (1 + (t - 1) * decay) ** degree


def Triangle(l0, l1, period):
    return lambda t: _cycle(l0, l1, _tri(t, period))


def TriangleDecay2(l0, l1, period):
    return lambda t: _cycle(l0, l1, _tri(t, period) / 2 ** ((t - 1) // period))


def TriangleExp(l0, l1, period, decay):
    return lambda t: _cycle(l0, l1, _tri(t, period) * decay ** (t - 1))


def Sin(l0, l1, period):
    return lambda t: _cycle(l0, l1, _sin(t, period))


def SinDecay2(l0, l1, period):
    return lambda t: _cycle(l0, l1, _sin(t, period) / 2 ** ((t - 1) // period))


def SinExp(l0, l1, period, decay):
    return lambda t: _cycle(l0, l1, _sin(t, period) * decay ** (t - 1))


def CosAnneal(l0, l1, period, restart=True):
    return lambda t: _cycle(l0, l1, (_cosrestart if restart else _cos)(t, period))


def OneCycle(nsteps, maxval, startval=None, endval=None, percent_start=0.25):
    startval = maxval / 25 if startval is None else startval
    endval = maxval / 1e5 if endval is None else endval
    warmup = math.ceil(percent_start * nsteps)
    warmdown = nsteps - warmup

    def s(t):
        if t > nsteps:
            return endval
        if t <= warmup:
            return _cycle(startval, maxval, _cos(t + warmup, warmup))
        return _cycle(maxval, endval, _cos(t - warmup, warmdown))

    return s


def Constant(value):
    return lambda t: value


def Sequence(*pairs):
    """``Sequence(s1 => n1, s2 => n2, ...)``: each for its steps from its own t = 1; the last runs on."""

    def s(t):
        offset = 0
        for i, (schedule, steps) in enumerate(pairs):
            if t <= offset + steps or i == len(pairs) - 1:
                return schedule(t - offset)
            offset += steps

    return s


def Loop(f, period):
    return lambda t: f((t - 1) % period + 1)


def Shifted(schedule, offset):
    """src/complex.jl: (s::Shifted)(t) = s.schedule(t - 1 + s.offset)."""
    return lambda t: schedule(t - 1 + offset)


def Shortened(schedule, nsteps):
    """src/complex.jl: s.schedule(t) for t <= nsteps, a BoundsError past it."""
    def s(t):
        assert t <= nsteps, "BoundsError"
        return schedule(t)

    return s


def reverse(f, period):
    """src/utils.jl: reverse(f, period) = t -> f(period - t)."""
    return lambda t: f(period - t)


def symmetric(f, period):
    """src/utils.jl: symmetric(f, period) = t -> (t < period / 2) ? f(t) : f(period - t)."""
    return lambda t: f(t) if t < period / 2 else f(period - t)


def ComposedSchedule(make, parameters):
    """src/complex.jl: at t, the schedule rebuilt from parameters.(t), evaluated at t."""
    return lambda t: make(*(p(t) for p in parameters))(t)


def SequenceHeld(*pairs):
    """A Sequence whose last piece, after its steps, keeps its final value."""
    end = sum(n for _, n in pairs)
    return lambda t: Sequence(*pairs)(min(t, end))


def SequenceLooped(*pairs):
    """A Sequence whose last piece starts again after its steps (Sequence(..., Loop(last, n) => ∞))."""
    last, n = pairs[-1]
    return Sequence(*pairs[:-1], (Loop(last, n), math.inf))


def LinearLR(lr, start_factor, end_factor, total_iters):
    """torch's closed form (ParameterSchedulers has no decreasing linear schedule)."""
    return lambda t: lr * (start_factor + (end_factor - start_factor) * min(t - 1, total_iters) / total_iters)


def WarmupLinear(startlr, initlr, warmup, total_iters, schedule):
    """From ParameterSchedulers' warm-up tutorial."""
    return Sequence((Triangle(startlr, initlr, 2 * warmup), warmup), (schedule, total_iters))


# --- running a schedule ------------------------------------------------------------------------------

def make_optimizer(lr=LR):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))], lr=lr)


def trajectory(optimizer, scheduler, n=N, metrics=None):
    """The lr used by each of ``n`` optimizer steps, stepping the scheduler after each."""
    lrs = []
    for i in range(n):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step() if metrics is None else scheduler.step(metrics[i])
    return lrs


def run(spec, n=N, metrics=None, **fill):
    optimizer = make_optimizer()
    return trajectory(optimizer, plugins.build("scheduler", spec, optimizer, **fill), n, metrics)


def values(schedule, n=N):
    return [schedule(t) for t in range(1, n + 1)]


def close(expected):
    return pytest.approx(expected, rel=0, abs=1e-9)


_PLATEAU_METRICS = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9] + [0.5] * 8

CASES = [
    pytest.param({"name": "step", "step_size": 3, "decay": 0.5}, {}, values(Step(LR, 0.5, 3)), id="step"),
    pytest.param({"name": "step", "milestones": [2, 5, 9], "decay": 0.5}, {},
                 values(Step(LR, 0.5, [2, 3, 4])), id="step-milestones"),
    pytest.param({"name": "exp", "decay": 0.8}, {}, values(Exp(LR, 0.8)), id="exp"),
    pytest.param({"name": "poly", "degree": 2}, {"total": 10}, values(Poly(LR, 2, 10)), id="poly"),
    pytest.param({"name": "inv", "decay": 0.5, "degree": 2}, {}, values(Inv(LR, 0.5, 2)), id="inv"),
    pytest.param({"name": "triangle", "min_factor": 0.2, "period": 6}, {},
                 values(Triangle(0.02, LR, 6)), id="triangle"),
    pytest.param({"name": "triangle"}, {"total": 7}, values(Triangle(0.0, LR, 7)), id="triangle-total"),
    pytest.param({"name": "triangle_decay2", "min_factor": 0.1, "period": 4}, {},
                 values(TriangleDecay2(0.01, LR, 4)), id="triangle_decay2"),
    pytest.param({"name": "triangle_exp", "min_factor": 0.1, "decay": 0.8, "period": 4}, {},
                 values(TriangleExp(0.01, LR, 4, 0.8)), id="triangle_exp"),
    pytest.param({"name": "sin", "min_factor": 0.2, "period": 5}, {}, values(Sin(0.02, LR, 5)), id="sin"),
    pytest.param({"name": "sin_decay2", "period": 4}, {}, values(SinDecay2(0.0, LR, 4)), id="sin_decay2"),
    pytest.param({"name": "sin_exp", "decay": 0.9, "period": 6}, {}, values(SinExp(0.0, LR, 6, 0.9)),
                 id="sin_exp"),
    pytest.param({"name": "cosine", "min_factor": 0.1}, {"total": 10},
                 values(CosAnneal(LR, 0.01, 10, restart=False)), id="cosine"),
    pytest.param({"name": "cosine", "restart": True, "period": 4}, {"total": 100},
                 values(CosAnneal(LR, 0.0, 4, restart=True)), id="cosine-restart"),
    pytest.param({"name": "CosAnneal", "period": 4}, {"total": 100},  # Flux's name, Flux's default: restart
                 values(CosAnneal(LR, 0.0, 4)), id="cosanneal"),
    pytest.param({"name": "onecycle"}, {"total": 10}, values(OneCycle(10, LR)), id="onecycle"),  # ⌈2.5⌉ up
    pytest.param({"name": "onecycle", "start_factor": 0.1, "end_factor": 0.01, "percent_start": 0.3},
                 {"total": 10}, values(OneCycle(10, LR, 0.01, 0.001, 0.3)), id="onecycle-custom"),
    pytest.param({"name": "constant", "factor": 0.5}, {}, values(Constant(0.05)), id="constant"),
    pytest.param({"name": "linear"}, {"total": 10}, values(LinearLR(LR, 1.0, 0.0, 10)), id="linear"),
    pytest.param({"name": "linear", "start_factor": 0.0, "end_factor": 1.0}, {"total": 5},
                 values(Sequence((Triangle(0.0, LR, 10), 5), (Constant(LR), 1))), id="linear-warmup"),
    pytest.param({"name": "loop", "schedule": {"name": "exp", "decay": 0.5}, "period": 4}, {},
                 values(Loop(Exp(LR, 0.5), 4)), id="loop"),
    pytest.param({"name": "loop", "schedule": {"name": "cosine"}, "period": 5}, {},
                 values(Loop(CosAnneal(LR, 0.0, 5, restart=False), 5)), id="loop-cosine"),
    pytest.param({"name": "loop", "schedule": {"name": "step", "step_size": 2, "decay": 0.5}, "period": 5}, {},
                 values(Loop(Step(LR, 0.5, 2), 5)), id="loop-torch-steplr"),
    pytest.param({"name": "loop", "period": 5, "schedule": {
        "name": "sequence", "schedules": [{"name": "constant", "factor": 0.5}, {"name": "exp", "decay": 0.5}],
        "steps": [2]}}, {}, values(Loop(Sequence((Constant(0.05), 2), (Exp(LR, 0.5), 3)), 5)),
        id="loop-of-sequence"),
    pytest.param({"name": "sequence", "schedules": [{"name": "linear", "start_factor": 0.0, "end_factor": 1.0},
                                                    {"name": "cosine", "min_factor": 0.1}], "steps": [4, 8]}, {},
                 values(Sequence((Triangle(0.0, LR, 8), 4), (CosAnneal(LR, 0.01, 8, restart=False), 8))),
                 id="sequence"),
    pytest.param({"name": "sequence", "schedules": [{"name": "step", "step_size": 2, "decay": 0.5},
                                                    {"name": "exp", "decay": 0.9}], "steps": [5]}, {},
                 values(Sequence((Step(LR, 0.5, 2), 5), (Exp(LR, 0.9), 11))), id="sequence-torch-classes"),
    pytest.param({"name": "sequence", "schedules": [{"name": "constant", "factor": 0.5}, {"name": "poly"}],
                  "steps": [3]}, {"total": 10},
                 values(Sequence((Constant(0.05), 3), (Poly(LR, 1, 7), 7))), id="sequence-rest-of-total"),
    pytest.param({"name": "sequence", "schedules": [{"name": "constant", "factor": 0.5}, {"name": "exp", "decay": 0.5}],
                  "steps": [3, 4], "last": "hold"}, {},
                 values(SequenceHeld((Constant(0.05), 3), (Exp(LR, 0.5), 4))), id="sequence-last-holds"),
    pytest.param({"name": "Sequence", "schedules": [{"name": "constant", "factor": 0.5}, {"name": "exp", "decay": 0.5}],
                  "steps": [3, 4], "last": "loop"}, {},
                 values(SequenceLooped((Constant(0.05), 3), (Exp(LR, 0.5), 4))), id="sequence-last-loops"),
    pytest.param({"name": "Shifted", "schedule": {"name": "exp", "decay": 0.8}, "offset": 3}, {},
                 values(Shifted(Exp(LR, 0.8), 3)), id="shifted"),
    pytest.param({"name": "shifted", "schedule": {"name": "cosine"}, "offset": 5}, {"total": 11},
                 values(Shifted(CosAnneal(LR, 0.0, 15, restart=False), 5)), id="shifted-total"),
    pytest.param({"name": "Shortened", "schedule": {"name": "poly", "degree": 2}, "steps": 20}, {"total": 16},
                 values(Shortened(Poly(LR, 2, 20), 20)), id="shortened"),
    pytest.param({"name": "reverse", "schedule": {"name": "exp", "decay": 0.8}, "period": 14}, {},
                 values(reverse(Exp(LR, 0.8), 14), 12) + [LR] * 4, id="reverse"),
    pytest.param({"name": "symmetric", "schedule": {"name": "exp", "decay": 0.7}, "period": 12}, {},
                 values(symmetric(Exp(LR, 0.7), 12), 11) + [LR] * 5, id="symmetric"),
    pytest.param({"name": "ComposedSchedule", "schedule": {"name": "triangle", "period": 4, "min_factor": 0.5},
                  "parameters": {"min_factor": {"name": "exp", "decay": 0.8}}}, {},
                 values(ComposedSchedule(lambda l0: Triangle(l0, LR, 4), [Exp(0.05, 0.8)])), id="composed"),
    pytest.param({"name": "composed", "schedule": {"name": "step", "step_size": 4, "decay": 0.5},
                  "parameters": {"step_size": {"name": "linear", "start_factor": 1.0, "end_factor": 0.25}}},
                 {"total": 16},
                 values(ComposedSchedule(lambda n: Step(LR, 0.5, n), [lambda t: round(4 * (1 - 0.75 * (t - 1) / 16))])),
                 id="composed-integer-field"),
    pytest.param({"name": "hyperparams", "schedules": {"eta": {"name": "exp", "decay": 0.8}}}, {},
                 values(Exp(LR, 0.8)), id="hyperparams-lr"),
    pytest.param({"name": "plateau", "patience": 2, "factor": 0.5}, {"metrics": _PLATEAU_METRICS},
                 [0.1] * 5 + [0.05] * 5 + [0.025] * 3 + [0.0125], id="plateau"),
    pytest.param({"name": "plateau", "patience": 2, "factor": 0.5, "min_factor": 0.3},
                 {"metrics": _PLATEAU_METRICS}, [0.1] * 5 + [0.05] * 5 + [0.03] * 4, id="plateau-floor"),
]


@pytest.mark.parametrize(("spec", "fill", "expected"), CASES)
def test_schedule_follows_parameterschedulers(spec, fill, expected):
    assert run(spec, n=len(expected), **fill) == close(expected)


def test_every_retort_schedule_has_a_value_test():
    retort = {name for name in plugins.available("scheduler") if not name.startswith("torch.")}
    assert retort == {plugins.get("scheduler", case.values[0]["name"]).name for case in CASES}


def test_parameterschedulers_names_are_aliases_listed_by_retort_plugins():
    rows = {name: doc for _, name, doc, _ in plugins.describe("scheduler")}
    for flux, name in [("CosAnneal", "cosanneal"), ("TriangleDecay2", "triangle_decay2"), ("SinExp", "sin_exp"),
                       ("SinDecay2", "sin_decay2"), ("TriangleExp", "triangle_exp"), ("OneCycle", "onecycle"),
                       ("Shifted", "shifted"), ("Shortened", "shortened"), ("ComposedSchedule", "composed"),
                       ("Scheduler", "hyperparams"), ("Sequence", "sequence"), ("Loop", "loop")]:
        assert plugins.get("scheduler", flux).name == name and flux in rows[name]
    assert plugins.resolve("scheduler", "CosAnneal")["restart"] is True
    assert plugins.resolve("scheduler", "cosine")["restart"] is False


def test_composed_takes_numbers_as_constant_factors():
    spec = {"name": "composed", "schedule": {"name": "exp", "decay": 0.8}, "parameters": {"decay": 0.5}}
    assert run(spec, n=4) == close(values(Exp(LR, 0.4), 4))


def test_cases_are_long_enough():
    assert all(len(case.values[2]) >= 12 for case in CASES)


# --- warmup ------------------------------------------------------------------------------------------

def test_warmup_from_zero_then_cosine():
    optimizer = make_optimizer()
    cosine = plugins.build("scheduler", "cosine", optimizer, total=8)
    scheduler = with_warmup(optimizer, cosine, 4)
    expected = values(WarmupLinear(0.0, LR, 4, 8, CosAnneal(LR, 0.0, 8, restart=False)))
    assert trajectory(optimizer, scheduler) == close(expected)
    assert expected[:5] == close([0.0, 0.025, 0.05, 0.075, 0.1])


def test_warmup_from_a_factor_then_a_chainable_torch_scheduler():
    optimizer = make_optimizer()
    step = plugins.build("scheduler", {"name": "step", "step_size": 2, "decay": 0.5}, optimizer)
    scheduler = with_warmup(optimizer, step, 3, start_factor=0.1)
    expected = values(WarmupLinear(0.01, LR, 3, 13, Step(LR, 0.5, 2)))
    assert trajectory(optimizer, scheduler) == close(expected)
    assert expected[:6] == close([0.01, 0.04, 0.07, 0.1, 0.1, 0.05])


def test_no_warmup_returns_the_scheduler():
    optimizer = make_optimizer()
    scheduler = plugins.build("scheduler", "exp", optimizer)
    assert with_warmup(optimizer, scheduler, 0) is scheduler


def test_warmup_refuses_plateau():
    optimizer = make_optimizer()
    with pytest.raises(PluginError, match="plateau") as err:
        with_warmup(optimizer, plugins.build("scheduler", "plateau", optimizer), 3)
    assert err.value.field == "warmup"


# --- sequences -----------------------------------------------------------------------------------------

def test_sequence_is_continuous_at_its_boundaries():
    spec = {"name": "sequence", "steps": [4, 4], "schedules": [
        {"name": "linear", "start_factor": 1.0, "end_factor": 0.5},
        {"name": "linear", "start_factor": 0.5, "end_factor": 0.0}]}
    assert run(spec, n=12) == close([0.1, 0.0875, 0.075, 0.0625, 0.05, 0.0375, 0.025, 0.0125, 0, 0, 0, 0])


def test_sequence_restarts_each_schedule_at_its_own_start():
    spec = {"name": "sequence", "steps": [3, 3], "schedules": [{"name": "exp", "decay": 0.5}] * 3}
    assert run(spec, n=12) == close([0.1, 0.05, 0.025] * 3 + [0.0125, 0.00625, 0.003125])


def test_sequence_refuses_plateau():
    with pytest.raises(PluginError, match="plateau") as err:
        run({"name": "sequence", "schedules": ["exp", "plateau"], "steps": [2]})
    assert err.value.field == "schedules.1"


@pytest.mark.parametrize("spec", [
    {"name": "sequence", "steps": [2, 3], "schedules": [
        {"name": "linear", "start_factor": 0.0, "end_factor": 1.0}, {"name": "step", "step_size": 2}]},
    {"name": "loop", "period": 3, "schedule": {"name": "step", "step_size": 2, "decay": 0.5}},
])
def test_composite_schedule_resumes_from_its_state_dict(spec):
    optimizer = make_optimizer()
    scheduler = plugins.build("scheduler", spec, optimizer, total=10)
    whole = trajectory(optimizer, scheduler, n=12)

    optimizer = make_optimizer()
    scheduler = plugins.build("scheduler", spec, optimizer, total=10)
    first = trajectory(optimizer, scheduler, n=5)
    buffer = io.BytesIO()
    torch.save({"scheduler": scheduler.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    optimizer = make_optimizer()
    scheduler = plugins.build("scheduler", spec, optimizer, total=10)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    assert first + trajectory(optimizer, scheduler, n=7) == close(whole)


def test_warmup_resumes_from_its_state_dict():
    def build():
        optimizer = make_optimizer()
        return optimizer, with_warmup(optimizer, plugins.build("scheduler", "cosine", optimizer, total=6), 3)

    optimizer, scheduler = build()
    whole = trajectory(optimizer, scheduler, n=10)
    optimizer, scheduler = build()
    first = trajectory(optimizer, scheduler, n=4)
    state = (optimizer.state_dict(), scheduler.state_dict())
    optimizer, scheduler = build()
    optimizer.load_state_dict(state[0])
    scheduler.load_state_dict(state[1])
    assert first + trajectory(optimizer, scheduler, n=6) == close(whole)


# --- relative to every group's lr, and total filled at build time ------------------------------------------

def test_schedule_scales_each_param_group_from_its_own_lr():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.01}], lr=0.1)
    scheduler = plugins.build("scheduler", {"name": "cosine", "min_factor": 0.5}, optimizer, total=4)
    seen = []
    for _ in range(5):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    factors = [0.5 + 0.5 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(5)]
    assert [s[0] for s in seen] == close([0.1 * f for f in factors])
    assert [s[1] for s in seen] == close([0.01 * f for f in factors])


def test_build_fills_a_missing_total_only():
    filled = run("cosine", n=12, total=10)
    assert filled == close(values(CosAnneal(LR, 0.0, 10, restart=False), 12))
    assert run({"name": "cosine", "total": 4}, n=12, total=10) == close(
        values(CosAnneal(LR, 0.0, 4, restart=False), 12))
    assert plugins.resolve("scheduler", "onecycle")["total"] is None


@pytest.mark.parametrize("name", ["poly", "cosine", "onecycle", "linear", "triangle", "sin_exp"])
def test_missing_total_names_the_field(name):
    with pytest.raises(PluginError, match="total") as err:
        run(name)
    assert err.value.field == "total"


@pytest.mark.parametrize(("spec", "field"), [
    ({"name": "exp", "decay": -0.5}, "decay"),
    ({"name": "exp", "decay": "fast"}, "decay"),
    ({"name": "step", "step_size": 2, "decay": -1.0}, "decay"),
    ({"name": "step"}, "step_size"),
    ({"name": "step", "step_size": 2, "milestones": [3]}, "step_size"),
    ({"name": "step", "step_size": 0}, "step_size"),
    ({"name": "step", "milestones": [5, 3]}, "milestones"),
    ({"name": "inv", "degree": 0}, "degree"),
    ({"name": "triangle", "period": 0}, "period"),
    ({"name": "sin_exp", "period": 3, "decay": -0.9}, "decay"),
    ({"name": "cosine", "min_factor": 1.5, "total": 10}, "min_factor"),
    ({"name": "cosine", "period": -2}, "period"),
    ({"name": "onecycle", "percent_start": 1.0, "total": 10}, "percent_start"),
    ({"name": "linear", "start_factor": -0.1, "total": 10}, "start_factor"),
    ({"name": "constant", "factor": -1.0}, "factor"),
    ({"name": "plateau", "factor": 1.5}, "factor"),
    ({"name": "loop", "schedule": "exp", "period": 0}, "period"),
    ({"name": "loop", "period": 3}, "schedule"),
    ({"name": "sequence", "steps": [2]}, "schedules"),
    ({"name": "sequence", "schedules": ["exp", "exp"], "steps": [2, 0]}, "steps"),
    ({"name": "sequence", "schedules": ["exp", "exp"], "steps": [1, 2, 3]}, "steps"),
    ({"name": "sequence", "schedules": [{"name": "exp", "decay": -1.0}], "steps": [2]}, "schedules.0.decay"),
])
def test_bad_values_name_the_field(spec, field):
    with pytest.raises(PluginError) as err:
        run(spec)
    assert err.value.field == field
    assert field.rsplit(".", 1)[-1] in str(err.value)


# --- torch's own schedulers ----------------------------------------------------------------------------

def test_every_torch_scheduler_is_registered_with_its_origin():
    names = {n for n in lr_scheduler.__all__ if n != "LRScheduler"}
    registered = {e.name: e for e in plugins.entries("scheduler") if e.name.startswith("torch.")}
    assert set(registered) == {f"torch.optim.lr_scheduler.{n}" for n in names}
    assert {e.origin for e in registered.values()} == {"torch.optim.lr_scheduler"}


def test_torch_steplr_with_torch_defaults():
    optimizer = make_optimizer()
    scheduler = plugins.build("scheduler", {"name": "torch.optim.lr_scheduler.StepLR", "step_size": 2}, optimizer)
    assert isinstance(scheduler, lr_scheduler.StepLR)
    assert plugins.resolve("scheduler", {"name": "torch.optim.lr_scheduler.StepLR", "step_size": 2}) == {
        "name": "torch.optim.lr_scheduler.StepLR", "step_size": 2, "gamma": 0.1}
    assert trajectory(optimizer, scheduler, n=12) == close([LR * 0.1 ** (t // 2) for t in range(12)])


def test_torch_cosine_annealing_lr():
    optimizer = make_optimizer()
    scheduler = plugins.build("scheduler", {"name": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": 6},
                              optimizer)
    assert isinstance(scheduler, lr_scheduler.CosineAnnealingLR)
    assert trajectory(optimizer, scheduler, n=12) == close(values(CosAnneal(LR, 0.0, 6, restart=False), 12))


def test_torch_sequential_lr_builds_its_schedulers_from_specs():
    optimizer = make_optimizer()
    spec = {"name": "torch.optim.lr_scheduler.SequentialLR", "milestones": [2], "schedulers": [
        {"name": "torch.optim.lr_scheduler.ConstantLR", "factor": 0.5, "total_iters": 2},
        {"name": "torch.optim.lr_scheduler.ExponentialLR", "gamma": 0.5}]}
    scheduler = plugins.build("scheduler", spec, optimizer)
    assert isinstance(scheduler, lr_scheduler.SequentialLR)
    assert trajectory(optimizer, scheduler, n=5) == close([0.05, 0.05, 0.1, 0.05, 0.025])


def test_torch_required_arguments_stay_required():
    with pytest.raises(PluginError) as err:
        plugins.resolve("scheduler", "torch.optim.lr_scheduler.StepLR")
    assert err.value.field == "step_size"
    with pytest.raises(PluginError, match="Factor"):
        run({"name": "torch.optim.lr_scheduler.ReduceLROnPlateau", "factor": 2.0})


def test_plateaus_carry_the_monitored_metric():
    assert plugins.resolve("scheduler", "plateau")["monitor"] == "val/loss"
    torch_plateau = plugins.resolve("scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau")
    assert torch_plateau["monitor"] == "val/loss" and torch_plateau["patience"] == 10
