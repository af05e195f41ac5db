"""Registries of retort's plugins: a plugin is a name, a one-line doc and a factory.

Seven kinds, each a dict from name to :class:`Entry`. A factory's leading positional parameters are
what retort supplies at build time (``ARITY`` per kind: an optimizer gets the model's parameters, a
scheduler the optimizer, a model and a metric the data set's :class:`~plugins.data.DataInfo`); its
other parameters are the plugin's config fields, typed and defaulted by the signature itself, so a
recipe is validated and filled against the signature and ``retort show`` prints every default::

    >>> from retort import plugins
    >>> loss = plugins.build("loss", "mse")
    >>> plugins.resolve("optimizer", {"name": "rmsprop", "eta": 0.01})["lr"]
    0.01

Register your own in the same process with the decorator, or from an installed package with an entry
point in the group ``retort.plugins`` (``name = "pkg.module"`` imports the module, whose decorators
register; ``name = "pkg.module:func"`` calls ``func()``)::

    @plugins.register("loss", "my_loss")
    def my_loss(*, scale: float = 1.0):
        "Scaled L1."
        return lambda yhat, y: scale * (yhat - y).abs().mean()

Built-in modules are imported on first use of their kind, so importing this package is cheap.

Longer than most modules (about 460 lines) because it is one question: what a registry holds and how a
spec becomes a plugin (lookup, aliases, chains, validation against signatures, entry points).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import math
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

KINDS: tuple[str, ...] = ("loss", "optimizer", "scheduler", "callback", "model", "data", "metric")
ARITY: dict[str, int] = {
    "loss": 0, "optimizer": 1, "scheduler": 1, "callback": 0, "model": 1, "data": 0, "metric": 1,
}
_BUILTIN_MODULES: dict[str, str] = {
    "loss": "retort.plugins.losses",
    "optimizer": "retort.plugins.optimizers",
    "scheduler": "retort.plugins.schedulers",
    "callback": "retort.plugins.callbacks",
    "model": "retort.plugins.models",
    "data": "retort.plugins.data",
    "metric": "retort.plugins.metrics",
}
ENTRY_POINT_GROUP = "retort.plugins"


class PluginError(ValueError):
    """A plugin spec names an unknown plugin or field, or a value of the wrong type or range.

    ``field`` is the dotted path inside the spec (``"lr"``); the recipe layer prefixes its section.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    """One config field of a plugin, read from its factory's signature."""

    name: str
    default: Any  # inspect.Parameter.empty when required
    annotation: Any

    @property
    def required(self) -> bool:
        return self.default is _MISSING


@dataclass
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    doc: str
    origin: str
    aliases: Mapping[str, str] = field(default_factory=dict)  # field alias -> canonical field
    meta: dict[str, Any] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # other names it answers to (Flux's), see alias()
    _params: dict[str, Param] | None = None

    @property
    def params(self) -> dict[str, Param]:
        """Config fields in signature order (after the ``ARITY[kind]`` build-time arguments)."""
        if self._params is None:
            self._params = _signature_params(self.factory, ARITY[self.kind])
        return self._params


_REGISTRY: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
_NAMES: dict[str, dict[str, str]] = {k: {} for k in KINDS}  # lowercased alias -> canonical name
_loaded: set[str] = set()
_entry_points_loaded = False
_current_origin: list[str] = []  # set while an entry point or a recipe's own code is being loaded
_recorders: list[list[Entry]] = []  # open `recording` blocks


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise PluginError(f"unknown plugin kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def add(
    kind: str,
    name: str,
    factory: Callable[..., Any],
    *,
    doc: str | None = None,
    origin: str | None = None,
    aliases: Mapping[str, str] | None = None,
    **meta: Any,
) -> Entry:
    """Register ``factory`` as plugin ``name`` of ``kind``; returns its :class:`Entry`.

    ``doc`` defaults to the first line of the factory's docstring. ``meta`` carries kind-specific
    facts (a loss's ``task`` and ``input``). Registering an existing name replaces it, with a warning
    unless it comes from the same origin (re-imports).
    """
    _check_kind(kind)
    name = name.lower() if not name.startswith(("torch.", "torchmetrics.")) else name
    if doc is None:
        doc = (inspect.getdoc(factory) or "").strip().splitlines()[0:1]
        doc = doc[0] if doc else ""
    if origin is None:
        origin = _current_origin[-1] if _current_origin else getattr(factory, "__module__", "?")
    old = _REGISTRY[kind].get(name)
    if old is not None and old.origin != origin:
        warnings.warn(f"{kind} plugin {name!r} from {origin} replaces the one from {old.origin}",
                      stacklevel=3)
    entry = Entry(kind, name, factory, doc, origin, dict(aliases or {}), dict(meta))
    _REGISTRY[kind][name] = entry
    for recorder in _recorders:
        recorder.append(entry)
    return entry


def alias(kind: str, *names: str, to: str) -> None:
    """Accept each of ``names`` (any case; Flux's ``Adam``, ``huber_loss``) as the plugin ``to``."""
    _check_kind(kind)
    for name in names:
        _NAMES[kind][name.lower()] = to
        shown = _REGISTRY[kind][to].names
        if name not in shown:
            shown.append(name)


@contextlib.contextmanager
def recording(origin: str) -> Iterator[list[Entry]]:
    """The entries registered inside the block, each with ``origin`` (a recipe's own code names itself)."""
    made: list[Entry] = []
    _current_origin.append(origin)
    _recorders.append(made)
    try:
        yield made
    finally:
        _recorders.remove(made)
        _current_origin.pop()


def register(kind: str, name: str | None = None, **options: Any) -> Callable[[Callable], Callable]:
    """Decorator form of :func:`add`; the name defaults to the factory's ``__name__``."""

    def deco(factory: Callable) -> Callable:
        add(kind, name or factory.__name__, factory, **options)
        return factory

    return deco


def _load(kind: str) -> None:
    if kind not in _loaded:
        _loaded.add(kind)
        importlib.import_module(_BUILTIN_MODULES[kind])
    _load_entry_points()


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "?"
        _current_origin.append(f"entry point {ep.name} ({dist})")
        try:
            obj = ep.load()
            if not isinstance(obj, types.ModuleType) and callable(obj):
                obj()
        except Exception as exc:  # a broken third-party plugin must not break retort
            warnings.warn(f"retort plugin entry point {ep.name!r} failed to load: {exc}", stacklevel=2)
        finally:
            _current_origin.pop()


def entries(kind: str) -> list[Entry]:
    """Every registered entry of ``kind``, sorted by name."""
    _check_kind(kind)
    _load(kind)
    return sorted(_REGISTRY[kind].values(), key=lambda e: e.name)


def available(kind: str) -> list[str]:
    """Names of the registered plugins of ``kind``, sorted."""
    return [e.name for e in entries(kind)]


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice nearest to ``word`` (difflib), or None when nothing is close."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[hits[0]] if hits else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    hit = closest(word, choices)
    return f" (did you mean {hit!r}?)" if hit and hit != word else ""


def get(kind: str, name: str) -> Entry:
    """The entry ``name`` of ``kind``; an unknown name raises with the valid choices and the closest."""
    _check_kind(kind)
    _load(kind)
    if not isinstance(name, str):
        raise PluginError(f"{kind} name must be a string, got {name!r}", field="name")
    reg = _REGISTRY[kind]
    key = name if name in reg else name.lower()
    key = _NAMES[kind].get(key, key)
    if key in reg:
        return reg[key]
    names = sorted(reg)
    short = [n for n in names if "." not in n]
    listed = short if len(names) > 40 else names
    more = f" (and {len(names) - len(listed)} torch.* names)" if len(listed) < len(names) else ""
    hint = did_you_mean(name, names + sorted(_NAMES[kind]))
    raise PluginError(
        f"unknown {kind} {name!r}{hint}; valid choices: {', '.join(listed)}{more}",
        field="name",
    )


def split_spec(kind: str, spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``"mse"`` or ``{"name": "mse", **kwargs}`` -> ``("mse", kwargs)``."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        if "name" not in spec and kind == "optimizer" and "chain" in spec:  # Optimisers.jl OptimiserChain
            return "chain", {k: v for k, v in spec.items()}
        if "name" not in spec:
            raise PluginError(f"a {kind} spec needs a 'name' field, got {dict(spec)!r}", field="name")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        return spec["name"], kwargs
    raise PluginError(f"a {kind} spec is a name or a mapping with 'name', got {spec!r}")


def resolve(kind: str, spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``spec`` against the plugin's signature and fill every default.

    Returns ``{"name": canonical_name, field: value, ...}`` in signature order, aliases mapped to
    their canonical field, values checked against the annotations.
    """
    name, kwargs = split_spec(kind, spec)
    entry = get(kind, name)
    params = entry.params
    given: dict[str, Any] = {}
    for key, value in kwargs.items():
        canon = entry.aliases.get(key, key)
        if canon not in params:
            valid = list(params)
            hint = did_you_mean(key, valid + list(entry.aliases))
            raise PluginError(
                f"{kind} {entry.name!r} has no field {key!r}{hint}; "
                f"valid fields: {', '.join(valid) or '(none)'}",
                field=key,
            )
        if canon in given:
            raise PluginError(f"{kind} {entry.name!r}: {key!r} and another alias both set {canon!r}",
                              field=key)
        given[canon] = _check_value(kind, entry.name, params[canon], value)
    out: dict[str, Any] = {"name": entry.name}
    for pname, p in params.items():
        if pname in given:
            out[pname] = given[pname]
        elif p.required:
            raise PluginError(f"{kind} {entry.name!r} needs the field {pname!r}", field=pname)
        else:
            out[pname] = _plain(p.default)
    nested = entry.meta.get("resolve")  # a plugin holding plugin specs (a chain) resolves them too
    return nested(out) if nested is not None else out


def build(kind: str, spec: str | Mapping[str, Any], *args: Any, **fill: Any) -> Any:
    """Build a plugin from a name or ``{name: ..., **kwargs}``, passing ``args`` to its factory.

    ``plugins.build("loss", "mse")`` is a loss; ``plugins.build("optimizer", {"name": "rmsprop",
    "eta": 0.01}, model.parameters())`` a ``torch.optim.Optimizer``. ``fill`` replaces resolved
    fields whose value is None (retort fills a scheduler's ``total`` steps this way).
    """
    config = resolve(kind, spec)
    entry = get(kind, config.pop("name"))
    n = ARITY[kind]
    if len(args) != n:
        raise TypeError(f"{kind} plugins take {n} build-time argument(s), got {len(args)}")
    for key, value in fill.items():
        if key in config and config[key] is None:
            config[key] = value
    return entry.factory(*args, **config)


# --- signature introspection and value checks -------------------------------------------------

def _signature_params(factory: Callable[..., Any], arity: int) -> dict[str, Param]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    sig = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}
    ps = [p for p in sig.parameters.values() if p.name != "self"]
    out: dict[str, Param] = {}
    for p in ps[arity:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[p.name] = Param(p.name, p.default, hints.get(p.name, p.annotation))
    return out


def _plain(value: Any) -> Any:
    """Defaults as plain YAML-able values (tuples become lists)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


_adapters: dict[Any, Any] = {}


def _check_value(kind: str, name: str, param: Param, value: Any) -> Any:
    ann = param.annotation
    if ann is _MISSING or ann is Any or not _simple(ann):
        return value
    from pydantic import TypeAdapter, ValidationError

    adapter = _adapters.get(ann)
    if adapter is None:
        adapter = _adapters[ann] = TypeAdapter(ann)
    try:
        checked = _plain(adapter.validate_python(value))
    except ValidationError as exc:
        msg = "; ".join(e["msg"] for e in exc.errors())
        raise PluginError(f"{kind} {name!r} field {param.name!r}: {msg} (got {value!r})",
                          field=param.name) from None
    problem = loose(ann, value)
    if problem:
        raise PluginError(f"{kind} {name!r} field {param.name!r}: {problem} (got {value!r})", field=param.name)
    return checked


def loose(ann: Any, value: Any) -> str | None:
    """What pydantic lets through but a recipe must not mean: ``true`` for a number (it would run with 1),
    an infinite or NaN number."""
    if isinstance(value, bool):
        return None if _takes_bool(ann) else "must be a number, not true/false"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if isinstance(value, (list, tuple)):
        args = [a for a in typing.get_args(ann) if a is not Ellipsis] or [Any]
        inner = args[0] if typing.get_origin(ann) in (list, tuple) and len(args) == 1 else Any
        return next((p for p in (loose(inner, v) for v in value) if p), None)
    return None


def _takes_bool(ann: Any) -> bool:
    if ann is bool or ann is Any:
        return True
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return any(isinstance(a, bool) for a in typing.get_args(ann))
    if origin in (typing.Union, types.UnionType):
        return any(_takes_bool(a) for a in typing.get_args(ann))
    if origin is typing.Annotated:
        return _takes_bool(typing.get_args(ann)[0])
    return origin is None and ann not in (int, float)


_SIMPLE = (int, float, bool, str, type(None))


def _simple(ann: Any) -> bool:
    """Annotations built from plain scalars, Literal, Optional/Union, tuple, list and dict only."""
    if ann in _SIMPLE:
        return True
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType, tuple, list, dict):
        return all(a is Ellipsis or _simple(a) for a in typing.get_args(ann))
    if origin is typing.Annotated:
        return _simple(typing.get_args(ann)[0])
    return False


def type_name(annotation: Any) -> str:
    """An annotation as a reader writes it: ``int``, ``list[str] | None``, ``Literal['auto', 'binary']``."""
    if annotation is _MISSING:
        return "any"
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def field_docs(entry: Entry) -> dict[str, str]:
    """Per-field docs from the factory's docstring: lines ``field: what it is`` (an ``Args:`` section)."""
    doc = inspect.getdoc(entry.factory.__init__ if inspect.isclass(entry.factory) else entry.factory) or ""
    out: dict[str, str] = {}
    last = None
    for line in doc.splitlines():
        key, sep, text = line.strip().partition(":")
        key = key.split(" (", 1)[0].strip()
        if sep and key in entry.params and text.strip() and key not in out:
            out[key], last = text.strip(), key
        elif last is not None and line.startswith((" ", "\t")) and line.strip():  # a field's continuation
            out[last] += " " + line.strip()
        else:
            last = None
    return out


def describe(kind: str | None = None) -> list[tuple[str, str, str, str]]:
    """Rows of ``(kind, name, doc, origin)`` for ``retort plugins``; the doc ends with the name's aliases."""
    kinds = [kind] if kind else list(KINDS)

    def doc(e: Entry) -> str:
        return f"{e.doc} (also: {', '.join(e.names)})" if e.names else e.doc

    return [(k, e.name, doc(e), e.origin) for k in kinds for e in entries(k)]


__all__ = [
    "ARITY", "ENTRY_POINT_GROUP", "KINDS", "Entry", "Param", "PluginError", "add", "alias", "available",
    "build", "closest", "describe", "did_you_mean", "entries", "field_docs", "get", "loose", "recording",
    "register", "resolve", "split_spec", "type_name",
]
