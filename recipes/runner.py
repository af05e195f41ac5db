"""Run a recipe: build everything (bad input stops here, before anything is recorded), then train, test
and record one MLflow run whose final status says how it ended."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import plugins

from .errors import Interrupted, RecipeError, RunFailed
from .schema import Recipe, plugin_spec


@dataclass
class RunResult:
    run_id: str | None
    metrics: dict[str, float]
    status: str = "FINISHED"
    best_checkpoint: str | None = None
    epochs: int = 0
    fit_seconds: float = 0.0
    rank: int = 0  # the process's global rank under DDP; only rank zero records and reports


@dataclass
class Built:
    """Everything a run needs, built and checked before anything is recorded."""

    recipe: Recipe
    splits: Any
    module: Any
    datamodule: Any


# --- build: every bad input is found here ---------------------------------------------------------

def build(recipe: Recipe, world_size: int = 1) -> Built:
    """Load the data and build model, loss, metrics and optimizer; raises :class:`RecipeError` on bad input."""
    from plugins.data import prepare

    from .module import RecipeData, RecipeModule, build_plugin

    table = build_plugin("data", plugin_spec("data", recipe.data), "data")
    d = recipe.data
    try:
        splits = prepare(table, val_fraction=d["val_fraction"], test_fraction=d["test_fraction"],
                         seed=recipe.seed, scale=d["scale"], target_scale=d["target_scale"])
    except plugins.PluginError as exc:
        raise RecipeError(str(exc), field=f"data.{exc.field}" if exc.field else "data") from None
    splits = replace(splits, info=_fit_loss(recipe, splits.info))
    module = RecipeModule(recipe, splits.info, world_size)
    module.configure_optimizers()  # build optimizer and schedule now, so their errors are input errors
    return Built(recipe, splits, module, RecipeData(recipe, splits))


def _fit_loss(recipe: Recipe, info: Any) -> Any:
    """Check that the loss fits the data's task; binary data under a multiclass loss gets two outputs."""
    entry = plugins.get("loss", recipe.loss["name"])
    tasks = tuple(entry.meta.get("task", ()))
    if info.task in tasks or not tasks:
        return info
    if info.task == "binary" and "multiclass" in tasks:
        return replace(info, task="multiclass", n_outputs=2)
    fitting = [e.name for e in plugins.entries("loss") if info.task in e.meta.get("task", ())]
    what = f"{info.task} data ({info.n_outputs} classes)" if info.task == "multiclass" else f"{info.task} data"
    raise RecipeError(f"loss {entry.name!r} is for {' or '.join(tasks)} targets, but {recipe.data['name']!r} is "
                      f"{what}; losses that fit: {', '.join(fitting)}", field="loss.name")


# --- the recorder and the epoch line ------------------------------------------------------------

def _callbacks() -> tuple[type, type]:
    """Lightning callback classes, defined on first use so importing this module stays light."""
    global _CALLBACK_CLASSES
    if _CALLBACK_CLASSES is not None:
        return _CALLBACK_CLASSES
    import pytorch_lightning as pl
    import torch

    class Recorder(pl.Callback):
        """Writes each epoch's values to the MLflow run in one batch, off the training step's path."""

        def __init__(self, record: Any, every: int):
            self.record, self.every = record, every

        def on_train_epoch_end(self, trainer: pl.Trainer, m: Any) -> None:
            summary = m.epoch_summary()
            if self.record is None:
                return
            n = len(m.step_losses)
            if n and self.every:
                first = m.batches_seen - n + 1
                keep = [i for i in range(n) if (first + i) % self.every == 0]
                losses = torch.stack(m.step_losses).tolist()
                steps = [first + i for i in keep]
                self.record.log_series("train/loss", [losses[i] for i in keep], steps)
                self.record.log_series("lr", [m.step_lrs[i] for i in keep], steps)
            for key, items in m.history.items():
                self.record.log_series(key, [float(v) for _, v in items], [s for s, _ in items])
            m.history.clear()
            self.record.log(summary, step=trainer.current_epoch + 1)
            self.record.maybe_flush()

    class EpochLine(pl.Callback):
        """``epoch 3/20  train loss 0.4121  val loss 0.3890  val accuracy 0.9412``, plus a live batch
        counter on a terminal when an epoch takes more than a few seconds."""

        def __init__(self, max_epochs: int):
            self.max_epochs = max_epochs
            self.live = sys.stderr.isatty()
            self._start = self._shown = 0.0

        def on_train_epoch_start(self, trainer: pl.Trainer, m: Any) -> None:
            self._start = self._shown = time.monotonic()

        def on_train_batch_end(self, trainer: pl.Trainer, m: Any, outputs: Any, batch: Any, i: int) -> None:
            if not self.live:
                return
            now = time.monotonic()
            if now - self._start > 2 and now - self._shown > 0.5:
                self._shown = now
                total = trainer.num_training_batches
                sys.stderr.write(f"\repoch {trainer.current_epoch + 1}/{self.max_epochs}  batch {i + 1}/{total}"
                                 f"  loss {float(m.step_losses[-1]):.4f}\x1b[K")
                sys.stderr.flush()

        def on_train_epoch_end(self, trainer: pl.Trainer, m: Any) -> None:
            if trainer.global_rank:
                return
            if self.live and time.monotonic() - self._start > 2:
                sys.stderr.write("\r\x1b[K")
            words = [f"epoch {trainer.current_epoch + 1}/{self.max_epochs}"]
            for key, value in m.epoch_summary().items():
                label = key.replace("/", " ").replace("loss_epoch", "loss")
                words.append(f"{label} {value:.4f}")
            print("  ".join(words), flush=True)

    class BestWeights(pl.Callback):
        """Keeps the best epoch's weights (lowest ``monitor``) in memory, one tensor copy per improvement;
        :meth:`save` writes them once at the end, instead of a checkpoint file per improvement."""

        def __init__(self, monitor: str):
            self.monitor = monitor
            self.best = math.inf
            self.epoch = -1
            self.state: dict[str, Any] | None = None

        def on_train_epoch_end(self, trainer: pl.Trainer, m: Any) -> None:
            value = m.epoch_summary().get(self.monitor, math.nan)
            if value < self.best:  # NaN never improves
                self.best, self.epoch = value, trainer.current_epoch + 1
                self.state = {k: v.detach().clone() for k, v in m.state_dict().items()}

        def save(self, path: Path) -> Path | None:
            if self.state is None:
                return None
            torch.save({"state_dict": self.state, "epoch": self.epoch, "monitor": self.monitor,
                        "value": self.best}, path)
            return path

    _CALLBACK_CLASSES = (Recorder, EpochLine, BestWeights)
    return _CALLBACK_CLASSES


_CALLBACK_CLASSES: tuple[type, ...] | None = None


# --- run ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT/SIGTERM raise :class:`Interrupted` inside the run, so it can be closed as KILLED."""
    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    if os.getpid() != _main_pid():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _main_pid() -> int:
    import threading

    return os.getpid() if threading.current_thread() is threading.main_thread() else -1


def _quiet_lightning() -> None:
    for name in ("mlflow", "alembic", "pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric",
                 "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"pytorch_lightning\..*")
    warnings.filterwarnings("ignore", module=r"lightning_fabric\..*")


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def run(recipe: Recipe, *, tracking_uri: str | None = None, quiet: bool = False, command: str | None = None,
        callbacks: Sequence[Any] = (), tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None) -> RunResult:
    """Train, test and record ``recipe`` as one MLflow run.

    ``callbacks`` are extra Lightning callbacks (a sweep's pruning callback reads
    ``pl_module.epoch_summary()`` in ``on_train_epoch_end``); ``tags`` are added to the run's tags;
    ``parent_run_id`` makes the run a child of that run (tag ``mlflow.parentRunId``).

    Raises :class:`RecipeError` for bad input (nothing recorded), :class:`RunFailed` when training fails
    (run FAILED), :class:`Interrupted` on SIGINT/SIGTERM (run KILLED).
    """
    import pytorch_lightning as pl
    import torch

    from tracking import RunRecord, resolve_uri
    from tracking.context import run_tags

    _quiet_lightning()
    if recipe.trainer["threads"]:
        torch.set_num_threads(recipe.trainer["threads"])
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    built = build(recipe)

    uri = resolve_uri(tracking_uri, recipe.tracking["uri"])
    record = None
    if _rank() == 0:
        tags = {**run_tags(recipe, command), **recipe.tracking["tags"], **(tags or {})}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        experiment = recipe.tracking["experiment"] or recipe.name
        record = RunRecord.start(uri, experiment, run_name=recipe.tracking["run_name"], params=recipe.flat(),
                                 tags=tags)
        record.log_text(recipe.to_yaml(), "recipe.yaml")
    run_id = record.run_id if record else os.environ.get("RETORT_RUN_ID")
    if run_id:
        os.environ["RETORT_RUN_ID"] = run_id  # DDP ranks started later inherit it
    try:
        with _signals_raise(), tempfile.TemporaryDirectory(prefix="retort-") as tmp:
            result = _fit(built, record, Path(tmp), quiet, list(callbacks))
            if record is not None:
                if result.best_checkpoint:
                    record.log_artifact(result.best_checkpoint, "checkpoints")
                record.finish("FINISHED")
    except Interrupted as exc:
        if record is not None:
            record.finish("KILLED", f"interrupted by {exc}")
        raise
    except Exception as exc:
        if record is not None:
            record.finish("FAILED", f"{type(exc).__name__}: {exc}")
        raise RunFailed(f"{type(exc).__name__}: {exc}", run_id) from exc
    except BaseException as exc:  # SystemExit and the like: never leave the run RUNNING
        if record is not None:
            record.finish("KILLED", f"{type(exc).__name__}: {exc}")
        raise
    result.run_id = run_id
    return result


def _fit(built: Built, record: Any, tmp: Path, quiet: bool, extra: list[Any]) -> RunResult:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    recipe, module, datamodule = built.recipe, built.module, built.datamodule
    t = recipe.trainer
    Recorder, EpochLine, BestWeights = _callbacks()
    callbacks: list[pl.Callback] = [Recorder(record, recipe.tracking["log_every_n_steps"])]
    if not quiet:
        callbacks.append(EpochLine(t["max_epochs"]))
    user = [plugins.build("callback", spec) for spec in recipe.callbacks]
    for cb in user:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = str(tmp / "checkpoints")
    callbacks += user + extra
    has_val = built.splits.info.n_val > 0
    best = BestWeights("val/loss" if has_val else "train/loss_epoch") if recipe.tracking["checkpoint"] else None
    if best is not None:
        callbacks.append(best)
    trainer = pl.Trainer(
        max_epochs=t["max_epochs"], max_steps=t["max_steps"], accelerator=t["accelerator"],
        devices=t["devices"], strategy=t["strategy"], num_nodes=t["num_nodes"], precision=t["precision"],
        deterministic=t["deterministic"], check_val_every_n_epoch=t["check_val_every_n_epoch"],
        callbacks=callbacks, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        enable_checkpointing=any(isinstance(cb, ModelCheckpoint) for cb in callbacks),
        default_root_dir=str(tmp), limit_val_batches=1.0 if has_val else 0,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    metrics = module.epoch_summary()
    user_best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    best_path = user_best or (best.save(tmp / "best.ckpt") if best is not None else None)
    if best is not None and best.state is not None and not user_best:
        module.load_state_dict(best.state)  # test the best epoch's weights
    if built.splits.info.n_test > 0:
        trainer.test(module, datamodule=datamodule, ckpt_path=user_best or None, verbose=False)
        test_values = getattr(module, "test_values", {})
        metrics.update(test_values)
        if record is not None:
            record.log(test_values, step=trainer.current_epoch)
    return RunResult(run_id=None, metrics={k: v for k, v in metrics.items() if not _nan(v) or k.startswith("train")},
                     best_checkpoint=str(best_path) if best_path else None, epochs=trainer.current_epoch,
                     fit_seconds=fit_seconds, rank=trainer.global_rank)


def _nan(v: float) -> bool:
    return isinstance(v, float) and math.isnan(v)
