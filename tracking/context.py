"""Where and how a run ran: versions, host, devices, the command line; tags on its MLflow run."""

from __future__ import annotations

import platform
import re
import socket
import sys
from importlib import metadata
from typing import Any

_SECRET_WORDS = re.compile(r"(token|key|secret|password|passwd|credential)", re.I)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)


def mask(text: str) -> str:
    """The text with URL passwords and ``NAME=value`` secrets (TOKEN, KEY, SECRET, PASSWORD) masked."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)

    def repl(m: re.Match[str]) -> str:
        return f"{m['k']}{m['sep']}***" if _SECRET_WORDS.search(m["k"]) else m[0]

    return re.sub(r"(?P<k>[A-Za-z_][\w.-]*)(?P<sep>=)(?P<v>\S+)", repl, text)


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def command_line(argv: list[str] | None = None) -> str:
    import shlex

    argv = sys.argv if argv is None else argv
    return mask(" ".join(shlex.quote(a) for a in ["retort", *argv[1:]]))


def run_tags(recipe: Any, command: str | None = None) -> dict[str, str]:
    """Tags every run carries."""
    import torch

    return {
        "retort.version": version("retort"),
        "retort.recipe": recipe.name,
        "retort.recipe_source": recipe.source or "",
        "retort.seed": str(recipe.seed),
        "retort.command": command or command_line(),
        "mlflow.source.name": "retort",
        "python.version": platform.python_version(),
        "torch.version": torch.__version__,
        "lightning.version": version("pytorch-lightning"),
        "mlflow.version": version("mlflow"),
        "host.name": socket.gethostname(),
    }
