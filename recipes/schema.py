"""The Recipe: every section, its fields and defaults, and validation against the plugin registries.

A recipe is plain data. Plugin sections (data, model, loss, optimizer, scheduler, callbacks, metrics)
are ``{name: ..., field: value}`` mappings whose fields come from two places: the options every plugin
of that kind shares (the ``*Options`` classes below, handled by the loop) and the plugin's own fields
(its factory's signature, see ``plugins``). Resolution fills every default, so the resolved recipe
printed by ``retort show`` is complete and runs the same run.

Longer than most modules (about 540 lines): every section's shared options and the checks across
sections (a monitor the data can feed, a loss that fits the task) are read together, as one schema.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from retort import plugins
from retort.plugins.errors import RecipeError
from retort.tracking.vocabulary import Metric


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``batch_size: true`` would run with 1: a number field takes numbers only."""
        problem = plugins.loose(cls.model_fields[info.field_name].annotation, value)
        if problem:
            raise ValueError(problem)
        return value


class DataOptions(_Options):
    """Shared by every data source; the source's own fields (a CSV's path, ...) come from its plugin."""

    batch_size: int = Field(64, gt=0, description="samples per training batch")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="share of rows held out for validation")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="share of rows held out for the final test")
    scale: Literal["standard", "minmax", "none"] = Field("standard", description="feature scaling, fit on train")
    target_scale: Literal["standard", "none"] = Field("none", description="regression target scaling")
    shuffle: bool = Field(True, description="reshuffle the training rows every epoch (seeded)")
    drop_last: bool = Field(False, description="drop the last, smaller training batch")
    eval_batch_size: int = Field(1024, gt=0, description="batch size of validation and test passes")
    on_device: bool = Field(True, description="keep in-memory tables on the training device (no host copy per step)")
    # torch DataLoader settings for data plugins that return data sets (tables are sliced in memory)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (data sets only)")
    pin_memory: bool = Field(False, description="DataLoader pin_memory, for copies to a GPU (data sets only)")
    persistent_workers: bool = Field(False, description="keep workers between epochs (needs num_workers > 0)")
    prefetch_factor: int | None = Field(None, ge=1, description="batches each worker loads ahead (torch: 2)")

    @field_validator("persistent_workers", "prefetch_factor")
    @classmethod
    def _needs_workers(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in (None, False) and not info.data.get("num_workers"):
            raise ValueError(f"{info.field_name} needs num_workers of at least 1")
        return value


class ModelOptions(_Options):
    head: Literal["auto", "none", "softmax", "sigmoid"] = Field(
        "auto", description="output activation; auto: softmax/sigmoid when the loss takes probabilities")


class OptimizerOptions(_Options):
    clip_value: float | None = Field(None, gt=0, description="clamp each gradient element to ±value (ClipGrad)")
    clip_norm: float | None = Field(None, gt=0, description="clip the gradient norm to this value (ClipNorm)")
    clip_per_tensor: bool = Field(False, description="clip_norm per tensor (Flux) instead of one global norm")
    accumulate: int = Field(1, ge=1, description="accumulate gradients over this many batches (AccumGrad)")


class SchedulerOptions(_Options):
    interval: Literal["step", "epoch"] = Field("epoch", description="advance the schedule per step or epoch")
    warmup: int = Field(0, ge=0, description="linear warmup length, in intervals, before the schedule")
    warmup_start: float = Field(0.0, ge=0, le=1, description="warmup starts at lr × this factor")


class TrainerOptions(_Options):
    max_epochs: int = Field(10, ge=1, description="epochs to train")
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimizer steps (-1: no limit)")
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | list[int] | Literal["auto"] = "auto"
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp",
                      "single_device"] = "auto"
    num_nodes: int = Field(1, ge=1)
    precision: Literal["32-true", "16-mixed", "bf16-mixed", "bf16-true", "64-true"] = Field(
        "32-true", description="16-mixed scales the loss (overflows counted); bf16-mixed needs no scaling")
    compile: bool = Field(False, description="torch.compile the model (compile time recorded apart)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    tf32: bool = Field(False, description="TF32 tensor cores for float32 matmuls and convolutions (CUDA)")
    channels_last: bool = Field(False, description="channels-last memory format for convolutions")
    deterministic: bool = Field(True, description="deterministic algorithms, for exact re-runs")
    check_val_every_n_epoch: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch's default)")


class TrackingOptions(_Options):
    experiment: str | None = Field(None, description="MLflow experiment (default: the recipe's name)")
    uri: str | None = Field(None, description="tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    run_name: str | None = Field(None, description="MLflow run name (default: MLflow's generated name)")
    log_every_n_steps: int = Field(1, ge=0, description="record train/loss and lr every n steps (0: per epoch only)")
    checkpoint: bool = Field(True, description="keep the best checkpoint as an artifact")
    resume_every: float | None = Field(10.0, ge=0, description="seconds between the resumable checkpoints written "
                                       "locally during training (a SIGKILL loses at most this much, or 2% of the "
                                       "time; null: none)")
    log_model: bool = Field(True, description="log the tested weights as an MLflow model (model/, retort predict)")
    system_metrics: bool = Field(True, description="sample CPU, memory (and GPU) use during the run")
    system_metrics_interval: float = Field(10.0, gt=0, description="seconds between system-metric samples")
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags on the run")
    telemetry: bool = Field(True, description="record throughput, data wait, peak memory and MFU per epoch")
    peak_tflops: float | None = Field(None, gt=0, description="one device's peak TFLOP/s for MFU (default: "
                                                               "the GPU table)")


SAMPLERS = ("tpe", "random", "gp", "cmaes", "qmc", "grid")
PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband", "patient")


class SpaceParam(_Options):
    """One searched field: a range (``low``, ``high``, optional ``log`` and ``step``) or ``choices``.

    A range samples integers when ``type`` is ``int``; by default, when the field's value in the recipe is
    an integer (``data.batch_size``), else when ``low``, ``high`` and ``step`` are all written as integers.
    ``choices`` may hold any YAML values (lists such as ``[[64], [128, 64]]`` for ``model.hidden`` too).
    """

    low: int | float | None = None
    high: int | float | None = None
    log: bool = Field(False, description="sample uniformly in log space (low > 0)")
    step: int | float | None = Field(None, gt=0, description="sample low, low + step, ...")
    choices: list[Any] | None = None
    type: Literal["float", "int"] | None = Field(None, description="int or float range (default: inferred)")

    @model_validator(mode="after")
    def _check(self) -> SpaceParam:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("give either choices or a range (low, high, log, step), not both")
            if not self.choices:
                raise ValueError("choices is empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or give choices)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None and self.step != 1:
            raise ValueError("a log range cannot have a step (other than 1 for integers)")
        if self.type == "int" and any(v is not None and float(v) != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError("an int range needs whole numbers for low, high and step")
        return self

    def kind(self, current: Any = None) -> Literal["choices", "int", "float"]:
        """How the field is sampled, given its value in the base recipe (``current``)."""
        if self.choices is not None:
            return "choices"
        if self.type is not None:
            return self.type
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            ints = all(isinstance(v, int) for v in (self.low, self.high, self.step) if v is not None)
            return "int" if ints else "float"
        return "int" if isinstance(current, int) else "float"


class LrScaling(_Options):
    """Ties the learning rate to the batch size: the trial's lr is the sampled (or the recipe's) lr,
    which holds at ``reference``, times ``batch/reference`` (linear) or its square root (sqrt)."""

    rule: Literal["linear", "sqrt"] = Field(..., description="linear (Goyal et al.) or sqrt (Adam-style) scaling")
    reference: float = Field(..., gt=0, description="the batch size at which the lr is the sampled lr")
    lr: str = Field("optimizer.lr", description="the learning-rate field")
    batch_size: str = Field("data.batch_size", description="the batch-size field (must be in the space)")


class SweepOptions(_Options):
    metric: str = Field(Metric.VAL_LOSS, description="what the sweep optimizes: a trial's best epoch's value of it")
    direction: Literal["minimize", "maximize"] = "minimize"
    trials: int = Field(20, ge=1, description="finished trials the study should hold, over all workers")
    seeds: int = Field(1, ge=1, le=1000, description="seeds each trial runs (the trial's seed and the ones after "
                       "it, a child run each); the trial's value is their mean")
    sampler: Literal[SAMPLERS] = "tpe"  # type: ignore[valid-type]
    pruner: Literal[PRUNERS] = "hyperband"  # type: ignore[valid-type]
    seed: int | None = Field(None, ge=0, lt=2**32 - 1024,
                             description="sampler seed (default: the recipe's seed); worker i adds i")
    sampler_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the sampler")
    pruner_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the pruner")
    lr_scaling: LrScaling | None = Field(None, description="scale the lr with the batch size")
    space: dict[str, SpaceParam] = Field(default_factory=dict)


#: top-level fields in the order a resolved recipe lists them
SECTIONS = ("name", "description", "imports", "seed", "data", "model", "loss", "optimizer", "scheduler",
            "callbacks", "metrics", "trainer", "tracking", "sweep")
_DEFAULTS: dict[str, Any] = {
    "data": {"name": "digits"},
    "model": {"name": "mlp"},
    "loss": "logitcrossentropy",
    "optimizer": {"name": "adam"},
}


def default_plugin(section: str) -> str | None:
    """The plugin a section left out of a recipe gets (``optimizer`` -> ``adam``), or None."""
    spec = _DEFAULTS.get(section)
    return spec if isinstance(spec, str) or spec is None else spec["name"]


_OPTIONS: dict[str, type[_Options] | None] = {
    "data": DataOptions, "model": ModelOptions, "loss": None, "optimizer": OptimizerOptions,
    "scheduler": SchedulerOptions, "callback": None, "metric": None,
}


@dataclass
class Recipe:
    """A validated recipe with every default filled. ``to_dict()`` is its resolved YAML form."""

    name: str
    description: str
    seed: int
    data: dict[str, Any]
    model: dict[str, Any]
    loss: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    callbacks: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    trainer: dict[str, Any]
    tracking: dict[str, Any]
    sweep: dict[str, Any] | None
    imports: list[str] = field(default_factory=list)
    source: str | None = field(default=None, compare=False)
    #: the folder relative paths (data files, imports) resolve against: the recipe file's, else the working one
    base: str | None = field(default=None, compare=False)
    #: every path field by dotted path (``data.path``) -> the absolute path it names, recorded as tags
    paths: dict[str, str] = field(default_factory=dict, compare=False)
    #: what ``imports`` loaded (:class:`recipes.imports.Code`), recorded as artifacts
    code: list[Any] = field(default_factory=list, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe; ``imports`` only when it names something (shipped recipes stay import-free)."""
        return {k: copy.deepcopy(getattr(self, k)) for k in SECTIONS if k != "imports" or self.imports}

    def spec(self, section: str) -> dict[str, Any]:
        """A plugin section as its factory takes it: shared options left out, path fields absolute."""
        kind = "data" if section == "data" else "model"
        out = plugin_spec(kind, getattr(self, section))
        for key in out:
            out[key] = self.paths.get(f"{section}.{key}", out[key])
        return out

    def to_yaml(self) -> str:
        from retort.recipes.yamlio import dumps

        return dumps(self.to_dict())

    def flat(self) -> dict[str, Any]:
        """Every field under its dotted path (``optimizer.lr``; list items as ``callbacks.0.name``)."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, Mapping) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
                for i, v in enumerate(value):
                    walk(f"{prefix}.{i}", v)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out

    @property
    def metric_keys(self) -> list[str]:
        """The names every run of this recipe records per epoch and at the end."""
        keys = [Metric.TRAIN_LOSS_EPOCH, Metric.VAL_LOSS, Metric.TEST_LOSS]
        for m in self.metrics:
            keys += [f"val/{metric_key(m)}", f"test/{metric_key(m)}"]
        return keys


def metric_key(spec: Mapping[str, Any]) -> str:
    """``{"name": "accuracy"}`` -> ``accuracy``; ``torchmetrics.MeanSquaredError`` -> ``MeanSquaredError``."""
    return str(spec["name"]).rsplit(".", 1)[-1]


# --- resolution -------------------------------------------------------------------------------

def resolve(raw: Any, *, source: str | None = None, default_name: str = "recipe", base: str | None = None) -> Recipe:
    """Validate raw recipe data (from YAML, after overrides) into a :class:`Recipe`.

    Relative paths (``imports``, data files) resolve against ``base``: by default the folder of the recipe
    file ``source`` names, else the working folder. ``imports`` run first: their plugins are validated.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise RecipeError(f"a recipe is a mapping of sections, got {type(raw).__name__}", source=source)
    for key in raw:
        if key not in SECTIONS:
            raise RecipeError(
                f"unknown field{plugins.did_you_mean(str(key), SECTIONS)}; valid fields: {', '.join(SECTIONS)}",
                field=str(key), source=source)
    if base is None:
        base = str(Path(source).resolve().parent) if source and Path(source).is_file() else str(Path.cwd())
    try:
        from retort.recipes import imports

        code = imports.load(raw.get("imports"), Path(base))
        recipe = _resolve(raw, default_name)
        recipe.source, recipe.base, recipe.code = source, base, code
        imports.check_used(code, _used(recipe))
        recipe.paths = _paths(recipe, Path(base))
        return recipe
    except RecipeError as exc:
        exc.source = exc.source or source
        raise


def _resolve(raw: Mapping[str, Any], default_name: str) -> Recipe:
    name = _scalar(raw, "name", str, default_name)
    description = _scalar(raw, "description", str, "")
    seed = _scalar(raw, "seed", int, 0)
    if not 0 <= seed < 2**32:
        raise RecipeError(f"must be from 0 to 2**32 - 1 (numpy's seed range), got {seed}", field="seed")
    sections = {k: _plugin_section(k, raw.get(k, _DEFAULTS[k]), k) for k in ("data", "model", "loss", "optimizer")}
    scheduler = raw.get("scheduler")
    scheduler = None if scheduler is None else _plugin_section("scheduler", scheduler, "scheduler")
    callbacks = [_plugin_section("callback", s, f"callbacks.{i}") for i, s in enumerate(_list(raw, "callbacks"))]
    metrics = [_plugin_section("metric", s, f"metrics.{i}") for i, s in enumerate(_list(raw, "metrics"))]
    trainer = _options(TrainerOptions, raw.get("trainer"), "trainer")
    tracking = _options(TrackingOptions, raw.get("tracking"), "tracking")
    sweep = raw.get("sweep")
    sweep = None if sweep is None else _options(SweepOptions, sweep, "sweep")

    sections["model"]["head"] = _head(sections["model"]["head"], sections["loss"])
    recipe = Recipe(name=name, description=description, seed=seed, scheduler=scheduler, callbacks=callbacks,
                    metrics=metrics, trainer=trainer, tracking=tracking, sweep=sweep,
                    imports=list(raw.get("imports") or []), **sections)
    _check_consistency(recipe)
    _check_lengths(recipe)
    return recipe


MAX_VALUE_CHARS = 6000  # MLflow's limit on a param's value: every field is recorded as one


def _check_lengths(r: Recipe) -> None:
    """Every field fits the record (checked now: MLflow would refuse it after the run exists)."""
    import json

    for key, value in r.flat().items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(key) > 250 or len(text) > MAX_VALUE_CHARS:
            what = f"a field name of {len(key):,} characters" if len(key) > 250 else f"{len(text):,} characters"
            raise RecipeError(f"{what}; the record keeps names up to 250 and values up to {MAX_VALUE_CHARS:,}",
                              field=key)
    name = r.tracking["run_name"]
    if name is not None and len(name) > 250:
        raise RecipeError(f"{len(name):,} characters; a run name is at most 250", field="tracking.run_name")


def _plugin_sections(r: Recipe) -> list[tuple[str, str, dict[str, Any]]]:
    """``(kind, dotted path, section)`` of every plugin the recipe builds."""
    out = [(k, k, getattr(r, k)) for k in ("data", "model", "loss", "optimizer")]
    if r.scheduler is not None:
        out.append(("scheduler", "scheduler", r.scheduler))
    out += [("callback", f"callbacks.{i}", c) for i, c in enumerate(r.callbacks)]
    return out + [("metric", f"metrics.{i}", m) for i, m in enumerate(r.metrics)]


def _used(r: Recipe) -> set[tuple[str, str]]:
    return {(kind, section["name"]) for kind, _, section in _plugin_sections(r)}


def _paths(r: Recipe, base: Path) -> dict[str, str]:
    """Path fields (a plugin's ``paths`` meta, e.g. a CSV's ``path``) made absolute against ``base``."""
    out = {}
    for kind, where, section in _plugin_sections(r):
        for key in plugins.get(kind, section["name"]).meta.get("paths", ()):
            value = section.get(key)
            if isinstance(value, str) and value:
                out[f"{where}.{key}"] = str((base / Path(value).expanduser()).resolve())
    return out


def _scalar(raw: Mapping[str, Any], key: str, typ: type, default: Any) -> Any:
    value = raw.get(key, default)
    if value is None:
        value = default
    if (typ is int and isinstance(value, bool)) or not isinstance(value, typ):
        raise RecipeError(f"must be {typ.__name__}, got {value!r}", field=key)
    return value


def _list(raw: Mapping[str, Any], key: str) -> list[Any]:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise RecipeError(f"must be a list of plugin specs, got {value!r}", field=key)
    return value


def _options(cls: type[_Options], value: Any, path: str) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise RecipeError(f"must be a mapping, got {value!r}", field=path)
    try:
        return cls(**value).model_dump()
    except ValidationError as exc:
        raise _pydantic_error(exc, path, cls) from None


def _pydantic_error(exc: ValidationError, path: str, cls: type[BaseModel]) -> RecipeError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    where = f"{path}.{loc}" if loc else path
    got = err.get("input")
    if err["type"] == "extra_forbidden":
        valid = list(cls.model_fields)
        key = str(err["loc"][-1])
        if len(err["loc"]) > 1 and cls is SweepOptions:  # inside a space entry or lr_scaling
            valid = list((LrScaling if err["loc"][0] == "lr_scaling" else SpaceParam).model_fields)
        return RecipeError(f"unknown field{plugins.did_you_mean(key, valid)}; valid fields: {', '.join(valid)}",
                           field=where)
    msg = err["msg"].removeprefix("Value error, ")
    return RecipeError(f"{msg} (got {got!r})" if not isinstance(got, Mapping) else msg, field=where)


def _plugin_section(kind: str, spec: Any, path: str) -> dict[str, Any]:
    """``name`` or ``{name, shared options..., plugin fields...}`` -> resolved mapping, defaults filled."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise RecipeError(f"must be a {kind} name or a mapping with 'name', got {spec!r}", field=path)
    options_cls = _OPTIONS[kind]
    shared = set(options_cls.model_fields) if options_cls else set()
    try:
        name, _ = plugins.split_spec(kind, spec)
        entry = plugins.get(kind, name)
        own = {k: v for k, v in spec.items() if k not in shared}
        for key in own:
            if key != "name" and entry.aliases.get(key, key) not in entry.params:
                valid = [*entry.params, *sorted(shared)]
                raise plugins.PluginError(
                    f"{kind} {entry.name!r} has no field {key!r}{plugins.did_you_mean(key, valid)}; "
                    f"valid fields: {', '.join(valid)}", field=key)
        resolved = plugins.resolve(kind, own)
    except plugins.PluginError as exc:
        raise RecipeError(str(exc), field=f"{path}.{exc.field}" if exc.field else path) from None
    if options_cls is not None:
        opts = _options(options_cls, {k: v for k, v in spec.items() if k in shared}, path)
        return {**resolved, **opts}
    return resolved


def shared_fields(kind: str) -> list[tuple[str, str, Any, str]]:
    """``(field, type, default, doc)`` of the options every plugin of ``kind`` shares (the loop's own)."""
    cls = _OPTIONS.get(kind)
    if cls is None:
        return []
    return [(name, plugins.type_name(f.annotation), f.default, f.description or "")
            for name, f in cls.model_fields.items()]


def plugin_spec(kind: str, section: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved section less the options the loop handles itself: what the plugin's factory takes."""
    cls = _OPTIONS[kind]
    shared = set(cls.model_fields) if cls else set()
    return {k: v for k, v in section.items() if k not in shared}


def _head(head: str, loss: Mapping[str, Any]) -> str:
    if head != "auto":
        return head
    meta = plugins.get("loss", loss["name"]).meta
    if meta.get("input") != "probabilities":
        return "none"
    return "softmax" if "multiclass" in meta.get("task", ()) else "sigmoid"


def _check_consistency(r: Recipe) -> None:
    keys = [metric_key(m) for m in r.metrics]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise RecipeError(f"metric {sorted(dup)[0]!r} is listed twice", field="metrics")
    known = [Metric.TRAIN_LOSS, Metric.TRAIN_LOSS_EPOCH, Metric.VAL_LOSS] + [f"val/{k}" for k in keys]
    monitored = [(f"callbacks.{i}", cb) for i, cb in enumerate(r.callbacks)]
    if r.scheduler is not None:
        monitored.append(("scheduler", r.scheduler))
    for path, spec in monitored:
        monitor = spec.get("monitor")
        if monitor is not None and monitor not in known:
            raise RecipeError(f"{monitor!r} is not recorded by this recipe{plugins.did_you_mean(monitor, known)}; "
                              f"valid choices: {', '.join(known)}", field=f"{path}.monitor")
        if monitor is not None and monitor.startswith("val/") and r.data["val_fraction"] == 0:
            raise RecipeError(f"{monitor!r} needs a validation split: set data.val_fraction above 0, or monitor "
                              "train/loss_epoch", field=f"{path}.monitor")
    if r.scheduler is not None and r.scheduler["name"] == "plateau" and r.scheduler["warmup"]:
        raise RecipeError("warmup cannot precede a plateau schedule", field="scheduler.warmup")
    if r.data["val_fraction"] + r.data["test_fraction"] >= 1:
        raise RecipeError("val_fraction + test_fraction must stay below 1", field="data.val_fraction")
    if r.sweep is not None:
        _check_sweep(r, [f"val/{k}" for k in keys])


def _check_sweep(r: Recipe, val_metrics: list[str]) -> None:
    """The sweep section against the recipe: a metric recorded every epoch, fields that exist."""
    sweep = r.sweep
    assert sweep is not None
    known = [Metric.VAL_LOSS, *val_metrics, Metric.TRAIN_LOSS_EPOCH]  # what epoch_summary() holds, for pruning
    metric = sweep["metric"]
    if metric not in known:
        raise RecipeError(f"{metric!r} is not recorded every epoch by this recipe"
                          f"{plugins.did_you_mean(metric, known)}; valid choices: {', '.join(known)}",
                          field="sweep.metric")
    if metric.startswith("val/") and r.data["val_fraction"] == 0 and "data.val_fraction" not in sweep["space"]:
        raise RecipeError(f"{metric!r} needs a validation split: set data.val_fraction above 0",
                          field="sweep.metric")
    flat = r.flat()
    for path, spec in sweep["space"].items():
        where = f"sweep.space.{path}"
        if path.split(".", 1)[0] in ("sweep", "tracking", "name", "description"):
            raise RecipeError(f"{path!r} is not a training field; search data, model, loss, optimizer, scheduler, "
                              "callbacks, metrics, trainer or seed fields", field=where)
        if path not in flat:
            raise RecipeError(f"no recipe field {path!r}{plugins.did_you_mean(path, flat)}", field=where)
        param = SpaceParam(**spec)
        kind = param.kind(flat[path])
        if sweep["sampler"] == "grid" and kind == "float" and param.step is None:
            raise RecipeError("the grid sampler needs choices or a step for a float range", field=where)
    scaling = sweep["lr_scaling"]
    if scaling is not None:
        if scaling["lr"] not in flat:
            raise RecipeError(f"no recipe field {scaling['lr']!r}{plugins.did_you_mean(scaling['lr'], flat)}",
                              field="sweep.lr_scaling.lr")
        if scaling["batch_size"] not in sweep["space"]:
            raise RecipeError(f"lr_scaling scales with {scaling['batch_size']!r}, which sweep.space does not search; "
                              f"add it to sweep.space", field="sweep.lr_scaling.batch_size")
