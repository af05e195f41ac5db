"""``retort batch-size RECIPE``: the largest batch size whose training step fits in memory, to cap a sweep.

Each try trains ``--steps`` steps of the recipe's own loop at one batch size on ONE device (Lightning's
``Tuner.scale_batch_size`` does not support DDP; the recipe's batch size is per device, so the answer carries
over) and measures the step's peak memory::

    b = 1
    while b fits and b < n_train: b = min(2 * b, n_train)      # doubling, capped by the training split
    binary search between the last b that fit and the first that did not
    batch_size = power of two <= floor(largest * (1 - margin))  # the margin only when memory was the limit

"Fits" means: no out-of-memory error, and a peak at most ``--max-memory`` when given. The peak is measured as:

- CUDA: ``torch.cuda.max_memory_allocated`` over the try (parameters, batch, activations, gradients,
  optimizer state, temporaries: everything the caching allocator handed out).
- CPU (and other devices): the same quantity counted by a ``TorchDispatchMode`` that sees every tensor an
  operation returns, adds its storage's bytes when first seen and subtracts them when the storage is freed
  (a weak reference's callback), plus the parameters and buffers held before the step. The process's RSS
  would also count Python, libraries and allocator caches, and never shrinks between tries; the dispatch
  count is exact for tensor storage and the same on every run. The data set's own tensors are not counted
  (they are loaded once, whatever the batch size); a batch sliced from them is.

On CPU nothing runs out of memory in a few steps, so without ``--max-memory`` the search ends at the
training split's size. Nothing is recorded in MLflow (a probe, not a run); copies of the module train.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from retort.plugins.errors import RecipeError
from retort.recipes.tune_lr import (
    add_recipe_arguments,
    load_recipe,
    positive,
    prepare,
    probe_copy,
    probe_trainer,
    sweep_snippet,
)

HELP = "find the largest batch size whose training step fits in memory (a probe: records no MLflow run)"

EXAMPLES = """examples:
  retort batch-size digits-cnn                         # on the recipe's device; prints batch_size: N last
  retort batch-size digits-mlp --max-memory 512MB      # bound a CPU search by a step's peak memory
  retort batch-size my.yaml -s trainer.accelerator=gpu --margin 0.3

Batch sizes double from 1 until a training step runs out of memory, passes --max-memory or reaches the
training split's size, then a binary search finds the largest that fits. The answer is that size less
--margin (when memory was the limit), rounded down to a power of two; paste the printed
sweep.space.data.batch_size choices into the recipe (or let retort sweep --cap-batch-size probe and cap
them by itself). One device is used (per-device batch size under DDP).
Sizes: 512MB = 512*10^6 bytes, 512MiB or 512M = 512*2^20. The weights are not kept and no MLflow run is
recorded."""

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str, field: str = "--max-memory") -> int:
    """``"512MB"`` -> 512000000, ``"1.5GiB"`` -> 1610612736, ``"4096"`` -> 4096 bytes (``field``: the option read)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise RecipeError(f"cannot read {text!r} as a size; give bytes or a number with a unit: B, KB, MB, GB, TB "
                          "(powers of 1000) or KiB, MiB, GiB, TiB, K, M, G, T (powers of 1024), e.g. 512MB",
                          field=field)
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise RecipeError(f"{field} must be above zero, got {text!r}", field=field)
    return size


def human(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def power_of_two_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


# --- measuring a step's peak memory ----------------------------------------------------------------

def _tensor_meter() -> type:
    """A TorchDispatchMode counting live tensor storage bytes and their peak (class made on first use)."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.weak import WeakIdKeyDictionary

    class TensorMeter(TorchDispatchMode):
        def __init__(self, held: list[Any], ignored: list[Any]) -> None:
            super().__init__()
            self.live = self.peak = 0
            self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()  # storage -> its weakref (keeps it alive)
            for t in ignored:  # seen, never counted
                self._seen[t.untyped_storage()] = None
            for t in held:
                self._add(t)

        def _add(self, t: torch.Tensor) -> None:
            st = t.untyped_storage()
            if st in self._seen:  # views, in-place results and tensors met before
                return
            n = st.nbytes()
            self._seen[st] = weakref.ref(st, lambda _, n=n: self._free(n))
            self.live += n
            self.peak = max(self.peak, self.live)

        def _free(self, n: int) -> None:
            self.live -= n

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    self._add(t)
            return out

    return TensorMeter


def _is_oom(exc: BaseException) -> bool:
    import torch
    from pytorch_lightning.utilities.memory import is_oom_error

    return isinstance(exc, torch.OutOfMemoryError) or is_oom_error(exc)


def measure(built: Any, batch_size: int, steps: int = 2) -> int | None:
    """Peak memory in bytes of ``steps`` training steps at ``batch_size``; None when it ran out of memory."""
    import tempfile

    import torch

    built = probe_copy(built)
    module, datamodule = built.module, built.datamodule
    datamodule.batch_size, saved = batch_size, datamodule.batch_size
    with tempfile.TemporaryDirectory(prefix="retort-batch-size-") as tmp:
        trainer = probe_trainer(built.recipe, [], steps, tmp)
        device = trainer.strategy.root_device
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                trainer.fit(module, datamodule=datamodule)
                return int(torch.cuda.max_memory_allocated(device))
            held = [*module.parameters(), *module.buffers()]
            ignored = [t for split in (built.splits.train, built.splits.val, built.splits.test) for t in split]
            with _tensor_meter()(held, ignored) as meter:
                trainer.fit(module, datamodule=datamodule)
            return meter.peak
        except Exception as exc:
            if not _is_oom(exc):
                raise
            return None
        finally:
            datamodule.batch_size = saved
            del trainer
            if device.type == "cuda":
                from pytorch_lightning.utilities.memory import garbage_collection_cuda

                garbage_collection_cuda()


@dataclass
class BatchSearch:
    """Every try (batch size -> peak bytes, None for out of memory) and the answer."""

    tries: dict[int, int | None] = field(default_factory=dict)
    largest: int = 0  # the largest batch size known to fit
    failed: int | None = None  # the smallest known not to fit (None: the training split ended the search)
    batch_size: int = 0  # the answer: margin taken off (when memory was the limit), rounded down to a power of two
    n_train: int = 0


def find_batch_size(built: Any, *, max_memory: int | None = None, margin: float = 0.2, steps: int = 2,
                    report: Callable[[str], None] | None = None, exact: bool = False) -> BatchSearch:
    """Doubling then binary search for the largest batch whose ``steps`` training steps fit (on copies of the
    module: ``built`` is not trained).

    The binary search stops once every size left between ``largest`` and ``failed`` gives the same answer
    (the answer is rounded down to a power of two, so the last few tries could not change it); ``exact``
    searches on to the largest size that fits (a sweep caps its own choices by it).
    """
    import pytorch_lightning as pl

    n_train = built.splits.info.n_train
    if n_train < 1:
        raise RecipeError("the training split is empty", field="data")
    search = BatchSearch(n_train=n_train)

    def fits(b: int) -> bool:
        pl.seed_everything(built.recipe.seed, workers=True, verbose=False)
        peak = measure(built, b, steps)
        search.tries[b] = peak
        ok = peak is not None and (max_memory is None or peak <= max_memory)
        if report is not None:
            what = "out of memory" if peak is None else f"peak {human(peak)}"
            report(f"  batch {b:>6}: {what}" + ("" if ok else "  (does not fit)"))
        return ok

    def answer(largest: int) -> int:
        return power_of_two_floor(math.floor(largest * (1 - margin)))

    b = 1
    while True:
        if not fits(b):
            search.failed = b
            break
        search.largest = b
        if b >= n_train:
            break
        b = min(2 * b, n_train)
    while search.failed is not None and search.failed - search.largest > 1 \
            and (exact or answer(search.largest) != answer(search.failed - 1)):
        mid = (search.largest + search.failed) // 2
        if fits(mid):
            search.largest = mid
        else:
            search.failed = mid
    if search.largest == 0:
        peak = search.tries[1]
        if peak is None:
            raise RecipeError("even a batch of 1 runs out of device memory", field="trainer.accelerator")
        raise RecipeError(f"even a batch of 1 needs {human(peak)} ({peak} bytes), more than --max-memory "
                          f"{human(max_memory or 0)}", field="--max-memory")
    # the margin guards against running out of memory; a search ended by the data needs none
    search.batch_size = answer(search.largest) if search.failed is not None else power_of_two_floor(search.largest)
    return search


def batch_choices(batch_size: int, count: int = 6) -> list[int]:
    """Powers of two up to ``batch_size``, at most ``count`` of them: the sweep's choices."""
    return [batch_size >> k for k in range(count - 1, -1, -1) if batch_size >> k >= 1]


# --- the command --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)
    parser.add_argument("--max-memory", metavar="SIZE",
                        help="largest peak memory a training step may use, e.g. 512MB or 2GiB (default: none on "
                             "CPU; the device's memory on a GPU)")
    parser.add_argument("--margin", type=float, default=0.2, metavar="FRACTION",
                        help="safety margin taken off the largest batch that fits, 0 to <1 (0.2)")
    parser.add_argument("--steps", type=int, default=2, metavar="N",
                        help="training steps per try; the second has the optimizer's state allocated (2)")


def main(args: argparse.Namespace) -> int:
    if not 0 <= args.margin < 1:
        raise RecipeError(f"--margin must be in [0, 1), got {args.margin:g}", field="--margin")
    positive("--steps", args.steps, integer=True)
    max_memory = parse_size(args.max_memory) if args.max_memory is not None else None
    recipe = load_recipe(args)
    built = prepare(recipe)
    report = None if args.quiet else print
    device = recipe.trainer["accelerator"]
    if report is not None:
        bound = f"at most {human(max_memory)}" if max_memory else "no bound but out-of-memory errors"
        report(f"batch-size {recipe.name}: {args.steps} training steps per try on one {device} device, "
               f"peak memory {bound}, up to the training split's {built.splits.info.n_train} rows")
    try:
        search = find_batch_size(built, max_memory=max_memory, margin=args.margin, steps=args.steps,
                                 report=report)
    except RecipeError:
        raise
    except Exception as exc:  # a failure inside the loop other than running out of memory
        print(f"error: the batch-size search failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if search.failed is not None:
        largest = str(search.largest) if search.failed - search.largest == 1 else \
            f"{search.largest} to {search.failed - 1} (the search stops once the answer is decided)"
        print(f"largest batch that fits: {largest}; less the {args.margin:g} margin and rounded down to a power "
              f"of two: {search.batch_size}")
    else:
        why = "" if max_memory else " (no memory bound: pass --max-memory SIZE to set one on CPU)"
        print(f"largest batch that fits: {search.largest}, the whole training split{why}; rounded down to a "
              f"power of two: {search.batch_size}")
    peak = search.tries.get(search.batch_size)
    if peak is not None:
        print(f"peak memory of a training step at batch {search.batch_size}: {human(peak)}")
    print(sweep_snippet(recipe, "data.batch_size", {"choices": batch_choices(search.batch_size)},
                        "to cap a sweep's batch sizes"))
    print(f"batch_size: {search.batch_size}")
    return 0
