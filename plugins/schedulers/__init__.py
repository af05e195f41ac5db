"""Schedules: ParameterSchedulers.jl's catalogue, relative to the optimizer's values, on torch.

A schedule multiplies each param group's base learning rate (the recipe's ``optimizer.lr``, which
sweeps vary) by ``factor(t)``, where ``t`` counts the ``scheduler.step()`` calls so far. torch sets
the ``t = 0`` value when the scheduler is built, so ``factor(0)`` is the first lr used and
ParameterSchedulers' ``s(t)`` (which starts at ``t = 1``) is ``lr * factor(t - 1)``. Its absolute
start values become factors: ``exp: {decay: 0.9}`` is ``lr·0.9^t``, ``cosine`` anneals from ``lr`` to
``lr·min_factor``, ``triangle`` cycles between ``lr·min_factor`` and ``lr``::

    >>> from retort import plugins
    >>> import torch
    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> sched = plugins.build("scheduler", {"name": "cosine", "min_factor": 0.1}, opt, total=10)
    >>> lrs = []
    >>> for _ in range(3):
    ...     lrs.append(round(opt.param_groups[0]["lr"], 4))
    ...     opt.step()
    ...     sched.step()
    >>> lrs
    [0.1, 0.0978, 0.0914]

Schedules that need the run's length take ``total`` (scheduler steps in the run); retort fills a
None ``total`` at build time. Torch's own class is used where it is exactly the schedule for every
param group (StepLR, MultiStepLR, ExponentialLR, PolynomialLR); the rest are ``LambdaLR`` with the
closed form, since torch's cyclic and one-cycle classes take absolute lrs shared by all groups.

``formulas`` holds the closed forms, ``combinators`` the schedules made of schedules (Sequence, Loop,
Shifted, Shortened, reverse, symmetric, ComposedSchedule), ``hyper`` the schedules of any
hyperparameter (ParameterSchedulers' ``Scheduler``). Every schedule answers to its ParameterSchedulers
name too (``CosAnneal`` is cosine with its own default, restart=True), and every
``torch.optim.lr_scheduler`` class is registered under its torch name with torch's defaults.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from torch.optim import Optimizer, lr_scheduler
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from retort import plugins
from retort.plugins import PluginError
from retort.plugins.schedulers import combinators, formulas, hyper  # noqa: F401  (they register)
from retort.plugins.schedulers.combinators import with_warmup

# ParameterSchedulers.jl's names (any case is accepted; these are listed by `retort plugins`)
for _flux, _name in [("Step", "step"), ("Exp", "exp"), ("Poly", "poly"), ("Inv", "inv"), ("Triangle", "triangle"),
                     ("TriangleDecay2", "triangle_decay2"), ("TriangleExp", "triangle_exp"), ("Sin", "sin"),
                     ("SinDecay2", "sin_decay2"), ("SinExp", "sin_exp"), ("CosAnneal", "cosanneal"),
                     ("OneCycle", "onecycle"), ("Constant", "constant"), ("Sequence", "sequence"), ("Loop", "loop"),
                     ("Shifted", "shifted"), ("Shortened", "shortened"), ("ComposedSchedule", "composed"),
                     ("Scheduler", "hyperparams")]:
    plugins.alias("scheduler", _flux, to=_name)


# --- every torch.optim.lr_scheduler class, with torch's defaults ------------------------------------

# Resume bookkeeping and deprecated switches, not schedule settings.
_NOT_FIELDS = {"self", "optimizer", "last_epoch", "verbose"}
# torch writes its hints as strings naming typing aliases that its module does not import at run time.
_HINT_NAMES = {"Callable": Callable, "Iterable": list, "Sequence": list}


def torch_schedulers() -> dict[str, type[LRScheduler]]:
    """Every scheduler class that ``torch.optim.lr_scheduler`` exports, by class name."""
    found = {name: getattr(lr_scheduler, name) for name in lr_scheduler.__all__}
    return {name: cls for name, cls in sorted(found.items())
            if inspect.isclass(cls) and issubclass(cls, LRScheduler) and cls is not LRScheduler}


def _field_type(hint: Any) -> Any:
    """torch's hint where recipes can hold it (numbers, strings, lists); objects and callables stay Any."""
    return hint if plugins._simple(hint) else Any


def _torch_factory(name: str, cls: type[LRScheduler]) -> Callable[..., LRScheduler]:
    hints = typing.get_type_hints(cls.__init__, {**vars(lr_scheduler), **_HINT_NAMES})
    fields = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY,
                        annotation=_field_type(hints.get(p.name, Any)))
              for p in inspect.signature(cls.__init__).parameters.values() if p.name not in _NOT_FIELDS]
    if cls is ReduceLROnPlateau:
        fields.insert(0, inspect.Parameter("monitor", inspect.Parameter.KEYWORD_ONLY, default="val/loss",
                                           annotation=str))

    def factory(optimizer: Optimizer, **config: Any) -> LRScheduler:
        config.pop("monitor", None)
        if "schedulers" in config:  # SequentialLR, ChainedScheduler: specs are built here
            config["schedulers"] = [plugins.build("scheduler", s, optimizer)
                                    if isinstance(s, (str, Mapping)) else s for s in config["schedulers"]]
        try:
            return cls(optimizer=optimizer, **config)
        except ValueError as exc:
            raise PluginError(f"scheduler torch.optim.lr_scheduler.{name}: {exc}") from None

    optimizer_param = inspect.Parameter("optimizer", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    factory.__signature__ = inspect.Signature([optimizer_param, *fields])  # type: ignore[attr-defined]
    factory.__annotations__ = {p.name: p.annotation for p in fields}
    factory.__name__ = factory.__qualname__ = name
    return factory


def _torch_doc(name: str, factory: Callable[..., Any]) -> str:
    params = list(inspect.signature(factory).parameters.values())[1:]
    required = ", ".join(p.name for p in params if p.default is p.empty)
    shown = ", ".join(f"{p.name}={p.default!r}" for p in params
                      if p.default is not p.empty and p.name != "monitor")
    return f"torch's {name}" + (f", needs {required}" if required else "") + (
        f"; torch defaults: {shown}" if shown else "") + (
        "; monitor='val/loss' (retort)" if "monitor" in [p.name for p in params] else "")


for _name, _cls in torch_schedulers().items():
    _factory = _torch_factory(_name, _cls)
    plugins.add("scheduler", f"torch.optim.lr_scheduler.{_name}", _factory, doc=_torch_doc(_name, _factory),
                origin="torch.optim.lr_scheduler")


__all__ = ["torch_schedulers", "with_warmup"]
