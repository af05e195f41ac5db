"""Run a recipe: build everything (bad input stops here, before anything is recorded), then train, test
and record one MLflow run whose final status says how it ended. About 410 lines: build, record and close
are one sequence whose order is the point (nothing recorded before every check passed)."""

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from retort import plugins
from retort.plugins.errors import Interrupted, RecipeError, RunFailed, failure, out_of_memory
from retort.recipes.schema import Recipe
from retort.tracking.vocabulary import Metric, Tag


@dataclass
class RunResult:
    run_id: str | None
    metrics: dict[str, float]
    status: str = "FINISHED"
    best_checkpoint: str | None = None
    epochs: int = 0
    fit_seconds: float = 0.0
    rank: int = 0  # the process's global rank under DDP; only rank zero records and reports
    tested: str = ""  # whose weights the test metrics are of: "epoch 31 of 40 (lowest val/loss)"


@dataclass
class Built:
    """Everything a run needs, built and checked before anything is recorded."""

    recipe: Recipe
    table: Any
    splits: Any
    module: Any
    datamodule: Any
    callbacks: list[Any]  # the recipe's own, built


# --- build: every bad input is found here ---------------------------------------------------------

def build(recipe: Recipe, world_size: int = 1) -> Built:
    """Load the data and build model, loss, metrics and optimizer; raises :class:`RecipeError` on bad input."""
    from retort.plugins.data import as_datasets, is_datasets, prepare, split_datasets
    from retort.recipes.module import RecipeData, RecipeModule, build_plugin, check_batch

    table = build_plugin("data", recipe.spec("data"), "data")
    d = recipe.data
    datasets = is_datasets(table)
    try:
        if datasets:  # torch Datasets, served by DataLoaders
            table = as_datasets(table)
            splits = split_datasets(table, val_fraction=d["val_fraction"], test_fraction=d["test_fraction"],
                                    seed=recipe.seed)
        else:
            splits = prepare(table, val_fraction=d["val_fraction"], test_fraction=d["test_fraction"],
                             seed=recipe.seed, scale=d["scale"], target_scale=d["target_scale"])
    except plugins.PluginError as exc:
        raise RecipeError(str(exc), field=f"data.{exc.field}" if exc.field else "data") from None
    splits = replace(splits, info=_fit_loss(recipe, splits.info))
    module = RecipeModule(recipe, splits.info, world_size)
    module.configure_optimizers()  # build optimizer and schedule now, so their errors are input errors
    if datasets:
        check_batch(module, splits)
    callbacks = [build_plugin("callback", spec, f"callbacks.{i}") for i, spec in enumerate(recipe.callbacks)]
    _check_trainer(recipe)
    return Built(recipe, table, splits, module, RecipeData(recipe, splits), callbacks)


def _check_trainer(recipe: Recipe) -> None:
    """Lightning's own checks of accelerator, devices, strategy and precision on this machine (a trainer
    built and dropped: about 20 ms), so that ``devices: 0`` or a GPU that is not there is bad input."""
    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    t = recipe.trainer
    try:
        pl.Trainer(accelerator=t["accelerator"], devices=t["devices"], strategy=t["strategy"],
                   num_nodes=t["num_nodes"], precision=t["precision"], logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    except (MisconfigurationException, TypeError, ValueError, RuntimeError) as exc:
        text = str(exc)
        field = next((f"trainer.{name}" for name in ("devices", "strategy", "precision", "num_nodes")
                      if name in text), "trainer.accelerator")
        raise RecipeError(f"{text} (accelerator {t['accelerator']!r}, devices {t['devices']!r}, strategy "
                          f"{t['strategy']!r})", field=field) from None


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


# --- run ----------------------------------------------------------------------------------------

def _quiet_lightning() -> None:
    for name in ("mlflow", "alembic", "pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric",
                 "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"pytorch_lightning\..*")
    warnings.filterwarnings("ignore", module=r"lightning_fabric\..*")


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def run(recipe: Recipe, *, tracking_uri: str | None = None, quiet: bool = False, command: str | None = None,
        callbacks: Sequence[Any] = (), tags: Mapping[str, str] | None = None, parent_run_id: str | None = None,
        resume: str | None = None, check: Callable[[Built], None] | None = None) -> RunResult:
    """Train, test and record ``recipe`` as one MLflow run.

    ``callbacks`` are extra Lightning callbacks (a sweep's pruning callback reads
    ``pl_module.epoch_summary()`` in ``on_train_epoch_end``); ``tags`` are added to the run's tags;
    ``parent_run_id`` makes the run a child of that run (tag ``mlflow.parentRunId``); ``resume`` continues
    the interrupted run with that id from its last checkpoint, into the same MLflow run; ``check`` sees what
    was built before anything is recorded, and may refuse it with :class:`RecipeError` (a rerun's data check).

    Raises :class:`RecipeError` for bad input (nothing recorded), :class:`RunFailed` when training fails
    (run FAILED), :class:`Interrupted` on SIGINT/SIGTERM (run KILLED, with a checkpoint to resume from).
    """
    import pytorch_lightning as pl
    import torch

    from retort.recipes import display
    from retort.tracking import RunRecord, resolve_uri
    from retort.tracking.context import run_tags

    _quiet_lightning()
    if not quiet:
        display.status(f"{recipe.name}: loading the data, building the model")
    if recipe.trainer["threads"]:
        torch.set_num_threads(recipe.trainer["threads"])
    # TF32 only by choice (set every run: a sweep worker runs many recipes in one process)
    torch.set_float32_matmul_precision("high" if recipe.trainer["tf32"] else "highest")
    torch.backends.cudnn.allow_tf32 = recipe.trainer["tf32"]
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    try:
        built = build(recipe)
    except Exception as exc:
        if out_of_memory(exc) and not isinstance(exc, RecipeError):  # it does not fit: a failure, not bad input
            raise RunFailed(f"{failure(exc)} (building the model and data, before anything was recorded)",
                            None) from exc
        raise
    if check is not None:
        check(built)
    uri = resolve_uri(tracking_uri, recipe.tracking["uri"])
    if resume == "auto":  # a requeued job: the latest interrupted run of this recipe and command, else a new one
        from retort.tracking.context import command_line
        from retort.tracking.liveness import latest_interrupted

        resume = latest_interrupted(uri, recipe.name, command or command_line())
    with tempfile.TemporaryDirectory(prefix="retort-") as tmp_dir:
        tmp = Path(tmp_dir)
        record, checkpoint = None, None
        if _rank() == 0:
            if resume:
                record, checkpoint = RunRecord.reopen(uri, resume, tmp, lambda path: _same_recipe(recipe, path, resume))
            else:
                tags = {**run_tags(recipe, command), **recipe.tracking["tags"], **(tags or {})}
                if parent_run_id:
                    tags[Tag.PARENT_RUN_ID] = parent_run_id
                record = RunRecord.start(uri, recipe.tracking["experiment"] or recipe.name,
                                         run_name=recipe.tracking["run_name"], params=recipe.flat(), tags=tags)
        elif resume:
            checkpoint = _download_checkpoint(uri, resume, tmp)
        if record is not None and not quiet:
            display.clear_status()
            experiment = recipe.tracking["experiment"] or recipe.name
            print(f"{'resuming' if resume else 'recording'} run {record.run_id} in experiment {experiment!r} "
                  f"({uri})", file=sys.stderr, flush=True)
        before = (lambda: _record_context(record, recipe, built, tmp)) if record is not None and not resume else None
        return _run_recorded(built, record, tmp, quiet, list(callbacks), checkpoint, uri, before)


def _run_recorded(built: Built, record: Any, tmp: Path, quiet: bool, extra: list[Any],
                  checkpoint: Path | None, uri: str, before: Any = None) -> RunResult:
    """Record the context (``before``), fit and test, closing the record as FINISHED, FAILED or KILLED
    whatever happens, a signal at any moment included.

    An :class:`Interrupted` leaves with ``run_id``, ``uri`` and ``resumable`` (a checkpoint was saved) set,
    for the command line to say how to resume."""
    from retort.recipes.hooks import SignalGuard
    from retort.tracking.plots import loss_curves
    from retort.tracking.system import SystemMonitor

    run_id = record.run_id if record is not None else None
    monitor = None
    fit = _Fit(built, record, tmp, quiet, extra)
    try:
        before and before()
        if record is not None and built.recipe.tracking["system_metrics"]:
            monitor = SystemMonitor(record, built.recipe.tracking["system_metrics_interval"]).start()
        fit.monitor = monitor
        with SignalGuard() as guard:
            result = fit.run(guard, checkpoint)
        if record is not None:
            monitor and monitor.stop()
            if result.best_checkpoint:
                record.log_artifact(result.best_checkpoint, "checkpoints")
            if built.recipe.tracking["log_model"]:
                _log_model(record, built, tmp)
            record.flush()
            loss_curves(record, tmp / "loss.svg")
            record.finish("FINISHED")
    except Interrupted as exc:
        saved = fit.interruption is not None and fit.interruption.saved is not None
        if record is not None:
            monitor and monitor.stop()
            if saved:
                record.log_artifact(fit.interruption.saved, "checkpoints")
            record.finish("KILLED", f"interrupted by {exc}")
        exc.run_id, exc.uri, exc.resumable = run_id, uri, saved
        raise
    except Exception as exc:
        if record is not None:
            monitor and monitor.stop()
            record.finish("FAILED", failure(exc))
        raise RunFailed(failure(exc), run_id) from exc
    except BaseException as exc:  # SystemExit and the like: never leave the run RUNNING
        if record is not None:
            record.finish("KILLED", f"{type(exc).__name__}: {exc}")
        raise
    result.run_id = fit.run_id_callback.run_id if fit.run_id_callback is not None else run_id
    return result


def _record_context(record: Any, recipe: Recipe, built: Built, tmp: Path) -> None:
    """What a reviewer needs to re-run it: the resolved recipe, the data's digest, the environment, the code."""
    from retort.recipes.yamlio import dumps
    from retort.tracking.context import code_states, environment, mask, mask_tree

    record.log_text(dumps(mask_tree(recipe.to_dict())), "recipe.yaml")
    info = built.splits.info
    record.log_dataset(name=info.name, digest=built.splits.digest, source=built.table.source,
                       profile={"task": info.task, "features": info.n_features, "outputs": info.n_outputs,
                                "train": info.n_train, "val": info.n_val, "test": info.n_test})
    record.log_text(environment(), "requirements.txt")
    for prefix, state in code_states(recipe.source).items():
        if state.dirty:
            record.log_text(mask(state.diff), "git.diff" if prefix == "git" else f"{prefix}.diff")
    record.set_tags({Tag.RECIPE_DIR: recipe.base or "",
                     **{f"{Tag.PATH}.{key}": value for key, value in recipe.paths.items()}})
    if recipe.code:
        _record_code(record, recipe.code)


def _record_code(record: Any, code: list[Any]) -> None:
    """Each imported local file's text under ``code/``, and ``code/imports.json``: every entry of ``imports``
    with what ran (file, sha256) and what it registered, so a rerun can rebuild it from the record."""
    import json

    manifest, names = [], set()
    for c in code:
        entry = {"given": c.given, "kind": c.kind, "path": c.path, "sha256": c.sha256,
                 "registered": [list(r) for r in c.registered]}
        if c.kind == "file":
            name = Path(c.path).name
            while name in names:
                name = f"{c.sha256[:8]}_{name}"
            names.add(name)
            record.log_text(c.text, f"code/{name}")
            entry["artifact"] = f"code/{name}"
        manifest.append(entry)
    record.log_text(json.dumps(manifest, indent=1), "code/imports.json")


def _log_model(record: Any, built: Built, tmp: Path) -> None:
    """The tested weights as an MLflow pyfunc model (artifact ``model/``), with the data's preprocessing; a
    data set that supplies none (``preprocess``) gets no model."""
    from retort.tracking import model

    preprocess = getattr(built.splits, "preprocess", None) or getattr(built.table, "preprocess", None)
    if preprocess is None:
        return
    info, recipe = built.splits.info, built.recipe
    preprocess.task, preprocess.class_names = info.task, info.class_names
    preprocess.outputs = "probabilities" if recipe.model["head"] != "none" else \
        "values" if info.task == "regression" else "logits"
    scaler = getattr(built.splits, "target_scaler", None)
    preprocess.target_scaler = None if scaler is None else tuple(t.double().numpy() for t in scaler)
    code = [(Path(c.path).name, c.text) for c in recipe.code if c.kind == "file"]
    modules = [c.given for c in recipe.code if c.kind == "module"]
    folder = model.save(tmp / "model", net=built.module.net, spec=recipe.spec("model"), info=info,
                        head=recipe.model["head"], preprocess=preprocess, code=code, modules=modules)
    record.log_artifacts(folder, "model")


def _same_recipe(recipe: Recipe, recorded_yaml: Path, run_id: str) -> None:
    """Refuse to resume ``run_id`` with a recipe that differs from the one it recorded."""
    from retort import recipes
    from retort.recipes.yamlio import load_file

    recorded = recipes.load(recipes.Draft(load_file(recorded_yaml), str(recorded_yaml), recipe.name, recipe.base))
    diff = sorted(k for k, v in recipe.flat().items() if recorded.flat().get(k, v) != v)
    if diff:
        raise RecipeError(f"the recipe differs from run {run_id}'s in {', '.join(diff)}; resume it with the "
                          f"recorded recipe (omit RECIPE)", field="--resume")


def _download_checkpoint(uri: str, run_id: str, tmp: Path) -> Path:
    from mlflow import MlflowClient

    return Path(MlflowClient(tracking_uri=uri).download_artifacts(run_id, "checkpoints/last.ckpt", str(tmp)))


def _unprofiled() -> Any:
    """Lightning's default profiler with nothing to profile: its ``profile`` still builds a generator-based
    context for every hook of every callback (some 80 a step, 0.1-0.2 ms); this one hands back one empty
    context."""
    from pytorch_lightning.profilers import PassThroughProfiler

    class Unprofiled(PassThroughProfiler):
        _empty = contextlib.nullcontext()

        def profile(self, action_name: str) -> Any:  # type: ignore[override]
            return self._empty

    return Unprofiled()


class _Fit:
    """One fit and test of a built recipe, with the loop's own callbacks."""

    def __init__(self, built: Built, record: Any, tmp: Path, quiet: bool, extra: list[Any], monitor: Any = None):
        self.built, self.record, self.tmp, self.quiet, self.extra = built, record, tmp, quiet, extra
        self.monitor = monitor
        self.interruption: Any = None
        self.run_id_callback: Any = None

    def run(self, guard: Any, checkpoint: Path | None) -> RunResult:
        import pytorch_lightning as pl
        from pytorch_lightning.callbacks import ModelCheckpoint

        from retort.recipes.hooks import BestWeights, EpochLine, Interruption, Recorder, Resumable, RunId

        built, tmp = self.built, self.tmp
        recipe, module, datamodule = built.recipe, built.module, built.datamodule
        t = recipe.trainer
        recorder = Recorder(self.record, recipe.tracking["log_every_n_steps"])
        self.interruption = Interruption(guard, tmp / "last.ckpt", recorder)
        self.run_id_callback = RunId(self.record.run_id if self.record is not None else None)
        callbacks: list[pl.Callback] = [recorder, self.interruption, self.run_id_callback]
        if recipe.tracking["resume_every"] is not None:  # beside the run's spool: what a SIGKILL leaves to resume
            spool = getattr(self.record, "spool", None)
            path = spool.checkpoint if spool is not None else tmp / "resumable.ckpt"
            callbacks.append(Resumable(path, recipe.tracking["resume_every"], recorder))
        if recipe.tracking["telemetry"]:
            from retort.recipes.throughput import Throughput

            callbacks.insert(0, Throughput(self.record, peak_tflops=recipe.tracking["peak_tflops"],
                                           compiled=t["compile"], tf32=t["tf32"], monitor=self.monitor))
        if not self.quiet:
            callbacks.append(EpochLine(t["max_epochs"]))
        user = list(built.callbacks)
        for cb in user:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = str(tmp / "checkpoints")
        callbacks += user + self.extra
        has_val = built.splits.info.n_val > 0
        monitor = Metric.VAL_LOSS if has_val else Metric.TRAIN_LOSS_EPOCH
        best = BestWeights(monitor) if recipe.tracking["checkpoint"] else None
        if best is not None:
            callbacks.append(best)
        trainer = pl.Trainer(
            max_epochs=t["max_epochs"], max_steps=t["max_steps"], accelerator=t["accelerator"],
            devices=t["devices"], strategy=t["strategy"], num_nodes=t["num_nodes"], precision=t["precision"],
            deterministic=t["deterministic"], check_val_every_n_epoch=t["check_val_every_n_epoch"],
            callbacks=callbacks, logger=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, enable_checkpointing=any(isinstance(cb, ModelCheckpoint) for cb in callbacks),
            default_root_dir=str(tmp), limit_val_batches=1.0 if has_val else 0,
            use_distributed_sampler=False,  # the data module shards by rank itself, in a resumable order
            profiler=_unprofiled(),
        )
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        start = time.perf_counter()
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(checkpoint) if checkpoint else None)
        except SIGTERMException:  # a SystemExit without a code: it would end the process with status 0
            raise Interrupted(signal.SIGTERM) from None
        fit_seconds = time.perf_counter() - start
        if guard.signum is not None:  # the signal came during the last epoch's end: training is complete
            self.interruption.stop(trainer, module)
        metrics = module.epoch_summary()
        user_best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        best_path = user_best or (best.save(tmp / "best.ckpt") if best is not None else None)
        epochs = trainer.current_epoch
        if user_best:
            tested = f"the best checkpoint of {trainer.checkpoint_callback.monitor or 'the last epoch'}"
        elif best is not None and best.state is not None:
            module.load_state_dict(best.state)  # test the best epoch's weights
            tested = f"epoch {best.epoch} of {epochs} (lowest {best.monitor})"
        else:
            tested = f"epoch {epochs} of {epochs} (the last)"
        if built.splits.info.n_test > 0:
            trainer.test(module, datamodule=datamodule, ckpt_path=user_best or None, verbose=False)
            test_values = getattr(module, "test_values", {})
            metrics.update(test_values)
            if self.record is not None:
                self.record.log(test_values, step=trainer.current_epoch)
                self.record.set_tags({Tag.TESTED: tested})
        metrics = {k: v for k, v in metrics.items() if not _nan(v) or k.startswith("train")}
        return RunResult(run_id=None, metrics=metrics, best_checkpoint=str(best_path) if best_path else None,
                         epochs=epochs, fit_seconds=fit_seconds, rank=trainer.global_rank, tested=tested)


def _nan(v: float) -> bool:
    return isinstance(v, float) and math.isnan(v)
