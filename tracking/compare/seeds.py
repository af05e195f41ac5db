"""Seeds as an axis: a group's value per seed, its mean, spread and confidence interval, and whether two groups
differ beyond seed noise.

A group is the runs that differ only by seed. Runs with the same seed in one group (a run, its rerun, a
rerun on other data: ``retort.rerun_of``) are repeats, not seeds: their values are averaged into that seed's
one value, so that n counts seeds and the spread is the seeds'.

Two groups are compared seed by seed (the same seed gives both the same split, shuffling and initial
weights, so pairing removes that noise): a paired t-test (``scipy.stats.ttest_rel``, two-sided) over the
seeds both groups ran, at :data:`LEVEL`. Wilcoxon's signed-rank test would assume less, but with the 3 to 5
seeds of everyday use it cannot reach p < 0.05 at all (its smallest p with 3 pairs is 0.25).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

LEVEL = 0.95  # confidence intervals, and the paired test at 1 - LEVEL


@dataclass(frozen=True)
class Spread:
    """One group's values over its seeds."""

    n: int  # seeds
    mean: float | None
    std: float | None  # sample standard deviation (n - 1) over seeds; None under 2 seeds
    low: float | None  # the LEVEL confidence interval of the mean (Student's t); None under 2 seeds
    high: float | None


@dataclass(frozen=True)
class Verdict:
    """How group ``a`` compares with group ``b`` by seed: better, worse, within noise, or too few seeds."""

    word: str
    p: float | None  # the paired test's p-value; None when it could not run
    pairs: int  # seeds both groups ran
    delta: float | None  # mean of a - b over those seeds

    def __str__(self) -> str:
        if self.p is None or self.word == "too few seeds":
            return self.word
        return f"{self.word} (p={self.p:.2g})"


def per_seed(values: Mapping[str | None, list[float]]) -> dict[str | None, float]:
    """Each seed's one value: the mean of its repeats' finite values (a seed without any is left out)."""
    out = {}
    for seed, found in values.items():
        finite = [v for v in found if math.isfinite(v)]
        if finite:
            out[seed] = statistics.fmean(finite)
    return out


def spread(by_seed: Mapping[str | None, float], level: float = LEVEL) -> Spread:
    values = list(by_seed.values())
    n = len(values)
    if n == 0:
        return Spread(0, None, None, None, None)
    mean = statistics.fmean(values)
    if n < 2:
        return Spread(n, mean, None, None, None)
    from scipy.stats import t

    std = statistics.stdev(values)
    half = float(t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return Spread(n, mean, std, mean - half, mean + half)


def verdict(a: Mapping[str | None, float], b: Mapping[str | None, float], direction: str,
            level: float = LEVEL) -> Verdict:
    """Group ``a`` against group ``b`` (values by seed) for a metric to ``direction`` (minimize | maximize)."""
    seeds = [s for s in a if s in b]
    diffs = [a[s] - b[s] for s in seeds]
    if len(diffs) < 2:
        return Verdict("too few seeds", None, len(diffs), statistics.fmean(diffs) if diffs else None)
    delta = statistics.fmean(diffs)
    if all(d == diffs[0] for d in diffs):  # no spread: the test is undefined, the answer is not
        p = 1.0 if diffs[0] == 0 else 0.0
    else:
        import warnings

        from scipy.stats import ttest_rel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    if not math.isfinite(p) or p >= 1 - level:
        return Verdict("within noise", p if math.isfinite(p) else None, len(diffs), delta)
    better = delta < 0 if direction == "minimize" else delta > 0
    return Verdict("better" if better else "worse", p, len(diffs), delta)
