"""``retort sweep --cap-batch-size``: one batch-size probe before the study starts, and the space's batch
sizes above what fits dropped.

The probe is ``retort batch-size``'s (:func:`retort.recipes.tune_batch.find_batch_size`), run on the base
recipe on one device, searched on to the largest batch that fits (not only to its power-of-two answer). A
choice (or an integer range's top) is kept when it is at most that largest batch less the margin; a search
that reached the training split's size caps nothing. The other swept fields are at the base recipe's values
while probing: a space that also sweeps the model's size can still propose trials that do not fit, which the
out-of-memory constraint then teaches the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from retort.plugins.errors import RecipeError

PATH = "data.batch_size"
MARGIN = 0.2  # retort batch-size's default


@dataclass
class Cap:
    largest: int                 # the largest batch that fits
    cap: int | None              # the largest batch size kept; None: the training split ended the search
    kept: list[Any] = field(default_factory=list)     # the choices (or the range as low..high) searched
    dropped: list[Any] = field(default_factory=list)  # what was left out
    bound: int | None = None     # --max-memory in bytes, if given

    def line(self) -> str:
        from retort.recipes.tune_batch import human

        bound = f"peak memory at most {human(self.bound)}" if self.bound else "device memory"
        if self.cap is None:
            return f"batch sizes: the whole training split ({self.largest} rows) fits in {bound}; nothing dropped"
        dropped = ", ".join(map(str, self.dropped)) or "nothing"
        return (f"batch sizes capped at {self.cap} (largest that fits in {bound}: {self.largest}, less the "
                f"{MARGIN:g} margin): dropped {dropped}")


def cap_batch_sizes(plan: Any, base: Any, max_memory: int | None) -> Cap:
    """Probe ``base`` and append to ``plan.overrides`` the space with its batch sizes capped (when any is
    dropped). Raises :class:`RecipeError` (nothing recorded yet) when the space has no batch size to cap,
    when a CPU search has no bound, or when no batch size of the space fits."""
    from retort.recipes.sweep.space import canonical, space_of
    from retort.recipes.tune_batch import find_batch_size
    from retort.recipes.tune_lr import prepare, probe_trainer

    space = base.sweep["space"]
    path = next((p for p in space if canonical(p, base) == PATH), None)
    if path is None:
        raise RecipeError(f"sweep.space has no {PATH} to cap; add one, e.g. {PATH}: {{choices: [16, 32, 64, 128]}}",
                          field="--cap-batch-size", source=base.source)
    param, kind = space_of(base)[path]
    if max_memory is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="retort-cap-") as tmp:
            device = probe_trainer(base, [], 1, tmp).strategy.root_device.type
        if device != "cuda":
            raise RecipeError(f"nothing runs out of memory on {device} in a few steps: give the bound of a training "
                              "step's peak memory, e.g. --max-memory 512MB", field="--max-memory")
    search = find_batch_size(prepare(base), max_memory=max_memory, margin=MARGIN, exact=True)
    top = int(search.largest * (1 - MARGIN)) if search.failed is not None else None
    if kind == "choices":
        kept = [c for c in param.choices if top is None or c <= top]
        dropped = [c for c in param.choices if c not in kept]
        entry, empty = {"choices": kept}, not kept
    else:
        step = int(param.step or 1)
        high = int(param.high) if top is None else min(int(param.high), top)
        high = int(param.low) + (high - int(param.low)) // step * step
        kept, dropped = [f"{int(param.low)}..{high}"], ([f"{high + step}..{int(param.high)}"]
                                                         if high < int(param.high) else [])
        entry = {k: v for k, v in space[path].items() if v is not None}
        entry["high"], empty = high, high < int(param.low)
    if empty:
        smallest = min(param.choices) if kind == "choices" else int(param.low)
        raise RecipeError(f"no batch size of the space fits: the largest that fits is {search.largest}, "
                          f"{top} less the {MARGIN:g} margin, below the smallest, {smallest}",
                          field=f"sweep.space.{path}", source=base.source)
    if dropped:
        plan.overrides = [*plan.overrides, ("sweep.space", {**space, path: entry})]
    return Cap(largest=search.largest, cap=top, kept=kept, dropped=dropped, bound=max_memory)
