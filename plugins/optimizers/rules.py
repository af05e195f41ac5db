"""The Optimisers.jl rules under their Flux names: ports of FluxML/Optimisers.jl ``src/rules.jl``.

Each rule is a ``torch.optim.Optimizer`` whose per-tensor update is Flux's ``apply!``: :meth:`FluxRule.transform`
turns a gradient into the amount subtracted from the parameter, so a rule also works as one link of
an ``OptimiserChain`` (see ``chain``). Squared gradients are ``abs2`` (``g·conj(g)``, real), as in
Optimisers.jl, so complex parameters train (Flux#1776); the second-moment states are real tensors.

The module is longer than most because it holds one short class per Optimisers.jl rule, side by side.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch

from retort.plugins import PluginError

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]

# Canonical field -> the Flux keyword accepted as its alias (and named in error messages).
_FLUX_KEYWORDS: dict[str, str] = {
    "lr": "eta", "betas": "beta", "eps": "epsilon", "weight_decay": "lambda",
    "etas": "ell", "step_sizes": "gamma", "centred": "centered",
}


def _pair(test: Callable[[float, float], bool]) -> Callable[[Any], bool]:
    return lambda v: len(v) == 2 and test(*v)


# Field -> (test, what the test demands); values that fail (NaN included) raise PluginError.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "sign_decay": (lambda v: v >= 0, ">= 0"),
    "rho": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eps": (lambda v: v > 0, "> 0"),
    "betas": (_pair(lambda b1, b2: 0 <= b1 < 1 and 0 <= b2 < 1), "a pair, each in [0, 1)"),
    "etas": (_pair(lambda dec, inc: 0 < dec <= 1 <= inc), "a pair (decrease, increase), 0 < dec <= 1 <= inc"),
    "step_sizes": (_pair(lambda lo, hi: 0 <= lo <= hi), "a pair (min, max), 0 <= min <= max"),
}


def _eps(eps: float, p: torch.Tensor) -> float:
    """Optimisers.jl ``_eps``: in Float16 a small ϵ would round to zero, so it is floored at 1e-7."""
    return max(eps, 1e-7) if p.dtype == torch.float16 and eps != 0 else eps


class FluxRule(torch.optim.Optimizer):
    """Base of the Optimisers.jl ports: per tensor, ``g = ∇ + λθ`` then ``θ -= rule(g)``.

    A subclass sets up its per-tensor state in :meth:`_init_state` and returns Flux's ``dx′`` (the
    amount subtracted from the parameter) from :meth:`_update`, reading hyperparameters from ``group``.
    """

    # Per-rule overrides of _FLUX_KEYWORDS ("" removes an alias).
    flux_keywords: ClassVar[dict[str, str]] = {}
    # False where the rule applies weight_decay itself (AdamW) instead of Flux's WeightDecay in front.
    decay_in_front: ClassVar[bool] = True
    # True for rules that only reshape the gradient (clipping, decay, accumulation): in a chain, the
    # rule whose hyperparameters the optimizer shows is the last rule that is not one of these.
    gradient_transform: ClassVar[bool] = False

    def __init__(self, params: Params, **defaults: Any) -> None:
        for key in ("betas", "etas", "step_sizes"):
            if isinstance(defaults.get(key), list):  # recipes carry YAML lists
                defaults[key] = tuple(defaults[key])
        keywords = self.keywords()
        for field, value in defaults.items():
            if field not in _RANGES:
                continue
            test, want = _RANGES[field]
            try:
                ok = bool(test(value))
            except TypeError:
                ok = False
            if not ok:
                alias = keywords.get(field)
                named = f"{field!r} (Flux {alias!r})" if alias else repr(field)
                raise PluginError(
                    f"optimizer {type(self).__name__.lower()!r}: field {named} must be {want}, got {value!r}",
                    field=field,
                )
        super().__init__(params, defaults)

    @classmethod
    def keywords(cls) -> dict[str, str]:
        """Canonical field -> Flux keyword, for the fields this rule has."""
        fields = inspect.signature(cls.__init__).parameters
        merged = {**_FLUX_KEYWORDS, **cls.flux_keywords}
        return {f: k for f, k in merged.items() if k and f in fields}

    def _init_state(self, state: dict[str, Any], p: torch.Tensor, group: dict[str, Any]) -> None:
        """Flux's ``init(rule, x)``; stateless rules keep the default."""

    def _update(self, state: dict[str, Any], p: torch.Tensor, g: torch.Tensor,
                group: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def transform(self, p: torch.Tensor, g: torch.Tensor, group: dict[str, Any]) -> torch.Tensor | None:
        """Flux's ``apply!`` for one tensor: ``g`` -> the amount to subtract (None: nothing this step)."""
        if self.decay_in_front and group.get("weight_decay", 0) != 0:
            g = g.add(p, alpha=group["weight_decay"])
        state = self.state[p]
        if not state:
            self._init_state(state, p, group)
        return self._update(state, p, g, group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                dx = self.transform(p, p.grad, group)
                if dx is not None:
                    p.sub_(dx)
        return loss


def _abs2(g: torch.Tensor) -> torch.Tensor:
    """Julia's ``abs2``: g² for real tensors, |g|² (a real tensor) for complex ones."""
    return g.real.square() + g.imag.square() if g.is_complex() else g * g


def _real_zeros(p: torch.Tensor) -> torch.Tensor:
    """A zero state for a squared quantity: real, of the parameter's precision."""
    return torch.zeros_like(p, dtype=p.real.dtype) if p.is_complex() else torch.zeros_like(p)


def _bias_powers(state: dict[str, Any], group: dict[str, Any]) -> tuple[float, float]:
    """Flux's ``βt`` state: β at the first step, multiplied by β after each step (β^t while β is fixed)."""
    b1t, b2t = state["beta_t"]
    b1, b2 = group["betas"]
    state["beta_t"] = (b1t * b1, b2t * b2)
    return b1t, b2t


class Descent(FluxRule):
    """Flux Descent: θ -= η·g; η=0.1."""

    def __init__(self, params: Params, *, lr: float = 0.1, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay)

    def _update(self, state, p, g, group):
        return g * group["lr"]


class Momentum(FluxRule):
    """Flux Momentum: v = ρv + η·g, θ -= v; η=0.01, ρ=0.9 (= torch SGD(momentum=ρ) at constant η)."""

    def __init__(self, params: Params, *, lr: float = 0.01, rho: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, rho=rho, weight_decay=weight_decay)

    def _init_state(self, state, p, group):
        state["velocity"] = torch.zeros_like(p)

    def _update(self, state, p, g, group):
        return state["velocity"].mul_(group["rho"]).add_(g, alpha=group["lr"])


class Nesterov(FluxRule):
    """Flux Nesterov: θ -= (1+ρ)η·g − ρ²v, then v = ρv − η·g; η=0.001, ρ=0.9."""

    def __init__(self, params: Params, *, lr: float = 0.001, rho: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, rho=rho, weight_decay=weight_decay)

    def _init_state(self, state, p, group):
        state["velocity"] = torch.zeros_like(p)

    def _update(self, state, p, g, group):
        lr, rho, vel = group["lr"], group["rho"], state["velocity"]
        delta = torch.add(vel * -(rho**2), g, alpha=(1 + rho) * lr)
        vel.mul_(rho).sub_(g, alpha=lr)
        return delta


class Rprop(FluxRule):
    """Flux Rprop: θ -= s·sign(g), s ×ℓ₂ on same sign, ×ℓ₁ on a flip, within Γ; s starts at η=0.001.

    As in Flux (and torch), ``lr`` only sets each element's first step size; later changes of the
    group's ``lr`` do not reach elements that already have a step size.
    """

    def __init__(self, params: Params, *, lr: float = 0.001, etas: tuple[float, float] = (0.5, 1.2),
                 step_sizes: tuple[float, float] = (1e-6, 50.0), weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, etas=etas, step_sizes=step_sizes, weight_decay=weight_decay)

    def _init_state(self, state, p, group):
        state["prev"] = torch.zeros_like(p)
        state["step_size"] = torch.full_like(p, group["lr"])

    def _update(self, state, p, g, group):
        (dec, inc), (lo, hi) = group["etas"], group["step_sizes"]
        prod = state["prev"] * g
        size = state["step_size"]
        size = torch.where(prod > 0, (size * inc).clamp(max=hi),
                           torch.where(prod < 0, (size * dec).clamp(min=lo), size))
        state["step_size"] = size
        # After a sign change the stored gradient is zeroed, so that element does not move this step.
        state["prev"] = torch.where(prod < 0, torch.zeros_like(g), g)
        return size * state["prev"].sign()


class RMSProp(FluxRule):
    """Flux RMSProp: s = ρs + (1−ρ)g², θ -= η·g/(√(s − m²) + ϵ), m=0 unless centred; η=0.001, ρ=0.9."""

    def __init__(self, params: Params, *, lr: float = 0.001, rho: float = 0.9, eps: float = 1e-8,
                 centred: bool = False, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, rho=rho, eps=eps, centred=centred, weight_decay=weight_decay)

    def _init_state(self, state, p, group):
        state["square_avg"] = _real_zeros(p)
        if group["centred"]:
            state["grad_avg"] = torch.zeros_like(p)

    def _update(self, state, p, g, group):
        rho, quad = group["rho"], state["square_avg"]
        quad.mul_(rho).add_(_abs2(g), alpha=1 - rho)
        if group["centred"]:
            lin = state["grad_avg"].mul_(rho).add_(g, alpha=1 - rho)
            denom = (quad - _abs2(lin)).sqrt_()
        else:
            denom = quad.sqrt()
        return g * group["lr"] / denom.add_(_eps(group["eps"], p))


def _adam_init(state: dict[str, Any], p: torch.Tensor, group: dict[str, Any]) -> None:
    state["exp_avg"] = torch.zeros_like(p)
    state["exp_avg_sq"] = _real_zeros(p)
    state["beta_t"] = tuple(group["betas"])


def _adam_moments(state: dict[str, Any], g: torch.Tensor, group: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    b1, b2 = group["betas"]
    mt = state["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
    vt = state["exp_avg_sq"].mul_(b2).add_(_abs2(g), alpha=1 - b2)
    return mt, vt


class Adam(FluxRule):
    """Flux Adam: θ -= η·m̂/(√v̂ + ϵ) with bias-corrected moments; η=0.001, β=(0.9, 0.999), ϵ=1e-8."""

    def __init__(self, params: Params, *, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self._start_betas: list[tuple[float, float]] = []  # each group's β when added: the fused kernel's
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    _init_state = staticmethod(_adam_init)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._start_betas.append(tuple(self.param_groups[-1]["betas"]))

    def _update(self, state, p, g, group):
        if "beta_t" not in state:  # the fused kernel ran so far, at the starting β
            b1, b2 = self._start_betas[self.param_groups.index(group)]
            t = int(state.pop("step"))
            state["beta_t"] = (b1 ** (t + 1), b2 ** (t + 1))
        b1t, b2t = _bias_powers(state, group)
        mt, vt = _adam_moments(state, g, group)
        denom = (vt / (1 - b2t)).sqrt_().add_(_eps(group["eps"], p))
        return mt / (1 - b1t) / denom * group["lr"]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        # At fixed β Flux's Adam is torch's (WeightDecay in front = torch's L2 weight_decay): run torch's fused
        # kernel, 3x faster a step than the rule written out. Float16 (Flux floors ϵ), complex, sparse, β changed
        # by a schedule, or a state from the written-out rule: the rule as written.
        if not self._fits_kernel():
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        from torch.optim.adam import adam

        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if not self.state[p]:
                    self.state[p].update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p),
                                         step=torch.zeros((), dtype=torch.float32, device=p.device))
            states = [self.state[p] for p in params]
            b1, b2 = group["betas"]
            adam(params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                 [], [s["step"] for s in states], fused=True, amsgrad=False, beta1=b1, beta2=b2, lr=group["lr"],
                 weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)
        return loss

    def _fits_kernel(self) -> bool:
        for group, start in zip(self.param_groups, self._start_betas):
            if tuple(group["betas"]) != start:
                return False
            for p in group["params"]:
                if p.grad is None:
                    continue
                if (p.dtype not in (torch.float32, torch.float64, torch.bfloat16) or p.grad.is_sparse
                        or p.device.type not in ("cpu", "cuda") or "beta_t" in self.state[p]):
                    return False
        return True


class RAdam(FluxRule):
    """Flux RAdam: rectified Adam once ρₜ > 4 (torch: 5), momentum SGD before; η=0.001, β=(0.9, 0.999)."""

    def __init__(self, params: Params, *, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _init_state(self, state, p, group):
        _adam_init(state, p, group)
        state["step"] = 1

    def _update(self, state, p, g, group):
        b2 = group["betas"][1]
        rho_inf = 2 / (1 - b2) - 1
        t = state["step"]
        state["step"] = t + 1
        b1t, b2t = _bias_powers(state, group)
        mt, vt = _adam_moments(state, g, group)
        rho = rho_inf - 2 * t * b2t / (1 - b2t)
        if rho > 4:
            r = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5
            denom = (vt / (1 - b2t)).sqrt_().add_(_eps(group["eps"], p))
            return mt / (1 - b1t) / denom * (group["lr"] * r)
        return mt / (1 - b1t) * group["lr"]


class AdaMax(FluxRule):
    """Flux AdaMax: u = max(β₂u, |g|), θ -= η/(1−β₁ᵗ)·m/(u + ϵ); η=0.001 (torch 0.002), β=(0.9, 0.999)."""

    def __init__(self, params: Params, *, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _init_state(self, state, p, group):
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_inf"] = torch.zeros_like(p)
        state["beta_t"] = tuple(group["betas"])

    def _update(self, state, p, g, group):
        b1, b2 = group["betas"]
        b1t, _ = _bias_powers(state, group)
        mt = state["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
        ut = state["exp_inf"]
        torch.maximum(ut * b2, g.abs(), out=ut)
        return mt / (ut + _eps(group["eps"], p)) * (group["lr"] / (1 - b1t))


class OAdam(FluxRule):
    """Flux OAdam (optimistic Adam): a = Adam step, θ -= 2a − a_prev; η=0.001, β=(0.5, 0.9), ϵ=1e-8."""

    def __init__(self, params: Params, *, lr: float = 0.001, betas: tuple[float, float] = (0.5, 0.9),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _init_state(self, state, p, group):
        _adam_init(state, p, group)
        state["term"] = torch.zeros_like(p)

    def _update(self, state, p, g, group):
        b1t, b2t = _bias_powers(state, group)
        mt, vt = _adam_moments(state, g, group)
        prev = state["term"]
        denom = (vt / (1 - b2t)).sqrt_().add_(_eps(group["eps"], p))
        term = mt * group["lr"] / (1 - b1t) / denom
        state["term"] = term
        return 2 * term - prev


class AdaGrad(FluxRule):
    """Flux AdaGrad: s += g² (s starts at ϵ), θ -= η·g/(√s + ϵ); η=0.1 (torch 0.01), ϵ=1e-8."""

    def __init__(self, params: Params, *, lr: float = 0.1, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay)

    def _init_state(self, state, p, group):
        state["sum"] = _real_zeros(p).add_(group["eps"])

    def _update(self, state, p, g, group):
        acc = state["sum"].add_(_abs2(g))
        return g * group["lr"] / (acc.sqrt() + _eps(group["eps"], p))


class AdaDelta(FluxRule):
    """Flux AdaDelta: θ -= η·g·√(Δ + ϵ)/√(s + ϵ), s and Δ running means of g² and step²; ρ=0.9, ϵ=1e-8, η=1.

    Flux's AdaDelta has no learning rate; ``lr`` (default 1, which is Flux's rule) scales the step
    after it has entered Δ, as torch's Adadelta does, so that schedulers have something to drive.
    """

    def __init__(self, params: Params, *, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)

    def _init_state(self, state, p, group):
        state["square_avg"] = _real_zeros(p)
        state["acc_delta"] = _real_zeros(p)

    def _update(self, state, p, g, group):
        rho, eps = group["rho"], _eps(group["eps"], p)
        acc = state["square_avg"].mul_(rho).add_(_abs2(g), alpha=1 - rho)
        step = g * (state["acc_delta"] + eps).sqrt_() / (acc + eps).sqrt_()
        state["acc_delta"].mul_(rho).add_(_abs2(step), alpha=1 - rho)
        return step.mul_(group["lr"])


class AMSGrad(FluxRule):
    """Flux AMSGrad: v̂ = max(v̂, v), θ -= η·m/(√v̂ + ϵ), no bias correction, states start at ϵ; η=0.001."""

    def __init__(self, params: Params, *, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _init_state(self, state, p, group):
        state["exp_avg"] = torch.full_like(p, group["eps"])
        for key in ("exp_avg_sq", "max_exp_avg_sq"):
            state[key] = _real_zeros(p).add_(group["eps"])

    def _update(self, state, p, g, group):
        mt, vt = _adam_moments(state, g, group)
        vhat = state["max_exp_avg_sq"]
        torch.maximum(vhat, vt, out=vhat)
        return mt * group["lr"] / (vhat.sqrt() + _eps(group["eps"], p))


class NAdam(FluxRule):
    """Flux NAdam: Adam with a Nesterov look-ahead, no momentum-decay schedule (torch's has); η=0.001."""

    def __init__(self, params: Params, *, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    _init_state = staticmethod(_adam_init)

    def _update(self, state, p, g, group):
        b1, b2 = group["betas"]
        b1t, b2t = _bias_powers(state, group)
        mt, vt = _adam_moments(state, g, group)
        num = mt * (b1 / (1 - b1 * b1t)) + g * ((1 - b1) / (1 - b1t))
        denom = (vt * b2 / (1 - b2t)).sqrt_().add_(_eps(group["eps"], p))
        return num / denom * group["lr"]


class AdamW(FluxRule):
    """Flux AdamW: θ -= η·(a + λθ), a = Adam step at η=1 (couple=False: η·a + λθ); η=0.001, λ=0 (torch 0.01).

    As in Optimisers.jl, λ belongs to the rule (it is not Flux's WeightDecay in front of Adam), and
    ϵ is used as given, without the Float16 floor of the other rules.
    """

    decay_in_front = False

    def __init__(self, params: Params, *, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, eps: float = 1e-8, couple: bool = True) -> None:
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, couple=couple)

    _init_state = staticmethod(_adam_init)

    def _update(self, state, p, g, group):
        lr, lam = group["lr"], group["weight_decay"]
        b1t, b2t = _bias_powers(state, group)
        mt, vt = _adam_moments(state, g, group)
        adam = mt / (1 - b1t) / (vt / (1 - b2t)).sqrt_().add_(group["eps"])
        if group["couple"]:
            return adam.add_(p, alpha=lam).mul_(lr)
        return adam.mul_(lr).add_(p, alpha=lam)


class AdaBelief(FluxRule):
    """Flux AdaBelief: s = β₂s + (1−β₂)(g − m)² + ϵ, θ -= η·m̂/(√ŝ + ϵ); η=0.001, β=(0.9, 0.999), ϵ=1e-16."""

    def __init__(self, params: Params, *, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-16, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    _init_state = staticmethod(_adam_init)

    def _update(self, state, p, g, group):
        b1, b2 = group["betas"]
        eps = _eps(group["eps"], p)
        b1t, b2t = _bias_powers(state, group)
        mt = state["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
        diff = g - mt
        st = state["exp_avg_sq"].mul_(b2).add_(_abs2(diff), alpha=1 - b2).add_(eps)
        return mt * group["lr"] / (1 - b1t) / ((st / (1 - b2t)).sqrt_() + eps)


class Lion(FluxRule):
    """Flux Lion: m = β₂g + (1−β₂)m, θ -= η·sign((β₂−β₁)g + β₁m); η=0.001, β=(0.9, 0.999).

    The momentum update is Optimisers.jl's as written, with β₂ weighting the new gradient (the Lion
    paper weights the old momentum by β₂); it is ported exactly so that Flux recipes reproduce.
    """

    def __init__(self, params: Params, *, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay)

    def _init_state(self, state, p, group):
        state["exp_avg"] = torch.zeros_like(p)

    def _update(self, state, p, g, group):
        b1, b2 = group["betas"]
        m = state["exp_avg"].mul_(1 - b2).add_(g, alpha=b2)
        return torch.add(g * (b2 - b1), m, alpha=b1).sign_().mul_(group["lr"])


class SignDecay(FluxRule):
    """Flux SignDecay (L1) then Descent: θ -= η·(g + λ·sign θ); λ=1e-3, η=1 (Flux's SignDecay alone)."""

    gradient_transform = True
    flux_keywords: ClassVar[dict[str, str]] = {"sign_decay": "lambda", "weight_decay": ""}

    def __init__(self, params: Params, *, lr: float = 1.0, sign_decay: float = 1e-3,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, sign_decay=sign_decay, weight_decay=weight_decay)

    def _update(self, state, p, g, group):
        return torch.add(g, p.sgn(), alpha=group["sign_decay"]).mul_(group["lr"])
