"""Safe YAML in and out: strict about duplicate keys, kind to ``1e-3``, and positions in every error.

Bounded: a recipe text of at most ``MAX_TEXT`` characters that expands (YAML aliases counted each time
they are used: a 400-byte "billion laughs" file expands to hundreds of millions of values) to at most
``MAX_VALUES`` values, nested at most ``MAX_DEPTH`` deep. Anything bigger is bad input, refused before
anything walks it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from retort.plugins.errors import RecipeError

MAX_TEXT = 1_000_000
MAX_VALUES = 100_000
MAX_DEPTH = 100


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                mark = key_node.start_mark
                raise RecipeError(f"a mapping key must be a name or a number, got a {type(key).__name__} at line "
                                  f"{mark.line + 1}, column {mark.column + 1}")
            if key in seen:
                mark = key_node.start_mark
                raise RecipeError(f"duplicate key {key!r} at line {mark.line + 1}, column {mark.column + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+0123456789.":
    _Loader.yaml_implicit_resolvers[_first] = [
        (tag, rx) for tag, rx in _Loader.yaml_implicit_resolvers.get(_first, []) if tag != "tag:yaml.org,2002:float"
    ]
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_size(root: yaml.Node) -> None:
    """Count the values ``root`` expands to, each alias as often as it is used, without expanding it."""
    size: dict[int, int] = {}  # node -> values under it, expanded
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            open_.discard(key)
            if size[key] > MAX_VALUES:
                raise RecipeError(f"the recipe expands to more than {MAX_VALUES:,} values (YAML aliases "
                                  f"repeat what they name); write it out")
            if depth[key] > MAX_DEPTH:
                raise RecipeError(f"the recipe nests deeper than {MAX_DEPTH} levels")
            continue
        if key in size:
            continue
        if key in open_:
            raise RecipeError(f"an alias refers to itself at line {node.start_mark.line + 1}")
        open_.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def loads(text: str, source: str | None = None) -> Any:
    """Parse YAML text; a syntax error becomes a RecipeError with line and column."""
    if len(text) > MAX_TEXT:
        raise RecipeError(f"more than {MAX_TEXT:,} characters; a recipe or an override value is at most that",
                          source=source)
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise RecipeError(f"the recipe nests deeper than {MAX_DEPTH} levels", source=source) from None
    except RecipeError as exc:
        raise RecipeError(exc.message, source=source) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RecipeError(f"malformed YAML: {where}{exc.problem or exc}", source=source) from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"malformed YAML: {exc}", source=source) from None


def load_file(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TEXT + 1)
        text = data.decode("utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read recipe: {exc.strerror}", source=str(path)) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"not a text file (not UTF-8 at byte {exc.start})", source=str(path)) from None
    return loads(text, source=str(path))


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _represent_list(dumper: yaml.SafeDumper, value: list | tuple) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list, tuple)) for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", list(value), flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, _represent_list)


def dumps(data: Any) -> str:
    """YAML in the recipe's own field order; ``loads(dumps(x)) == x`` for recipe data."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100,
                     allow_unicode=True)
