"""``retort ui``: MLflow's UI over the same store retort writes, and optuna-dashboard for the sweeps' studies.

``mlflow server`` runs on the resolved tracking URI (``--tracking-uri``, else ``MLFLOW_TRACKING_URI``,
else ``./mlflow.db``) bound to 127.0.0.1; the address is printed once the server answers. MLflow's
background job runner (GenAI jobs, seven extra processes) is switched off: it has nothing to do for
training runs. Each server runs in its own process group, so stopping ``retort ui`` (Ctrl-C, SIGTERM)
stops every process it started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from retort.plugins.errors import RecipeError

HELP = "serve the MLflow UI over the same store on 127.0.0.1 (and optuna-dashboard for sweeps)"
EXAMPLES = """examples:
  retort ui                                   # http://127.0.0.1:5000 over ./mlflow.db
  retort ui --port 5001 --tracking-uri sqlite:////shared/runs/mlflow.db
  retort ui --optuna                          # also optuna-dashboard over the sweeps' journals in ./optuna/
  retort ui --optuna --storage postgresql://user@db-host/optuna
  retort ui --host 0.0.0.0                    # reachable from other machines (a warning: no login)

Stop it with Ctrl-C."""

LOOPBACK = ("127.0.0.1", "localhost", "::1")
START_TIMEOUT = 120.0  # seconds for a server to answer; MLflow's first start on a busy machine is slow


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", "-p", type=int, default=5000, help="MLflow UI port (default 5000; 0: a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--optuna", action="store_true",
                        help="also serve optuna-dashboard: one per journal file under optuna/ next to the store")
    parser.add_argument("--storage", metavar="URL",
                        help="the Optuna storage for --optuna instead (an RDB URL or a journal file); implies --optuna")
    parser.add_argument("--optuna-port", type=int, default=8080,
                        help="first optuna-dashboard port (default 8080, then 8081, ...; 0: free ones)")


def _store_dir(uri: str) -> Path:
    from retort.tracking.store import sqlite_path

    path = sqlite_path(uri)
    return path.resolve().parent if path is not None else Path.cwd()


def _absolute(uri: str) -> str:
    """A relative ``sqlite:///mlflow.db`` made absolute, so the server reads the same file from anywhere."""
    from retort.tracking.store import sqlite_path

    if uri.startswith(("http://", "https://")):
        raise RecipeError(f"{uri} is an MLflow tracking server, which serves its own UI: open it in a browser",
                          field="--tracking-uri")
    path = sqlite_path(uri)
    if path is None:
        return uri
    if not path.is_file():
        raise RecipeError(f"no MLflow store at {path} ({uri}); run something first (retort run ...), or name the "
                          f"store with --tracking-uri or MLFLOW_TRACKING_URI", field="--tracking-uri")
    query = uri.split("?", 1)[1] if "?" in uri else ""
    return f"sqlite:///{path.resolve()}" + (f"?{query}" if query else "")


def _port(host: str, port: int, option: str) -> int:
    """``port`` if it can be bound on ``host`` (a free one for 0); in use is bad input."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except socket.gaierror as exc:
            raise RecipeError(f"cannot bind to host {host!r} ({exc.strerror}); use an address of this machine, "
                              f"e.g. 127.0.0.1 or 0.0.0.0", field="--host") from None
        except (OSError, OverflowError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise RecipeError(f"cannot listen on {host}:{port} ({why}); pick another port with {option}",
                              field=option) from None
        return s.getsockname()[1]


def _journals(uri: str, storage: str | None) -> list[str]:
    if storage:
        return [storage]
    folder = _store_dir(uri) / "optuna"
    found = sorted(str(p) for p in folder.glob("*") if _is_journal(p)) if folder.is_dir() else []
    if not found:
        raise RecipeError(f"no Optuna journal in {folder}/ (retort sweep writes one there); name a storage with "
                          f"--storage URL", field="--optuna")
    return found


def _is_journal(path: Path) -> bool:
    """An Optuna journal: JSON lines. Not the (empty) locks beside it, ``<study>.journal.retort-lock`` and
    Optuna's ``.lock``, which optuna-dashboard would serve as empty studies of their own."""
    try:
        with open(path, "rb") as f:
            return f.read(1) == b"{"
    except OSError:
        return False


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _shown(host: str, port: int) -> str:
    """The address to print: this machine's name when bound to every interface."""
    if host in ("0.0.0.0", "", "::"):
        return f"{_url(socket.gethostname(), port)} (every interface)"
    return _url(host, port)


def _wait(proc: subprocess.Popen, url: str, log: Path, what: str) -> None:
    """Until ``url`` answers; a server that exits or never answers is a failure with its log's tail."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _Failed(f"{what} exited with code {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise _Failed(f"{what} did not answer at {url} within {START_TIMEOUT:.0f} s:\n{_tail(log)}")


class _Failed(Exception):
    pass


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each server's process group, then SIGKILL what is left after 10 s."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError, PermissionError):  # workers outliving their leader
            os.killpg(p.pid, signal.SIGKILL)


def main(args: argparse.Namespace) -> int:
    from retort.tracking.store import resolve_uri

    uri = _absolute(resolve_uri(args.tracking_uri))
    host = args.host
    port = _port(host, args.port, "--port")
    optuna = args.optuna or bool(args.storage)
    storages = _journals(uri, args.storage) if optuna else []
    dash_ports: list[int] = []
    for i, _ in enumerate(storages):
        wanted = args.optuna_port + i if args.optuna_port else 0
        dash_ports.append(_port(host, wanted, "--optuna-port"))
    if host not in LOOPBACK:
        ports = ", ".join(str(p) for p in [port, *dash_ports])
        print(f"warning: serving on {host}: anyone who can reach this machine's port{'s' if dash_ports else ''} "
              f"{ports} can read every run, param and artifact, and change them (neither UI has a login)",
              file=sys.stderr)

    bin_dir = Path(sys.executable).parent
    logs = Path(tempfile.mkdtemp(prefix="retort-ui-"))
    servers: list[tuple[subprocess.Popen, str, Path]] = []  # (process, what, log)
    # Ctrl-C and SIGTERM are how a server is stopped: exit 0 (the command line's own handler would treat them
    # as an interrupted run)
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        log = logs / "mlflow.log"
        servers.append((_start([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
                                "--port", str(port), "--workers", "1"], log,
                               {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}), "mlflow server", log))
        exe = bin_dir / "optuna-dashboard"
        dashboard = [str(exe)] if exe.exists() else [sys.executable, "-m", "optuna_dashboard"]
        for storage, dport in zip(storages, dash_ports):
            log = logs / f"optuna-dashboard-{dport}.log"
            servers.append((_start([*dashboard, storage, "--host", host, "--port", str(dport)], log),
                            f"optuna-dashboard ({storage})", log))
        _wait(servers[0][0], _url(_probe_host(host), port) + "/health", servers[0][2], "mlflow server")
        print(f"MLflow UI: {_shown(host, port)}  (store {uri})", flush=True)
        for (proc, what, log), storage, dport in zip(servers[1:], storages, dash_ports):
            _wait(proc, _url(_probe_host(host), dport) + "/api/meta", log, what)
            print(f"optuna-dashboard: {_shown(host, dport)}  (storage {storage})", flush=True)
        if not args.quiet:
            print(f"server logs in {logs}; press Ctrl-C to stop", file=sys.stderr, flush=True)
        while True:
            for proc, what, log in servers:
                if proc.poll() is not None:
                    raise _Failed(f"{what} stopped with code {proc.returncode}:\n{_tail(log)}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        if not args.quiet:
            print("stopped", file=sys.stderr)
        return 0
    except _Failed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop([proc for proc, _, _ in servers])


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
