"""Metric plugins: ``factory(info, **config) -> torchmetrics.Metric``, built for the data's task.

Inputs the training loop passes (``metric.update(preds, target)``):

- multiclass: ``preds`` probabilities (N, C), ``target`` int64 class indices (N,);
- binary: ``preds`` probabilities of class 1 (N,), ``target`` int64 (N,) of 0/1;
- regression: ``preds`` and ``target`` float, (N,) when there is one target, else (N, T).

Each named metric carries ``meta["tasks"]``, the tasks it fits; building it for another task
raises. Every metric class torchmetrics exposes at top level is also registered as
``torchmetrics.<Name>`` (keyword arguments passed through, the data's info ignored)::

    >>> import plugins
    >>> from plugins.data import prepare
    >>> info = prepare(plugins.build("data", "iris"), val_fraction=0.2, test_fraction=0.2, seed=0).info
    >>> plugins.build("metric", {"name": "f1", "average": "weighted"}, info)
    MulticlassF1Score()
"""

import inspect
import re
from typing import Any, Literal

import torch
import torchmetrics
from torchmetrics import classification as tmc
from torchmetrics import regression as tmr
from torchmetrics.wrappers.abstract import WrapperMetric

from retort import plugins
from retort.plugins import PluginError, register
from retort.plugins.data import DataInfo

CLASSIFICATION = ("multiclass", "binary")
REGRESSION = ("regression",)
Average = Literal["micro", "macro", "weighted"]


def _require(info: DataInfo, name: str) -> None:
    """Raise unless metric ``name`` fits ``info.task``, listing the metrics that do."""
    tasks = plugins.get("metric", name).meta["tasks"]
    if info.task not in tasks:
        fitting = [e.name for e in plugins.entries("metric") if info.task in e.meta.get("tasks", ())]
        raise PluginError(f"metric {name!r} is for {' or '.join(tasks)} tasks, but data {info.name!r} is "
                          f"{info.task}; metrics for {info.task}: {', '.join(fitting)}", field="name")


class _BinaryBalancedAccuracy(tmc.MulticlassRecall):
    """Mean recall of both classes, from probabilities of class 1 thresholded at 0.5."""

    def __init__(self, threshold: float = 0.5):
        super().__init__(num_classes=2, average="macro")
        self.threshold = threshold

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update((preds > self.threshold).long(), target)


class _OutputMean(WrapperMetric):
    """Mean over outputs of a metric that gives one value per output (scikit-learn's uniform_average)."""

    def __init__(self, metric: torchmetrics.Metric):
        super().__init__()
        self.metric = metric

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.metric.update(preds, target)

    def compute(self) -> torch.Tensor:
        return self.metric.compute().mean()

    def forward(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.metric(preds, target).mean()

    def reset(self) -> None:
        self.metric.reset()
        super().reset()


# --- classification -----------------------------------------------------------------------------

def _for_task(info: DataInfo, name: str, cls: type, **options: Any) -> torchmetrics.Metric:
    """torchmetrics' task class ``cls`` (``Accuracy``, ``F1Score``, ...) for the data's task: its binary
    metric, or its multiclass metric over the data's classes (``num_classes`` and ``average`` go to it only)."""
    _require(info, name)
    return cls(task=info.task, num_classes=info.n_outputs, **options)


@register("metric", "accuracy", tasks=CLASSIFICATION)
def accuracy(info: DataInfo) -> torchmetrics.Metric:
    """Fraction of rows whose predicted class (argmax; binary: p > 0.5) is the target."""
    return _for_task(info, "accuracy", torchmetrics.Accuracy, average="micro")


@register("metric", "balanced_accuracy", tasks=CLASSIFICATION)
def balanced_accuracy(info: DataInfo) -> torchmetrics.Metric:
    """Mean per-class recall (macro recall; binary: mean of sensitivity and specificity)."""
    _require(info, "balanced_accuracy")
    if info.task == "binary":
        return _BinaryBalancedAccuracy()
    return tmc.MulticlassRecall(num_classes=info.n_outputs, average="macro")


@register("metric", "f1", tasks=CLASSIFICATION)
def f1(info: DataInfo, *, average: Average = "macro") -> torchmetrics.Metric:
    """F1 score 2PR/(P+R), classes averaged by average=macro; binary: of class 1 (average ignored)."""
    return _for_task(info, "f1", torchmetrics.F1Score, average=average)


@register("metric", "precision", tasks=CLASSIFICATION)
def precision(info: DataInfo, *, average: Average = "macro") -> torchmetrics.Metric:
    """Precision TP/(TP+FP), classes averaged by average=macro; binary: of class 1 (average ignored)."""
    return _for_task(info, "precision", torchmetrics.Precision, average=average)


@register("metric", "recall", tasks=CLASSIFICATION)
def recall(info: DataInfo, *, average: Average = "macro") -> torchmetrics.Metric:
    """Recall TP/(TP+FN), classes averaged by average=macro; binary: of class 1 (average ignored)."""
    return _for_task(info, "recall", torchmetrics.Recall, average=average)


@register("metric", "auroc", tasks=CLASSIFICATION)
def auroc(info: DataInfo) -> torchmetrics.Metric:
    """Area under the ROC curve from probabilities; multiclass: one-vs-rest, macro average."""
    return _for_task(info, "auroc", torchmetrics.AUROC, average="macro")


@register("metric", "average_precision", tasks=CLASSIFICATION)
def average_precision(info: DataInfo) -> torchmetrics.Metric:
    """Average precision Σ (R_k − R_{k−1}) P_k (area under the PR curve); multiclass: one-vs-rest, macro."""
    return _for_task(info, "average_precision", torchmetrics.AveragePrecision, average="macro")


@register("metric", "mcc", tasks=CLASSIFICATION)
def mcc(info: DataInfo) -> torchmetrics.Metric:
    """Matthews correlation coefficient of predicted and true classes, in [−1, 1]."""
    return _for_task(info, "mcc", torchmetrics.MatthewsCorrCoef)


@register("metric", "cohen_kappa", tasks=CLASSIFICATION)
def cohen_kappa(info: DataInfo) -> torchmetrics.Metric:
    """Cohen's kappa (p_o − p_e)/(1 − p_e): agreement of predicted and true classes beyond chance."""
    return _for_task(info, "cohen_kappa", torchmetrics.CohenKappa)


# --- regression ---------------------------------------------------------------------------------
# With T > 1 targets every metric is the mean of the per-target values (scikit-learn's default).

@register("metric", "mse", tasks=REGRESSION)
def mse(info: DataInfo) -> torchmetrics.Metric:
    """Mean squared error mean((ŷ − y)²)."""
    _require(info, "mse")
    return tmr.MeanSquaredError()


@register("metric", "rmse", tasks=REGRESSION)
def rmse(info: DataInfo) -> torchmetrics.Metric:
    """Root mean squared error sqrt(mean((ŷ − y)²)), per target then averaged."""
    _require(info, "rmse")
    if info.n_outputs == 1:
        return tmr.MeanSquaredError(squared=False)
    return _OutputMean(tmr.MeanSquaredError(squared=False, num_outputs=info.n_outputs))


@register("metric", "mae", tasks=REGRESSION)
def mae(info: DataInfo) -> torchmetrics.Metric:
    """Mean absolute error mean(abs(ŷ − y))."""
    _require(info, "mae")
    return tmr.MeanAbsoluteError()


@register("metric", "r2", tasks=REGRESSION)
def r2(info: DataInfo) -> torchmetrics.Metric:
    """Coefficient of determination 1 − Σ(y − ŷ)²/Σ(y − ȳ)², per target then averaged."""
    _require(info, "r2")
    return tmr.R2Score(multioutput="uniform_average")


@register("metric", "explained_variance", tasks=REGRESSION)
def explained_variance(info: DataInfo) -> torchmetrics.Metric:
    """Explained variance 1 − Var(y − ŷ)/Var(y), per target then averaged."""
    _require(info, "explained_variance")
    return tmr.ExplainedVariance(multioutput="uniform_average")


@register("metric", "mape", tasks=REGRESSION)
def mape(info: DataInfo) -> torchmetrics.Metric:
    """Mean absolute percentage error mean(abs(ŷ − y)/max(abs(y), 1.17e-6)), a fraction (not %)."""
    _require(info, "mape")
    return tmr.MeanAbsolutePercentageError()


@register("metric", "pearson", tasks=REGRESSION)
def pearson(info: DataInfo) -> torchmetrics.Metric:
    """Pearson correlation of ŷ and y, per target then averaged."""
    _require(info, "pearson")
    if info.n_outputs == 1:
        return tmr.PearsonCorrCoef()
    return _OutputMean(tmr.PearsonCorrCoef(num_outputs=info.n_outputs))


# --- every torchmetrics class -------------------------------------------------------------------

class _TorchmetricsClass:
    """Factory ``(info, **kwargs) -> cls(**kwargs)`` whose signature (the config fields) is the class's."""

    def __init__(self, cls: type):
        self.cls = cls

    @property
    def __signature__(self) -> inspect.Signature:
        # computed on first use: reading ~100 signatures at import would slow every start-up
        fields = [
            p.replace(kind=p.KEYWORD_ONLY)
            for p in inspect.signature(self.cls).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        info = inspect.Parameter("info", inspect.Parameter.POSITIONAL_ONLY)
        return inspect.Signature([info, *fields])

    def __call__(self, info: DataInfo, **kwargs: Any) -> torchmetrics.Metric:
        try:
            return self.cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise PluginError(f"torchmetrics.{self.cls.__name__}: {exc}") from None


def _first_line(cls: type) -> str:
    # a deprecated alias's own docstring says only that; its parent class has the real one
    doc = next((c.__doc__ for c in cls.__mro__ if c.__doc__ and "deprecated import" not in c.__doc__), "")
    lines = inspect.cleandoc(doc).splitlines()
    # torchmetrics docstrings link with reST (`Accuracy`_); keep the words
    return re.sub(r"`([^`]*)`_?", r"\1", lines[0]) if lines else ""


for _name, _cls in list(vars(torchmetrics).items()):
    if isinstance(_cls, type) and issubclass(_cls, torchmetrics.Metric) and not inspect.isabstract(_cls):
        plugins.add("metric", f"torchmetrics.{_name}", _TorchmetricsClass(_cls), doc=_first_line(_cls),
                    origin="torchmetrics")


class _Perplexity(torchmetrics.Metric):
    """exp of the mean negative log-probability of the targets (from probabilities (N, C) and indices (N,))."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        p = preds.gather(1, target.reshape(-1, 1).long()).clamp_min(torch.finfo(preds.dtype).tiny)
        self.nll += -p.double().log().sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return (self.nll / self.count).exp().float()


@register("metric", "perplexity", tasks=("multiclass",))
def perplexity(info: DataInfo) -> torchmetrics.Metric:
    """exp(mean cross-entropy) of the targets: 1 is perfect, the number of classes is a uniform guess."""
    _require(info, "perplexity")
    return _Perplexity()
