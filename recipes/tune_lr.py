"""``retort lr-find RECIPE``: the learning-rate range test, to centre a sweep's learning-rate range.

The recipe's own loop (:meth:`recipes.module.RecipeModule.training_step`: forward, loss, backward, clipping,
update) trains on the training split for ``--steps`` batches while a callback sets the learning rate of every
parameter group before each batch, rising exponentially from ``--min-lr`` to ``--max-lr``::

    for i, (x, y) in enumerate(train_loader):         # epochs as needed, seeded shuffles
        lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
        loss = step(x, y, lr)                          # the recipe's training step
        smooth = beta * smooth + (1 - beta) * loss     # bias-corrected, as fastai and Lightning do
        stop if loss is not finite or smooth > diverge * best

The suggestion is the lr where the smoothed loss falls fastest against log(lr), before its minimum; the range
is ``[suggestion / 10, min(10 * suggestion, the lr of the lowest smoothed loss)]``. A copy of the module
trains, so the recipe's weights stay as built, and nothing is recorded in MLflow (a probe, not a run).

``beta`` is 0.9, not fastai's and Lightning's 0.98: the average lags about ``beta / (1 - beta)`` steps, 49 at
0.98, which over 100 steps spanning eight decades of lr shifts the curve by about four decades; 0.9 lags
under one. (On the shipped recipes 0.98 gave a suggestion of 4e-7 for diabetes-mse at 40 steps, 0.9 gave 0.013.)

Lightning's ``Tuner.lr_find`` cannot do this: it swaps in its own scheduler and relies on automatic optimization
to step it and to return the loss, while ``RecipeModule`` optimizes manually (it fails there with a TypeError).
The recipe's scheduler is left out for the same reason: the test owns the learning rate.

``load_recipe``, ``prepare``, ``probe_trainer`` and ``probe_copy`` are shared with ``retort batch-size``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retort.plugins.errors import RecipeError

HELP = "learning-rate range test: suggest an lr and a range to centre a sweep on (a probe: records no MLflow run)"

EXAMPLES = """examples:
  retort lr-find digits-mlp                       # prints suggested_lr and suggested_range, saves lr-find.png
  retort lr-find my.yaml -s optimizer=adamw --plot adamw-lr.png
  retort lr-find digits-mlp --min-lr 1e-5 --max-lr 1 --steps 200

The test trains the recipe's model with its loop, optimizer and data (its scheduler left out) while raising
the learning rate exponentially from --min-lr to --max-lr, one value per batch, and stops when the smoothed
loss passes --diverge times its best. The last lines are `suggested_lr: V` (the steepest fall of the loss)
and `suggested_range: [LOW, HIGH]`; paste the printed sweep snippet into the recipe. The weights are not
kept and no MLflow run is recorded."""


# --- shared with tune_batch ---------------------------------------------------------------------

def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """``RECIPE [-s k=v]...`` as ``retort run`` takes them."""
    parser.add_argument("recipe", metavar="RECIPE", help="a recipe file or a shipped recipe's name")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override a field by dotted path (repeatable), e.g. -s optimizer.lr=0.01")


def load_recipe(args: argparse.Namespace) -> Any:
    from retort import recipes

    return recipes.load(args.recipe, args.overrides)


def probe_trainer(recipe: Any, callbacks: Sequence[Any], max_steps: int, root: str) -> Any:
    """A Trainer for a few training steps of ``recipe`` on ONE device, with no validation, logger or checkpoints.

    One device because the probes measure one process (Lightning's tuner does not support DDP either); the
    recipe's batch size is per device under DDP, so the answers carry over.
    """
    import pytorch_lightning as pl

    t = recipe.trainer
    devices = t["devices"]
    devices = [devices[0]] if isinstance(devices, list) and devices else 1
    return pl.Trainer(
        accelerator=t["accelerator"], devices=devices, num_nodes=1, precision=t["precision"],
        deterministic=t["deterministic"], max_epochs=-1, max_steps=max_steps, callbacks=list(callbacks),
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root,
    )


def prepare(recipe: Any) -> Any:
    """Seed and build the recipe as ``retort run`` does (same initial weights); bad input raises RecipeError."""
    import pytorch_lightning as pl
    import torch

    from retort.recipes.runner import _quiet_lightning, build

    _quiet_lightning()
    if recipe.trainer["threads"]:
        torch.set_num_threads(recipe.trainer["threads"])
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    return build(recipe)


def probe_copy(built: Any, **recipe_changes: Any) -> Any:
    """A copy of ``built`` whose module a probe may train: the caller's weights and loop counters stay as they
    were (Lightning drops the trainer when a module is copied)."""
    import copy
    from dataclasses import replace

    module = copy.deepcopy(built.module)
    if recipe_changes:
        module.recipe = replace(module.recipe, **recipe_changes)
    return replace(built, recipe=module.recipe, module=module)


def positive(name: str, value: float, *, integer: bool = False, at_least: float = 0.0) -> None:
    if not (math.isfinite(value) and value > at_least) or (integer and value != int(value)):
        kind = "an integer" if integer else "a number"
        raise RecipeError(f"{name} must be {kind} above {at_least:g}, got {value:g}", field=name)


def sweep_snippet(recipe: Any, path: str, entry: dict[str, Any], purpose: str) -> str:
    """The recipe YAML and the ``-s`` override that put ``entry`` at ``sweep.space[path]``, keeping the rest.

    The override replaces the whole space: a dotted ``-s sweep.space.optimizer.lr=...`` would be read as
    the nested path ``optimizer`` / ``lr``.
    """
    import yaml

    from retort.recipes.yamlio import dumps

    space: dict[str, Any] = {}
    for key, value in ((recipe.sweep or {}).get("space") or {}).items():
        space[key] = {k: v for k, v in value.items() if v is not None and not (k == "log" and v is False)}
    space[path] = entry
    block = dumps({"sweep": {"space": {path: entry}}}).rstrip("\n")
    flow = yaml.safe_dump(space, default_flow_style=True, sort_keys=False, width=math.inf).strip()
    return (f"{purpose}, put in the recipe:\n{_indent(block)}\n"
            f"or add to the command line (the recipe's other sweep.space entries kept):\n"
            f"  -s 'sweep.space={flow}'")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def sig3(value: float) -> float:
    """Three significant digits: a suggestion is a rough guide, not a measurement."""
    return float(f"{value:.3g}")


# --- the range test --------------------------------------------------------------------------

@dataclass
class RangeTest:
    """The test's record: the lr of each step, its batch loss and the smoothed loss, and the suggestion."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    low: float
    high: float
    stopped: str  # why the test ended early ("" when it ran all its steps)


def lr_schedule(min_lr: float, max_lr: float, steps: int) -> list[float]:
    ratio = max_lr / min_lr
    return [min_lr * ratio ** (i / (steps - 1)) for i in range(steps)]


def _range_callback(lrs: list[float], beta: float, diverge: float) -> Any:
    import pytorch_lightning as pl

    class LRRange(pl.Callback):
        """Sets the step's lr before each batch and stops once the smoothed loss diverges."""

        def __init__(self) -> None:
            self.losses: list[float] = []
            self.smoothed: list[float] = []
            self.avg, self.best = 0.0, math.inf
            self.stopped = ""

        def on_train_batch_start(self, trainer: pl.Trainer, m: Any, batch: Any, i: int) -> None:
            lr = lrs[len(self.losses)]
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = lr

        def on_train_batch_end(self, trainer: pl.Trainer, m: Any, outputs: Any, batch: Any, i: int) -> None:
            loss = float(m.step_losses[-1])
            self.losses.append(loss)
            if not math.isfinite(loss):
                self.smoothed.append(math.nan)
                self.stopped = f"the loss became {loss} at step {len(self.losses)}"
                trainer.should_stop = True
                return
            self.avg = beta * self.avg + (1 - beta) * loss
            smooth = self.avg / (1 - beta ** len(self.losses))
            self.smoothed.append(smooth)
            if smooth > diverge * self.best:
                self.stopped = f"the smoothed loss passed {diverge:g}x its best at step {len(self.losses)}"
                trainer.should_stop = True
            self.best = min(self.best, smooth)
            if len(self.losses) == len(lrs):  # max_steps counts updates, not batches, under accumulation
                trainer.should_stop = True

    return LRRange()


def suggest(lrs: Sequence[float], smoothed: Sequence[float], min_lr: float) -> tuple[float, float, float]:
    """(suggestion, low, high): the steepest fall of the smoothed loss against log10(lr), before its minimum.

    The first tenth of the steps is skipped, as Lightning does: the smoothed average is still warming up.
    """
    import numpy as np

    y = np.asarray(smoothed, dtype=float)
    x = np.log10(np.asarray(lrs[: len(y)], dtype=float))
    finite = np.flatnonzero(np.isfinite(y))
    skip = max(1, len(lrs) // 10)
    lowest = int(finite[np.argmin(y[finite])]) if len(finite) else -1
    window = finite[(finite >= skip) & (finite <= lowest)]
    if len(window) < 3:
        raise RecipeError(
            f"the loss did not fall over the tested range (lowest smoothed loss at step {lowest + 1} of "
            f"{len(y)}); lower --min-lr or raise --steps", field="--min-lr")
    slope = np.gradient(y[window], x[window])
    best = int(window[int(np.argmin(slope))])
    suggestion = float(lrs[best])
    low = max(min_lr, suggestion / 10)
    high = max(suggestion, min(10 * suggestion, float(lrs[lowest])))
    return suggestion, low, high


def find_lr(built: Any, *, min_lr: float = 1e-7, max_lr: float = 10.0, steps: int = 100, beta: float = 0.9,
            diverge: float = 4.0) -> RangeTest:
    """Run the range test on a copy of ``built`` (``recipes.runner.build``); its own module is not trained."""
    import contextlib
    import tempfile

    import pytorch_lightning as pl

    from retort.plugins.callbacks import NonFiniteLoss

    if not min_lr < max_lr:
        raise RecipeError(f"--min-lr ({min_lr:g}) must be below --max-lr ({max_lr:g})", field="--min-lr")
    lrs = lr_schedule(min_lr, max_lr, steps)
    probe = probe_copy(built, scheduler=None)  # the test owns the lr
    callback = _range_callback(lrs, beta, diverge)
    pl.seed_everything(built.recipe.seed, workers=True, verbose=False)  # dropout draws: the same test every call
    with tempfile.TemporaryDirectory(prefix="retort-lr-find-") as tmp:
        trainer = probe_trainer(probe.recipe, [callback], steps, tmp)
        # the loop fails the epoch that held a non-finite loss; the callback has recorded it and stopped
        with contextlib.suppress(NonFiniteLoss):
            trainer.fit(probe.module, datamodule=probe.datamodule)
    n = len(callback.losses)
    suggestion, low, high = suggest(lrs[:n], callback.smoothed, min_lr)
    return RangeTest(lrs[:n], callback.losses, callback.smoothed, suggestion, low, high, callback.stopped)


def plot(test: RangeTest, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    try:
        ax.plot(test.lrs, test.losses, color="0.75", linewidth=1, label="batch loss")
        ax.plot(test.lrs, test.smoothed, color="C0", linewidth=2, label="smoothed loss")
        ax.axvspan(test.low, test.high, color="C2", alpha=0.15, label="suggested range")
        ax.axvline(test.suggestion, color="C3", linestyle="--", label=f"suggested lr {sig3(test.suggestion):g}")
        finite = [v for v in test.smoothed if math.isfinite(v)]
        if finite:  # keep the divergence from flattening the interesting part
            top = min(max(finite), 4 * min(finite) if min(finite) > 0 else max(finite))
            bottom = min(min(finite), min((v for v in test.losses if math.isfinite(v)), default=min(finite)))
            ax.set_ylim(bottom - 0.05 * abs(top - bottom), top + 0.05 * abs(top - bottom) + 1e-12)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title(f"lr range test: {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


# --- the command --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)
    parser.add_argument("--min-lr", type=float, default=1e-7, metavar="LR", help="first learning rate (1e-7)")
    parser.add_argument("--max-lr", type=float, default=10.0, metavar="LR", help="last learning rate (10)")
    parser.add_argument("--steps", type=int, default=100, metavar="N",
                        help="training steps, one learning rate each, exponentially spaced (100)")
    parser.add_argument("--diverge", type=float, default=4.0, metavar="X",
                        help="stop when the smoothed loss passes X times its best (4)")
    parser.add_argument("--smooth", type=float, default=0.9, metavar="BETA",
                        help="weight of the past in the loss's moving average, 0 to <1 (0.9)")
    parser.add_argument("--plot", default="lr-find.png", metavar="FILE",
                        help="where to save the plot of loss against lr, a .png (lr-find.png)")


def main(args: argparse.Namespace) -> int:
    positive("--min-lr", args.min_lr)
    positive("--max-lr", args.max_lr)
    positive("--steps", args.steps, integer=True, at_least=4)
    positive("--diverge", args.diverge, at_least=1)
    if not 0 <= args.smooth < 1:
        raise RecipeError(f"--smooth must be in [0, 1), got {args.smooth:g}", field="--smooth")
    if args.min_lr >= args.max_lr:
        raise RecipeError(f"--min-lr ({args.min_lr:g}) must be below --max-lr ({args.max_lr:g})", field="--min-lr")
    path = Path(args.plot)
    if path.suffix.lower() != ".png":
        raise RecipeError(f"the plot is a PNG file; give a name ending in .png, got {args.plot!r}", field="--plot")
    if not path.parent.is_dir():
        raise RecipeError(f"folder {str(path.parent)!r} does not exist", field="--plot")
    recipe = load_recipe(args)
    from retort.plugins.optimizers import lr_field

    lr = lr_field(recipe.optimizer)  # a chain's is its main rule's
    if lr is None:
        raise RecipeError(f"optimizer {recipe.optimizer['name']!r} has no learning rate to test",
                          field="optimizer.name")
    built = prepare(recipe)
    try:
        test = find_lr(built, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps, beta=args.smooth,
                       diverge=args.diverge)
    except RecipeError:
        raise
    except Exception as exc:  # a failure inside the loop (device out of memory, a plugin's bug)
        print(f"error: the range test failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    plot(test, path, recipe.name)
    suggestion, low, high = sig3(test.suggestion), sig3(test.low), sig3(test.high)
    ran = f"{len(test.lrs)} of {args.steps} steps, lr {args.min_lr:g} to {test.lrs[-1]:.3g}"
    print(f"lr-find {recipe.name}: {ran}" + (f" (stopped: {test.stopped})" if test.stopped else ""))
    i = test.lrs.index(test.suggestion)
    print(f"steepest fall of the smoothed loss at lr {suggestion:g} (smoothed loss {test.smoothed[i]:.4g}); "
          f"lowest smoothed loss {min(v for v in test.smoothed if math.isfinite(v)):.4g}")
    print(f"plot: {path}")
    print(sweep_snippet(recipe, f"optimizer.{lr}", {"low": low, "high": high, "log": True}, "to centre a sweep on it"))
    print(f"suggested_lr: {suggestion:g}")
    print(f"suggested_range: [{low:g}, {high:g}]")
    return 0
