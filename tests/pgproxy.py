"""A TCP proxy in front of the machine's PostgreSQL that a test controls: it can lose the reply to the COMMIT
of the next transaction that sends a given statement (the server commits; the client sees its connection
drop), take the database away for a while, or do so the moment any client sends a given statement (as a
restart would catch it), without touching the cluster other tests share."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import urlsplit


class Proxy:
    """Forwards ``127.0.0.1:port`` to the cluster's Unix socket; :attr:`url` is the database's URL through it."""

    def __init__(self, url: str):
        parts = urlsplit(url)  # postgresql://USER@/DB?host=SOCKET_DIR
        query = dict(p.split("=", 1) for p in parts.query.split("&") if p)
        self.upstream = f"{query['host']}/.s.PGSQL.{query.get('port', '5432')}"
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"postgresql://{parts.username}@127.0.0.1:{self.port}{parts.path}?sslmode=disable"
        self.lose_after: bytes | None = None  # the next COMMIT on a connection that sent this loses its reply
        self.commits_lost = 0
        self.down_until = 0.0
        self.cut_on: list[tuple[bytes, bool, float]] = []  # (statement, commit it first?, seconds down), in turn
        self.cuts: list[str] = []  # what each cut caught
        self.links: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def outage(self, seconds: float) -> None:
        """Drop every connection now and refuse new ones for ``seconds``."""
        self.down_until = time.monotonic() + seconds
        self._cut_all()

    def _cut(self, cut: tuple[bytes, bool, float]) -> None:
        self.cuts.append(cut[0].decode(errors="replace") + (" (committed)" if cut[1] else ""))
        self.outage(cut[2])

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self._cut_all()

    def _cut_all(self) -> None:
        with self._lock:
            links, self.links = self.links, []
        for pair in links:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.down_until:
                client.close()
                continue
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.upstream)
            link: dict = {"drop": False, "armed": False}
            with self._lock:
                self.links.append((client, server))
            threading.Thread(target=self._pump, args=(client, server, link, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, link, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, link: dict, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                cut = self.cut_on[0] if self.cut_on else None
                if upstream and cut is not None and cut[0] in data and "cut" not in link:
                    if cut[1]:  # the statement goes through; the cut comes once its transaction is committed
                        link["cut"] = self.cut_on.pop(0)
                    else:  # the statement never reaches the server
                        self._cut(self.cut_on.pop(0))
                        break
                if upstream and "cut" in link and b"COMMIT" in data:
                    dst.sendall(data)
                    time.sleep(0.2)
                    self._cut(link.pop("cut"))
                    break
                if upstream and self.lose_after is not None and self.lose_after in data:
                    link["armed"] = True
                if upstream and link["armed"] and b"COMMIT" in data:
                    self.lose_after, link["drop"] = None, True
                    dst.sendall(data)
                    time.sleep(0.5)  # the server commits; its reply is dropped, then the connection
                    self.commits_lost += 1
                    break
                if link["drop"]:
                    continue
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
                s.close()


class ProxyProcess:
    """:class:`Proxy` in a process of its own, so that a busy test process does not slow what it forwards;
    controlled through its stdin."""

    def __init__(self, url: str):
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, __file__, url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()

    def outage(self, seconds: float) -> None:
        self.proc.stdin.write(f"outage {seconds}\n")
        self.proc.stdin.flush()

    def cut_on(self, statement: str, seconds: float, forward: bool = False) -> None:
        """Cut every connection for ``seconds`` when a client next sends ``statement`` (with ``forward``, once
        the server has committed its transaction: the reply is lost); cuts asked for in turn fire in turn."""
        self.proc.stdin.write(f"cut {seconds} {int(forward)} {statement}\n")
        self.proc.stdin.flush()

    def close(self) -> list[str]:
        """Stop it; returns the statements its cuts caught."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.wait(timeout=30)
        return [line[4:] for line in out.splitlines() if line.startswith("cut ")]


if __name__ == "__main__":
    import sys

    proxy = Proxy(sys.argv[1])
    print(proxy.url, flush=True)
    for line in sys.stdin:
        command, _, arg = line.partition(" ")
        if command == "outage":
            proxy.outage(float(arg))
        elif command == "cut":
            seconds, forward, statement = arg.rstrip("\n").split(" ", 2)
            proxy.cut_on.append((statement.encode(), forward == "1", float(seconds)))
    proxy.close()
    for caught in proxy.cuts:
        print(f"cut {caught}", flush=True)
