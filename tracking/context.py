"""Where and how a run ran: versions, host, devices, code state, environment; tags and artifacts.

Nothing that looks like a secret reaches the record: URL passwords and ``NAME=value`` pairs whose name
says TOKEN, KEY, SECRET, PASSWORD or CREDENTIAL are masked in the command line, params and tags.
"""

from __future__ import annotations

import functools
import platform
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from retort.tracking.vocabulary import Tag

_SECRET_NAME = re.compile(r"(token|key|secret|password|passwd|credential|auth)", re.I)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)
# a value: quoted (spaces inside), else up to a space or the end of a flow mapping or list (a pair inside
# ``{api_key: x}`` is a pair of its own); a value may not start with ``{`` or ``[``, so that the pairs
# inside a mapping given as a value are each checked
_PAIR = re.compile(r"""(?P<k>[A-Za-z_][\w.-]*)(?P<sep>[ \t]*=[ \t]*|:[ \t]*)"""
                   r"""(?P<v>\*\*\*(?![^\s'",}\]])|"[^"]*"|'[^']*'|[^\s{\[,}\]][^\s,}\]]*)""")
MASK = "***"


def mask(text: str) -> str:
    """``text`` with URL passwords and secret-named ``NAME=value`` pairs replaced by ``***``."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _PAIR.sub(lambda m: f"{m['k']}{m['sep']}{MASK}" if _SECRET_NAME.search(m["k"]) else m[0], text)


def secret_name(key: str) -> bool:
    """Whether a dotted field name's last part says it holds a secret (``tracking.tags.api_token``)."""
    return bool(_SECRET_NAME.search(str(key).rsplit(".", 1)[-1]))


def mask_value(key: str, value: Any) -> Any:
    """A param or tag value as it may be recorded: masked when it or its name looks like a secret."""
    if isinstance(value, str):
        return MASK if secret_name(key) and value else mask(value)
    return value


def mask_tree(data: Any, key: str = "", secret: bool = False) -> Any:
    """A recipe (nested dicts and lists) with every secret-looking string masked; everything under a
    secret-named key (``credentials: {user: a, pw: b}``) is masked whole."""
    secret = secret or (bool(key) and secret_name(key))
    if isinstance(data, dict):
        return {k: mask_tree(v, str(k), secret) for k, v in data.items()}
    if isinstance(data, list):
        return [mask_tree(v, key, secret) for v in data]
    if secret and data is not None and not isinstance(data, bool):
        return MASK
    return mask_value(key, data)


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed, secrets masked, including those inside a mapping or list given as one
    override's value (``-s 'tracking.tags={api_key: x}'``)."""
    argv = sys.argv if argv is None else argv
    return " ".join(shlex.quote(mask(_mask_arg(a))) for a in ["retort", *argv[1:]])


def _mask_arg(arg: str) -> str:
    key, sep, value = arg.partition("=")
    if not sep or value.lstrip()[:1] not in ("{", "[") or len(value) > 100_000:
        return arg
    import json

    import yaml

    try:
        data = yaml.safe_load(value)
    except (yaml.YAMLError, RecursionError):
        return f"{key}={MASK}" if secret_name(key) else arg  # unreadable: keep it only if nothing can hide in it
    masked = mask_tree(data, key)
    return arg if masked == data else f"{key}={json.dumps(masked)}"


@functools.lru_cache(maxsize=1)
def environment() -> str:
    """The installed distributions, ``name==version`` sorted (pip freeze's content), with the Python version.

    Read once per process: a sweep worker records it for every trial."""
    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    lines = [f"# python {platform.python_version()} ({sys.implementation.name}) on {platform.platform()}"]
    return "\n".join(lines + sorted(seen.values(), key=str.lower)) + "\n"


@dataclass
class GitState:
    root: Path
    commit: str
    dirty: bool
    diff: str


def git_state(path: Path) -> GitState | None:
    """Commit, dirty flag and diff (tracked changes, plus the list of untracked files) of ``path``'s repository."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    try:
        root = Path(git("rev-parse", "--show-toplevel").strip())
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return None
    diff = ""
    if status.strip():
        untracked = [line[3:] for line in status.splitlines() if line.startswith("??")]
        diff = git("diff", "HEAD")
        if untracked:
            diff += "".join(f"# untracked: {name}\n" for name in untracked)
    return GitState(root, commit, bool(status.strip()), diff)


def code_states(recipe_source: str | None) -> dict[str, GitState]:
    """The working folder's (or the recipe's) repository as ``git``, retort's own as ``retort.git`` if another.

    Read once per process, working folder and recipe (git runs subprocesses; a sweep worker records many runs)."""
    return dict(_code_states(str(Path.cwd()), recipe_source))


@functools.lru_cache(maxsize=16)
def _code_states(cwd: str, recipe_source: str | None) -> tuple[tuple[str, GitState], ...]:
    out: dict[str, GitState] = {}
    user = git_state(Path(cwd))
    if user is None and recipe_source:
        user = git_state(Path(recipe_source).resolve().parent)
    if user is not None:
        out["git"] = user
    own = git_state(Path(__file__).resolve().parent)
    if own is not None and (user is None or own.root != user.root):
        out["retort.git"] = own
    return tuple(out.items())


def run_tags(recipe: Any, command: str | None = None) -> dict[str, str]:
    """Tags every run carries before it starts (devices come with :func:`device_tags` once known)."""
    import torch

    tags = {
        Tag.VERSION: version("retort"),
        Tag.RECIPE: recipe.name,
        Tag.RECIPE_SOURCE: recipe.source or "",
        Tag.SEED: str(recipe.seed),
        Tag.COMMAND: command or command_line(),
        Tag.SOURCE_NAME: "retort",
        "python.version": platform.python_version(),
        "torch.version": torch.__version__,
        "lightning.version": version("pytorch-lightning"),
        "mlflow.version": version("mlflow"),
        "host.name": socket.gethostname(),
    }
    for prefix, state in code_states(recipe.source).items():
        tags[f"{prefix}.commit"] = state.commit
        tags[f"{prefix}.dirty"] = str(state.dirty).lower()
        tags[f"{prefix}.repo"] = str(state.root)
    return {k: mask_value(k, v) for k, v in tags.items()}


def device_tags(trainer: Any) -> dict[str, str]:
    """Accelerator, device names and count, world size: known once the trainer is set up."""
    import torch

    accelerator = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    devices = [trainer.strategy.root_device] if trainer.num_devices == 1 else \
        [torch.device(trainer.strategy.root_device.type, i) for i in range(trainer.num_devices)]
    if accelerator == "cuda":
        names = [torch.cuda.get_device_name(d) for d in devices]
    else:
        names = [platform.processor() or platform.machine()] * len(devices)
    return {
        Tag.ACCELERATOR: accelerator,
        Tag.DEVICES: ", ".join(names),
        Tag.DEVICE_COUNT: str(trainer.num_devices),
        Tag.NUM_NODES: str(trainer.num_nodes),
        Tag.WORLD_SIZE: str(trainer.world_size),
        Tag.PRECISION: str(trainer.precision),
    }
