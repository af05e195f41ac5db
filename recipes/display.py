"""What a person at a terminal sees while retort works: a status line before the slow imports, a live bar
per epoch, a live table of a sweep's trials.

Live output goes to stderr and only when stderr is a terminal (``live()``): piped or redirected output
(CI logs, files) gets the plain lines alone, with no control codes. Nothing here imports torch or
Lightning, and rich only once something live is drawn, so the CLI can call :func:`status` first thing.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
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
            f" {done}/{self.batches} batches  loss {mean:.4f}  {rate:,.0f} samples/s  {_clock(elapsed)}  "
            f"ETA {_clock(eta)}", no_wrap=True, overflow="ellipsis")

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


# --- sweeps ---------------------------------------------------------------------------------------

@dataclass
class _Trial:
    worker: int
    number: int
    epoch: int = 0
    value: float | None = None


class SweepBoard:
    """A sweep's live table: the running trials (worker, trial, epoch, current value), how many finished,
    and the best value so far with its trial.

    The sweep feeds it events, from any thread, and the board redraws (on a terminal) at most every
    :data:`REFRESH` seconds; :meth:`close` erases it before the sweep's final lines::

        board = SweepBoard("digits-mlp", trials=20, metric="val/loss", direction="minimize")
        board.started(worker=0, trial=3)
        board.epoch(trial=3, epoch=2, value=0.41)
        board.finished(trial=3, state="COMPLETE", value=0.38)   # or PRUNED, FAIL
        board.close()
    """

    def __init__(self, study: str, trials: int, metric: str, direction: str, done: int = 0,
                 best: tuple[int, float] | None = None):
        import threading

        self.study, self.trials, self.metric, self.maximize = study, trials, metric, direction == "maximize"
        self.done = done
        self.best = best  # (trial, value)
        self.states: dict[str, int] = {}
        self.running: dict[int, _Trial] = {}
        self._lock = threading.Lock()
        self._live: Any = None
        self._drawn = 0.0
        self.enabled = live()

    def started(self, worker: int, trial: int) -> None:
        with self._lock:
            self.running[trial] = _Trial(worker, trial)
        self._redraw()

    def epoch(self, trial: int, epoch: int, value: float | None) -> None:
        with self._lock:
            t = self.running.get(trial)
            if t is not None:
                t.epoch, t.value = epoch, value
        self._redraw()

    def finished(self, trial: int, state: str, value: float | None = None) -> None:
        with self._lock:
            self.running.pop(trial, None)
            self.done += 1
            self.states[state] = self.states.get(state, 0) + 1
            if state == "COMPLETE" and value is not None and (
                    self.best is None or (value > self.best[1] if self.maximize else value < self.best[1])):
                self.best = (trial, value)
        self._redraw(force=True)

    def sync(self, running: Mapping[int, tuple[int, int, float | None]], done: int,
             best: tuple[int, float] | None) -> None:
        """Replace the state with one read from the study (trials run by other workers):
        ``running`` maps trial number to (worker, epoch, value)."""
        with self._lock:
            self.running = {n: _Trial(w, n, e, v) for n, (w, e, v) in running.items()}
            self.done, self.best = done, best
        self._redraw()

    def lines(self) -> list[str]:
        """The board as plain text lines (what the live table shows)."""
        with self._lock:
            rows = sorted(self.running.values(), key=lambda t: (t.worker, t.number))
            out = [f"sweep {self.study}: {self.done} of {self.trials} trials finished, {len(rows)} running"
                   + (f"; best {self.metric} {self.best[1]:.6g} (trial {self.best[0]})" if self.best else "")]
            for t in rows:
                value = f"{t.value:.6g}" if t.value is not None else "-"
                out.append(f"  worker {t.worker}  trial {t.number}  epoch {t.epoch}  {self.metric} {value}")
        return out

    def _redraw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < REFRESH:
            return
        self._drawn = now
        with self._lock:
            table = self._table()
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            clear_status()
            self._live = Live(console=Console(file=sys.stderr), auto_refresh=False, transient=True,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        self._live.update(table, refresh=True)

    def _table(self) -> Any:
        from rich.table import Table

        best = f"best {self.metric} {self.best[1]:.6g} (trial {self.best[0]})" if self.best else "no best yet"
        table = Table(title=f"sweep {self.study}: {self.done}/{self.trials} finished, {best}", title_justify="left",
                      box=None, pad_edge=False)
        for name in ("worker", "trial", "epoch", self.metric):
            table.add_column(name, justify="right")
        for t in sorted(self.running.values(), key=lambda t: (t.worker, t.number)):
            table.add_row(str(t.worker), str(t.number), str(t.epoch), f"{t.value:.6g}" if t.value is not None else "-")
        return table

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
