"""Plots recorded with a run: the loss curves, written as a small self-contained SVG (MLflow's UI shows it).

Drawn by hand rather than with matplotlib: importing matplotlib and rendering a PNG cost a single run
0.3-0.5 s and every sweep trial 0.1 s; this costs a few milliseconds and reads the same in the UI. Its ticks
are :mod:`retort.tracking.axes`' (the report's charts use the same).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from retort.tracking.axes import label as tick_label
from retort.tracking.axes import log_ticks, ticks
from retort.tracking.vocabulary import Metric

WIDTH, HEIGHT = 700, 400
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 48
MAX_POINTS = 1500  # per series; longer ones are thinned evenly (the last point always kept)
# (key, label, colour, stroke width, opacity, marker)
SERIES = ((Metric.TRAIN_LOSS, "train/loss (step)", "#1f77b4", 0.8, 0.4, False),
          (Metric.TRAIN_LOSS_EPOCH, "train/loss (epoch average)", "#ff7f0e", 1.6, 1.0, True),
          (Metric.VAL_LOSS, Metric.VAL_LOSS, "#2ca02c", 1.6, 1.0, True))


def loss_curves(record: Any, path: Path) -> Path | None:
    """The run's loss curves (per-step train/loss, per-epoch averages and val/loss) from the record (a
    resumed run's whole history), logged as the artifact ``loss.svg``; None when no epoch finished."""
    series = {key: record.series(key) for key, *_ in SERIES}
    epochs = series[Metric.TRAIN_LOSS_EPOCH]
    if not epochs:
        return None
    steps = series[Metric.TRAIN_LOSS]
    last_step = steps[-1][0] if steps else len(epochs)
    per_epoch = last_step / len(epochs)  # steps are batches; an epoch is drawn at its last batch
    lines = {"train/loss": [(s / per_epoch, v) for s, v in steps],
             Metric.TRAIN_LOSS_EPOCH: [(float(e), v) for e, v in epochs],
             Metric.VAL_LOSS: [(float(e), v) for e, v in series[Metric.VAL_LOSS]]}
    path.write_text(svg_lines(lines, xlabel="epoch", ylabel="loss"))
    record.log_artifact(path)
    return path


def svg_lines(lines: dict[str, list[tuple[float, float]]], *, xlabel: str, ylabel: str) -> str:
    """An SVG line chart of ``lines`` (key of :data:`SERIES` -> points); the y axis is logarithmic when every
    finite value is positive. Non-finite values break a line."""
    values = [v for pts in lines.values() for _, v in pts if math.isfinite(v)]
    xs = [x for pts in lines.values() for x, _ in pts]
    log = bool(values) and min(values) > 0
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    ty = (math.log10 if log else float)
    ylo, yhi = ty(lo), ty(hi)
    if yhi - ylo < 1e-12:
        ylo, yhi = ylo - 0.5, yhi + 0.5
    pad = (yhi - ylo) * 0.04
    ylo, yhi = ylo - pad, yhi + pad
    xlo, xhi = 0.0, max(xs, default=1.0) or 1.0
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - xlo) / (xhi - xlo) * pw

    def py(v: float) -> float:
        return TOP + (yhi - ty(v)) / (yhi - ylo) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>']
    for x in ticks(xlo, xhi, integer=True):
        out.append(f'<line x1="{px(x):.1f}" y1="{TOP}" x2="{px(x):.1f}" y2="{TOP + ph}" stroke="#e6e6e6"/>'
                   f'<text x="{px(x):.1f}" y="{TOP + ph + 15}" text-anchor="middle">{tick_label(x)}</text>')
    for v in (log_ticks(lo, hi) if log else ticks(ylo, yhi)):
        if ylo <= ty(v) <= yhi:
            out.append(f'<line x1="{LEFT}" y1="{py(v):.1f}" x2="{LEFT + pw}" y2="{py(v):.1f}" stroke="#e6e6e6"/>'
                       f'<text x="{LEFT - 5}" y="{py(v) + 4:.1f}" text-anchor="end">{tick_label(v)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>'
               f'<text x="{LEFT + pw / 2}" y="{HEIGHT - 8}" text-anchor="middle">{escape(xlabel)}</text>'
               f'<text transform="translate(14 {TOP + ph / 2}) rotate(-90)" text-anchor="middle">'
               f'{escape(ylabel)}{" (log scale)" if log else ""}</text>')
    legend = []
    for key, label, colour, width, opacity, marker in SERIES:
        pts = _thin(lines.get(key, []))
        if not pts:
            continue
        for run in _finite_runs(pts):
            coords = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in run)
            out.append(f'<polyline class="series" data-key="{escape(key)}" points="{coords}" fill="none" '
                       f'stroke="{colour}" stroke-width="{width}" stroke-opacity="{opacity}"/>')
            if marker:
                out.extend(f'<circle cx="{px(x):.1f}" cy="{py(v):.1f}" r="2.2" fill="{colour}"/>' for x, v in run)
        legend.append((label, colour))
    if legend:
        out.append(f'<rect x="{LEFT + pw - 196}" y="{TOP + 2}" width="192" height="{16 * len(legend) + 4}" '
                   f'fill="white" fill-opacity="0.85" stroke="#ccc"/>')
    for i, (label, colour) in enumerate(legend):
        y = TOP + 14 + 16 * i
        out.append(f'<line x1="{LEFT + pw - 190}" y1="{y - 4}" x2="{LEFT + pw - 170}" y2="{y - 4}" stroke="{colour}" '
                   f'stroke-width="2"/><text x="{LEFT + pw - 165}" y="{y}">{escape(label)}</text>')
    out.append("</svg>\n")
    return "\n".join(out)


def _thin(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return list(points)
    stride = math.ceil(len(points) / MAX_POINTS)
    return list(points[::stride]) + ([points[-1]] if (len(points) - 1) % stride else [])


def _finite_runs(points: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = [[]]
    for x, v in points:
        if math.isfinite(v):
            runs[-1].append((x, v))
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]
