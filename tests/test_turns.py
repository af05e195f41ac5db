"""The benches' turn-taking (scripts/turns.py): two real processes, one epoch each in turn, never at once."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from turns import compare, take_rounds, take_turns


def _slot(args: str, turns) -> dict:
    """Which side this is, which process slot it ran in and whether it led (its first epoch started first)."""
    import multiprocessing

    turns.next()
    started = time.monotonic()
    turns.done()
    return {"side": args, "name": multiprocessing.current_process().name, "started": started}


def _epochs(args: tuple[int, float, bool], turns) -> dict:
    """``epochs`` epochs of ``seconds`` each, with their monotonic start and end; fails at the second when told."""
    epochs, seconds, fail = args
    spans = []
    for i in range(epochs):
        turns.next()
        start = time.monotonic()
        if fail and i == 1:
            raise RuntimeError("planted failure")
        time.sleep(seconds)
        spans.append((start, time.monotonic()))
    turns.done()
    return {"spans": spans}


@pytest.mark.parametrize("a_leads", [True, False])
def test_the_sides_take_turns_one_epoch_each_never_at_once(a_leads):
    a, b = take_turns(_epochs, (4, 0.05, False), (4, 0.05, False), a_leads=a_leads, timeout=120)
    assert len(a["turns"]) == len(b["turns"]) == 4
    assert all(0.05 <= t < 0.5 for t in a["turns"] + b["turns"])
    spans = sorted([(s, e, "a") for s, e in a["spans"]] + [(s, e, "b") for s, e in b["spans"]])
    assert [side for *_, side in spans] == (["a", "b"] if a_leads else ["b", "a"]) * 4
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))  # no two epochs overlap


def test_a_side_that_stops_early_leaves_the_other_to_finish_alone():
    a, b = take_turns(_epochs, (2, 0.02, False), (5, 0.02, False), timeout=120)
    assert (len(a["turns"]), len(b["turns"])) == (2, 5)


def test_a_failing_side_ends_the_bench_with_an_error_not_a_hang():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="failed"):
        take_turns(_epochs, (4, 0.02, False), (4, 0.02, True), timeout=120)
    assert time.monotonic() - start < 60


def test_compare_takes_the_median_of_the_rounds_ratios_of_sums():
    rounds = [([9.0, 1.0, 3.0], [9.0, 1.0, 2.0]),  # the first epoch of each left out: 4/3
              ([5.0, 2.0, 2.0], [5.0, 2.0, 2.0]),  # 1
              ([0.0, 3.0, 3.0], [0.0, 2.0, 2.0])]  # 1.5
    c = compare(rounds)
    assert c["rounds"] == pytest.approx([4 / 3, 1.0, 1.5])
    assert (c["ratio"], c["low"], c["high"], c["pairs"]) == (pytest.approx(4 / 3), 1.0, 1.5, 6)
    with pytest.raises(ValueError, match="no epoch pairs"):
        compare([([1.0], [1.0])])


def test_rounds_are_balanced_over_the_leader_and_the_process_slots():
    rounds = take_rounds(_slot, "A", "B", 4)
    assert [(a["side"], b["side"]) for a, b in rounds] == [("A", "B")] * 4  # results in (A, B) order
    slots = [a["name"] == "turns-first" for a, _ in rounds]  # the process started first
    leads = [a["started"] < b["started"] for a, b in rounds]
    assert sorted(zip(slots, leads)) == sorted([(True, True), (True, False), (False, True), (False, False)])
