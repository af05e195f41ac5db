"""Two sides of a bench figure taking turns, one epoch each, in two processes (used by ``bench_data.py`` and
``bench_tracking.py``).

On a shared machine the speed drifts by ±10 % over seconds to minutes, so two fits timed one after the other
(A B, B A, ...) differ by more than the few per cent a goal speaks of. Here side A trains one epoch while side B
waits, then B trains one while A waits, and so on: each pair of epochs lies within a couple of seconds, and
every cost a side has (a flush every few seconds, a checkpoint every ten) lands in that side's own epochs. A
side's epoch is timed from its start to its next epoch's start (training, validation, the epoch's end). The
sides' set-up (imports, building, the fit's start) happens before the first turn, their ending after the last.

``take_turns(target, a, b)`` runs ``target(args, turns)`` once per side in its own fresh process (spawned:
nothing inherited from the bench) and returns what each returned, with the seconds of each epoch in
``"turns"``; ``take_rounds`` repeats it, balanced over the leader and the process slots. The target calls
``turns.next()`` at each epoch's start and ``turns.done()`` when training ends; a Lightning fit does it through
``turns.callback()``.
"""

from __future__ import annotations

import multiprocessing
import queue
import statistics
import time
from collections.abc import Callable
from typing import Any


class Turns:
    """One side's end of the turn-taking: ``mine`` is released when it is this side's turn, ``theirs`` when it is
    the other's. The leader starts once the other side is ready and, after its last epoch, waits for the other
    side's last one, so that neither side's ending overlaps a measured epoch. ``over`` is set when a side has
    finished: the other then trains without waiting (an early stop must not hang the bench)."""

    def __init__(self, mine: Any, theirs: Any, over: Any, leads: bool):
        self.mine, self.theirs, self.over, self.leads = mine, theirs, over, leads
        self.held: list[float] = []
        self._start: float | None = None

    def _wait(self) -> None:
        while not self.over.is_set():
            if self.mine.acquire(timeout=0.5):
                return

    def next(self) -> None:
        if self._start is not None:
            self.held.append(time.perf_counter() - self._start)
        if self._start is not None or not self.leads:  # the follower's first release says it is ready
            self.theirs.release()
        self._wait()
        self._start = time.perf_counter()

    def done(self) -> None:
        self.held.append(time.perf_counter() - self._start)
        if self.leads and not self.over.is_set():
            self.theirs.release()
            self._wait()  # the other side's last epoch
        self.over.set()
        self.theirs.release()

    def callback(self) -> Any:
        """A Lightning callback taking this side's turns at each training epoch."""
        import pytorch_lightning as pl

        turns = self

        class TakeTurns(pl.Callback):
            def on_train_epoch_start(self, trainer: Any, m: Any) -> None:
                turns.next()

            def on_train_end(self, trainer: Any, m: Any) -> None:
                turns.done()

        return TakeTurns()


def _side(target: Callable[[Any, Turns], dict], args: Any, mine: Any, theirs: Any, over: Any, leads: bool,
          out: Any, name: str) -> None:
    multiprocessing.set_start_method("fork", force=True)  # DataLoader workers as in ``python train.py``
    turns = Turns(mine, theirs, over, leads)
    try:
        result = target(args, turns)
    finally:
        over.set()  # a failing side must not leave the other waiting for its turn
        theirs.release()
    out.put((name, {**result, "turns": turns.held}))


def take_turns(target: Callable[[Any, Turns], dict], a: Any, b: Any, a_leads: bool = True,
               timeout: float = 1800) -> tuple[dict, dict]:
    """Run ``target(a, turns)`` and ``target(b, turns)`` in two processes taking turns; their results."""
    spawn = multiprocessing.get_context("spawn")
    sem_a, sem_b, over, out = spawn.Semaphore(0), spawn.Semaphore(0), spawn.Event(), spawn.Queue()
    sides = [spawn.Process(target=_side, args=(target, a, sem_a, sem_b, over, a_leads, out, "a"), name="turns-first"),
             spawn.Process(target=_side, args=(target, b, sem_b, sem_a, over, not a_leads, out, "b"),
                           name="turns-second")]
    for p in sides:
        p.start()
    got: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(got) < 2:
        try:
            name, result = out.get(timeout=2)
            got[name] = result
        except queue.Empty:
            failed = [p for p in sides if p.exitcode]
            if failed or time.monotonic() > deadline:
                for p in sides:
                    p.kill()
                raise RuntimeError("a side of the bench failed (its traceback is above)" if failed
                                   else f"the sides took more than {timeout:g} s") from None
    for p in sides:
        p.join()
    return got["a"], got["b"]


def take_rounds(target: Callable[[Any, Turns], dict], a: Any, b: Any, rounds: int) -> list[tuple[dict, dict]]:
    """``rounds`` of :func:`take_turns`, balanced over what is not A or B: which side leads alternates round by
    round, and every other pair of rounds swaps the two process slots (the first started and the second), for
    the same recipe on both sides ran about 1.5 % slower in the first slot on this machine (4 rounds: 1.017,
    1.012, 0.946, 1.021). Each round's results in (A, B) order."""
    results = []
    for i in range(rounds):
        swap, first_leads = (i // 2) % 2 == 1, i % 2 == 0
        x, y = take_turns(target, b if swap else a, a if swap else b, a_leads=first_leads)
        results.append((y, x) if swap else (x, y))
    return results


def compare(rounds: list[tuple[list[float], list[float]]], skip: int = 1) -> dict:
    """A over B from rounds of paired epochs (the first ``skip`` of each left out: they start workers and
    caches). A round's ratio is that of its sums (every cost counted, however rarely it comes); the figure is
    the median of the rounds' ratios, with their range. The round, not the epoch, is the unit: a process has a
    speed of its own (memory layout, caches), so two identical sides differ by a few per cent from round to
    round (digits-mlp on both sides, 4 rounds on this machine: 0.946-1.021), and epochs of one round are not
    independent samples."""
    each = []
    for a, b in rounds:
        pairs = list(zip(a[skip:], b[skip:]))
        if not pairs:
            raise ValueError("no epoch pairs to compare: train more epochs than are skipped")
        each.append(sum(x for x, _ in pairs) / sum(y for _, y in pairs))
    a_all = [x for a, _ in rounds for x in a[skip:]]
    b_all = [y for _, b in rounds for y in b[skip:]]
    return {"ratio": statistics.median(each), "low": min(each), "high": max(each), "rounds": each,
            "pairs": min(len(a_all), len(b_all)), "a_epoch": statistics.median(a_all),
            "b_epoch": statistics.median(b_all)}
