"""What a person at a terminal sees while retort works: a status line before the slow imports, a live bar
per epoch, a live table of a sweep's trials.

Live output goes to stderr and only when stderr is a terminal (``live()``): piped or redirected output
(CI logs, files) gets the plain lines alone, with no control codes. Nothing here imports torch or
Lightning, and rich only once something live is drawn, so the CLI can call :func:`status` first thing.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import Any, TextIO

REFRESH = 0.1  # seconds between redraws: a redraw costs about 1 ms, a digits-mlp step 0.5 ms


def live(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (stderr) is a terminal that can take live redraws."""
    stream = stream or sys.stderr
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


_status_shown = False


def status(text: str) -> None:
    """A transient line on a terminal (``retort run digits-mlp: loading PyTorch...``), replaced by the
    next status, the first epoch's bar, or :func:`clear_status`; nothing when not a terminal."""
    global _status_shown
    if live():
        sys.stderr.write(f"\r\x1b[K{text}")
        sys.stderr.flush()
        _status_shown = True


def clear_status() -> None:
    global _status_shown
    if _status_shown:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
        _status_shown = False


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class EpochBar:
    """One epoch's live bar: ``epoch 3/40 ━━━━╸─── 120/540 batches  loss 0.4121  5,230 samples/s  0:02 ETA 0:07``.

    Drawn with rich on stderr, at most every :data:`REFRESH` seconds, and only once the epoch has run for
    ``delay`` seconds (a digits epoch lasts 50 ms: a bar per epoch would only flicker); erased when the
    epoch ends, so that the epoch's line takes its place. ``mean`` is the running mean of the epoch's batch
    losses so far; samples per second count since the epoch's start.
    """

    def __init__(self, max_epochs: int, delay: float = 0.5):
        self.max_epochs, self.delay = max_epochs, delay
        self._live: Any = None
        self._start = self._drawn = 0.0

    def start(self, epoch: int, batches: int) -> None:
        self.epoch, self.batches = epoch, batches
        self._start, self._drawn = time.monotonic(), -math.inf

    def due(self) -> bool:
        """Whether a redraw is due now (cheap: the caller computes the numbers only then)."""
        now = time.monotonic()
        return now - self._start >= self.delay and now - self._drawn >= REFRESH

    def draw(self, done: int, samples: int, mean: float) -> None:
        now = time.monotonic()
        self._drawn = now
        elapsed = now - self._start
        rate = samples / elapsed if elapsed > 0 else 0.0
        eta = elapsed / done * (self.batches - done) if done and self.batches else 0.0
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            clear_status()
            self._live = Live(console=Console(file=sys.stderr), auto_refresh=False, transient=True,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        self._live.update(self._render(done, rate, mean, elapsed, eta), refresh=True)

    def _render(self, done: int, rate: float, mean: float, elapsed: float, eta: float) -> Any:
        from rich.text import Text

        width = 24
        filled = width * done // max(self.batches, 1)
        return Text.assemble(
            f"epoch {self.epoch}/{self.max_epochs} ", ("━" * filled, "magenta"), ("━" * (width - filled), "grey30"),
            f" {done}/{self.batches or '?'} batches  loss {mean:.4f}  {rate:,.0f} samples/s  {_clock(elapsed)}  "
            f"ETA {_clock(eta)}", no_wrap=True, overflow="ellipsis")

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


# --- sweeps ---------------------------------------------------------------------------------------

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


class SweepBoard:
    """A sweep's live table: the running trials (worker, trial, epoch, current value), how many finished,
    and the best value so far with its trial; above it, one line per trial as it finishes.

    It reads the study itself (every worker's trials, whatever process runs them), so the sweep only starts
    and stops it; ``describe(trial, finished)`` is the sweep's line for a finished trial::

        board = SweepBoard("digits-mlp", trials=20, metric="val/loss", direction="minimize")
        board.follow(lambda: study.get_trials(deepcopy=False), describe, worker_of)   # a thread, 1 s apart
        ...                                                                           # the sweep runs
        board.close()                                                                 # before the last lines

    Trials are Optuna's (``number``, ``state.name``, ``value``, ``intermediate_values``); the epoch is the
    last reported step. The trials finished when it starts are counted, not printed again.
    """

    def __init__(self, study: str, trials: int, metric: str, direction: str):
        import threading

        self.study, self.trials, self.metric, self.maximize = study, trials, metric, direction == "maximize"
        self.done = 0
        self.best: tuple[int, float] | None = None  # (trial, value)
        self.running: dict[int, tuple[Any, int, float | None]] = {}  # trial -> (worker, epoch, value)
        self._seen: set[int] | None = None  # finished trials already shown (None: not read yet)
        self._live: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source: tuple[Any, Any, Any] = (list, None, None)

    def sync(self, trials: list[Any], describe: Any = None, worker_of: Any = None) -> list[str]:
        """Read ``trials``; returns the lines of trials finished since the last read (in number order)."""
        self.running, finished, new = {}, [], []
        for t in trials:
            state = t.state.name
            if state == "RUNNING":
                steps = t.intermediate_values
                epoch = max(steps) if steps else 0
                self.running[t.number] = (worker_of(t) if worker_of else "-", epoch, steps.get(epoch))
            elif state in FINISHED:
                finished.append(t)
                if state == "COMPLETE" and t.value is not None and math.isfinite(t.value) and (  # out of memory: inf
                        self.best is None or (t.value > self.best[1] if self.maximize else t.value < self.best[1])):
                    self.best = (t.number, t.value)
        if self._seen is None:
            self._seen = {t.number for t in finished}
        count = len(self._seen)  # each new line says how many had finished with it
        for t in sorted(finished, key=lambda t: t.number):
            if t.number not in self._seen:
                self._seen.add(t.number)
                count += 1
                new.append(describe(t, count) if describe else f"trial {t.number} {t.state.name.lower()}")
        self.done = len(finished)
        return new

    def lines(self) -> list[str]:
        """The table as plain text: a head line, then one line per running trial."""
        best = f"; best {self.metric} {self.best[1]:.6g} (trial {self.best[0]})" if self.best else ""
        out = [f"sweep {self.study}: {self.done} of {self.trials} trials finished, {len(self.running)} running{best}"]
        for worker, n, epoch, value in self._rows():
            out.append(f"  worker {worker}  trial {n}  epoch {epoch}  {self.metric} {value}")
        return out

    def _rows(self) -> list[tuple[str, str, str, str]]:
        """(worker, trial, epoch, value) of each running trial, by worker."""
        rows = sorted(self.running.items(), key=lambda kv: (str(kv[1][0]), kv[0]))
        return [(str(w), str(n), str(e), f"{v:.6g}" if v is not None else "-") for n, (w, e, v) in rows]

    def draw(self, above: list[str] = ()) -> None:
        """Print ``above`` (finished trials' lines) and redraw the table under them, on stderr."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            clear_status()
            self._live = Live(console=Console(file=sys.stderr), auto_refresh=False, transient=True,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        for line in above:
            self._live.console.print(Text(line), soft_wrap=True)
        table = Table(box=None, pad_edge=False)
        for name in ("worker", "trial", "epoch", self.metric):
            table.add_column(name, justify="right")
        for row in self._rows():
            table.add_row(*row)
        head = Text(self.lines()[0], style="bold", no_wrap=True, overflow="ellipsis")
        self._live.update(Group(head, table) if self.running else head, refresh=True)

    def follow(self, read: Any, describe: Any = None, worker_of: Any = None, interval: float = 1.0) -> None:
        """Read the study with ``read()`` every ``interval`` seconds in a daemon thread, and redraw."""
        import threading

        self._source = (read, describe, worker_of)

        def loop() -> None:
            while True:
                self._tick()
                if self._stop.wait(interval):
                    return

        self._thread = threading.Thread(target=loop, name="retort-sweep-board", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        read, describe, worker_of = self._source
        with contextlib.suppress(Exception):  # a storage hiccup: the sweep itself reports those; next time
            self.draw(self.sync(read(), describe, worker_of))

    def close(self) -> None:
        """Stop following, after a last read (the lines of trials finished since the one before)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._tick()
        if self._live is not None:
            self._live.stop()
            self._live = None
