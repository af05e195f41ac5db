import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from retort import plugins
from retort.plugins import PluginError
from retort.plugins.data import DataInfo

MULTI = DataInfo("m", "multiclass", 4, None, 3, 12, 0, 0, ["a", "b", "c"])
BINARY = DataInfo("b", "binary", 4, None, 1, 12, 0, 0, ["no", "yes"])
REG = DataInfo("r", "regression", 4, None, 1, 12, 0, 0, None)
REG2 = DataInfo("r2", "regression", 4, None, 2, 12, 0, 0, None)

rng = np.random.default_rng(0)
# multiclass: 12 rows, every class present, probabilities with no ties
Y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1])
P = rng.dirichlet([1, 1, 1], size=12)
P[[0, 4, 5, 7]] = P[[0, 4, 5, 7]][:, [2, 0, 1]]  # a few rows right by construction, some wrong
YB = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 1, 0])  # 7 of 12 positive: accuracy is not balanced
PB = np.array([0.12, 0.81, 0.47, 0.66, 0.93, 0.08, 0.35, 0.58, 0.29, 0.74, 0.52, 0.44])  # TP 5 FN 2 FP 1
T = rng.normal(size=(12, 2)) * 3 + 5  # positive targets so that mape stays finite
Q = T + rng.normal(size=(12, 2))


def value(name, info, preds, target, split: bool = False) -> float:
    metric = plugins.build("metric", name, info)
    p, t = torch.as_tensor(preds, dtype=torch.float32), torch.as_tensor(target)
    if split:  # two updates give the same as one: what a loop over batches does
        metric.update(p[:5], t[:5])
        metric.update(p[5:], t[5:])
    else:
        metric.update(p, t)
    return float(metric.compute())


PRED = P.argmax(1)
PRED_B = (PB > 0.5).astype(int)
ONE_HOT = np.eye(3)[Y]

CLASSIFICATION = [
    ("accuracy", skm.accuracy_score(Y, PRED), skm.accuracy_score(YB, PRED_B)),
    ("balanced_accuracy", skm.balanced_accuracy_score(Y, PRED), skm.balanced_accuracy_score(YB, PRED_B)),
    ("f1", skm.f1_score(Y, PRED, average="macro"), skm.f1_score(YB, PRED_B)),
    ({"name": "f1", "average": "micro"}, skm.f1_score(Y, PRED, average="micro"), skm.f1_score(YB, PRED_B)),
    ({"name": "f1", "average": "weighted"}, skm.f1_score(Y, PRED, average="weighted"), skm.f1_score(YB, PRED_B)),
    ("precision", skm.precision_score(Y, PRED, average="macro"), skm.precision_score(YB, PRED_B)),
    ({"name": "precision", "average": "weighted"}, skm.precision_score(Y, PRED, average="weighted"),
     skm.precision_score(YB, PRED_B)),
    ("recall", skm.recall_score(Y, PRED, average="macro"), skm.recall_score(YB, PRED_B)),
    ({"name": "recall", "average": "micro"}, skm.recall_score(Y, PRED, average="micro"),
     skm.recall_score(YB, PRED_B)),
    ("auroc", skm.roc_auc_score(Y, P, multi_class="ovr", average="macro"), skm.roc_auc_score(YB, PB)),
    ("average_precision", skm.average_precision_score(ONE_HOT, P, average="macro"),
     skm.average_precision_score(YB, PB)),
    ("mcc", skm.matthews_corrcoef(Y, PRED), skm.matthews_corrcoef(YB, PRED_B)),
    ("cohen_kappa", skm.cohen_kappa_score(Y, PRED), skm.cohen_kappa_score(YB, PRED_B)),
]


def test_example_is_not_degenerate():
    assert 0.3 < skm.accuracy_score(Y, PRED) < 0.9 and 0.3 < skm.accuracy_score(YB, PRED_B) < 0.9
    assert skm.f1_score(Y, PRED, average="macro") != skm.f1_score(Y, PRED, average="weighted")
    binary = [b for _, _, b in CLASSIFICATION]
    assert len({round(b, 6) for b in binary}) >= 8 and min(binary) > 0.1


@pytest.mark.parametrize(("spec", "multiclass", "binary"), CLASSIFICATION)
def test_classification_matches_sklearn(spec, multiclass, binary):
    for split in (False, True):
        assert value(spec, MULTI, P, Y, split) == pytest.approx(multiclass, abs=1e-6)
        assert value(spec, BINARY, PB, YB, split) == pytest.approx(binary, abs=1e-6)


def pearson(t: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean([np.corrcoef(t[:, j], q[:, j])[0, 1] for j in range(t.shape[1])]))


REGRESSION = [
    ("mse", skm.mean_squared_error),
    ("rmse", skm.root_mean_squared_error),
    ("mae", skm.mean_absolute_error),
    ("r2", skm.r2_score),
    ("explained_variance", skm.explained_variance_score),
    ("mape", skm.mean_absolute_percentage_error),
    ("pearson", pearson),
]


@pytest.mark.parametrize(("name", "reference"), REGRESSION)
def test_regression_matches_sklearn(name, reference):
    one = reference(T[:, :1], Q[:, :1])
    two = reference(T, Q)  # the mean of the per-target values
    assert one != pytest.approx(two)
    for split in (False, True):
        assert value(name, REG, Q[:, 0], T[:, 0], split) == pytest.approx(one, rel=1e-5)
        assert value(name, REG2, Q, T, split) == pytest.approx(two, rel=1e-5)


def test_golden_values():
    # a hand-checkable case: errors 0.5, -0.5, 1, 0 -> mse 0.375, mae 0.5
    y, yhat = [1.0, 2.0, 3.0, 4.0], [1.5, 1.5, 4.0, 4.0]
    assert value("mse", REG, yhat, y) == pytest.approx(0.375)
    assert value("rmse", REG, yhat, y) == pytest.approx(0.375 ** 0.5)
    assert value("mae", REG, yhat, y) == pytest.approx(0.5)
    assert value("r2", REG, yhat, y) == pytest.approx(1 - 1.5 / 5)
    assert value("accuracy", BINARY, [0.2, 0.6, 0.7, 0.4], [0, 1, 0, 0]) == pytest.approx(0.75)


def test_tasks_meta():
    tasks = {e.name: e.meta.get("tasks") for e in plugins.entries("metric") if "." not in e.name}
    assert tasks == {**dict.fromkeys(["accuracy", "balanced_accuracy", "f1", "precision", "recall", "auroc",
                                      "average_precision", "mcc", "cohen_kappa"], ("multiclass", "binary")),
                     **dict.fromkeys(["mse", "rmse", "mae", "r2", "explained_variance", "mape", "pearson"],
                                     ("regression",)), "perplexity": ("multiclass",)}


def test_wrong_task():
    with pytest.raises(PluginError) as err:
        plugins.build("metric", "mse", MULTI)
    assert err.value.field == "name"
    assert str(err.value) == (
        "metric 'mse' is for regression tasks, but data 'm' is multiclass; metrics for multiclass: accuracy, "
        "auroc, average_precision, balanced_accuracy, cohen_kappa, f1, mcc, perplexity, precision, recall")
    with pytest.raises(PluginError, match="metrics for regression: explained_variance, mae, mape, mse, "
                                          "pearson, r2, rmse") as err:
        plugins.build("metric", "accuracy", REG)
    assert "'accuracy' is for multiclass or binary tasks" in str(err.value)


def test_bad_average():
    with pytest.raises(PluginError) as err:
        plugins.build("metric", {"name": "f1", "average": "samples"}, MULTI)
    assert err.value.field == "average"


def test_torchmetrics_passthrough():
    entry = plugins.get("metric", "torchmetrics.MeanSquaredError")
    assert entry.origin == "torchmetrics" and list(entry.params) == ["squared", "num_outputs"]
    m = plugins.build("metric", {"name": "torchmetrics.MeanSquaredError", "squared": False}, REG)
    m.update(torch.tensor([1.5, 1.5, 4.0, 4.0]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert float(m.compute()) == pytest.approx(0.375 ** 0.5)
    acc = plugins.build("metric", {"name": "torchmetrics.Accuracy", "task": "multiclass", "num_classes": 3},
                        MULTI)
    acc.update(torch.as_tensor(P), torch.as_tensor(Y))
    assert float(acc.compute()) == pytest.approx(skm.accuracy_score(Y, PRED))
    with pytest.raises(PluginError) as err:
        plugins.build("metric", "torchmetrics.Accuracy", MULTI)
    assert err.value.field == "task"
    with pytest.raises(PluginError) as err:
        plugins.build("metric", {"name": "torchmetrics.MeanSquaredError", "squard": False}, REG)
    assert err.value.field == "squard" and "did you mean 'squared'" in str(err.value)
    with pytest.raises(PluginError, match=r"torchmetrics\.Accuracy: "):
        plugins.build("metric", {"name": "torchmetrics.Accuracy", "task": "multiclass"}, MULTI)
    names = plugins.available("metric")
    assert "torchmetrics.Metric" not in names
    assert len([n for n in names if n.startswith("torchmetrics.")]) > 90
