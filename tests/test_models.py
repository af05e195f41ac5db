import pytest
import torch
from torch import nn

from retort import plugins
from retort.plugins import PluginError
from retort.plugins.data import DataInfo, prepare
from retort.plugins.models import ACTIVATIONS


@pytest.fixture(scope="module")
def digits() -> DataInfo:
    return prepare(plugins.build("data", "digits"), val_fraction=0.2, test_fraction=0.2, seed=0).info


@pytest.fixture(scope="module")
def diabetes() -> DataInfo:
    return prepare(plugins.build("data", "diabetes"), val_fraction=0.2, test_fraction=0.2, seed=0).info


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# (spec, parameters on digits: 64 -> 10, parameters on diabetes: 10 -> 1); None: not for that data
CASES = [
    ("linear", 64 * 10 + 10, 10 + 1),
    ("mlp", (64 * 128 + 128) + (128 * 64 + 64) + (64 * 10 + 10), (10 * 128 + 128) + (128 * 64 + 64) + 65),
    ({"name": "mlp", "hidden": [7], "activation": "tanh"}, 64 * 7 + 7 + 7 * 10 + 10, 10 * 7 + 7 + 7 + 1),
    ({"name": "mlp", "norm": "batch", "dropout": 0.5}, 17226 + 2 * (128 + 64), 9729 + 2 * (128 + 64)),
    ({"name": "mlp", "norm": "layer"}, 17226 + 2 * (128 + 64), 9729 + 2 * (128 + 64)),
    # conv 1->16 (3x3) 8x8 -> pool 4x4, conv 16->32 -> pool 2x2, Linear(128, 64), Linear(64, 10)
    ("cnn", (9 * 16 + 16) + (16 * 9 * 32 + 32) + (128 * 64 + 64) + (64 * 10 + 10), None),
    # conv 1->8 (5x5) -> pool 4x4, Linear(8 * 16, 32), Linear(32, 10)
    ({"name": "cnn", "channels": [8], "kernel_size": 5, "hidden": 32},
     (25 * 8 + 8) + (128 * 32 + 32) + (32 * 10 + 10), None),
]


@pytest.mark.parametrize(("spec", "on_digits", "on_diabetes"), CASES)
def test_shapes_and_parameter_counts(spec, on_digits, on_diabetes, digits, diabetes):
    for info, count in ((digits, on_digits), (diabetes, on_diabetes)):
        if count is None:
            continue
        torch.manual_seed(0)
        model = plugins.build("model", spec, info)
        assert n_params(model) == count
        model.eval()
        out = model(torch.randn(5, info.n_features))
        assert out.shape == (5, info.n_outputs) and out.dtype == torch.float32


def test_default_counts_are_the_documented_ones(digits, diabetes):
    assert n_params(plugins.build("model", "mlp", digits)) == 17226
    assert n_params(plugins.build("model", "mlp", diabetes)) == 9729
    assert n_params(plugins.build("model", "cnn", digits)) == 13706


def test_mlp_layers(digits):
    model = plugins.build("model", {"name": "mlp", "hidden": [8, 4], "norm": "batch", "dropout": 0.25,
                                    "activation": "gelu"}, digits)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Dropout] * 2 + [nn.Linear]
    assert model[3].p == 0.25
    assert [type(m) for m in plugins.build("model", {"name": "mlp", "hidden": []}, digits)] == [nn.Linear]


def test_binary_gives_one_score():
    info = prepare(plugins.build("data", "breast_cancer"), val_fraction=0.2, test_fraction=0.2, seed=0).info
    for name in ("linear", "mlp"):
        assert plugins.build("model", name, info)(torch.randn(3, 30)).shape == (3, 1)


def test_cnn_on_other_image_shapes():
    info = DataInfo("rgb", "multiclass", 75, (3, 5, 5), 4, 10, 0, 0, None)
    model = plugins.build("model", {"name": "cnn", "channels": [4, 6, 8]}, info)
    # 5x5 -> pool 2x2 -> pool 1x1 -> no pool left: Linear(8, 64)
    assert model[-3].in_features == 8
    assert model(torch.randn(2, 75)).shape == (2, 4)


def test_cnn_needs_image_shape(diabetes):
    with pytest.raises(PluginError) as err:
        plugins.build("model", "cnn", diabetes)
    assert err.value.field == "name"
    assert "data 'diabetes' has no image_shape" in str(err.value) and "digits" in str(err.value)


def test_seeded_init_is_deterministic(digits):
    for spec in ("linear", "mlp", "cnn"):
        torch.manual_seed(0)
        a = plugins.build("model", spec, digits).state_dict()
        torch.manual_seed(0)
        b = plugins.build("model", spec, digits).state_dict()
        torch.manual_seed(1)
        c = plugins.build("model", spec, digits).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not any(torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))


def test_every_activation(digits):
    assert sorted(ACTIVATIONS) == sorted(["relu", "gelu", "tanh", "sigmoid", "elu", "leaky_relu", "silu",
                                          "softplus", "identity"])
    for name, cls in ACTIVATIONS.items():
        model = plugins.build("model", {"name": "mlp", "hidden": [3], "activation": name}, digits)
        assert type(model[1]) is cls
    with pytest.raises(PluginError) as err:
        plugins.build("model", {"name": "mlp", "activation": "Relu6"}, digits)
    assert err.value.field == "activation"
    assert "did you mean 'relu'" in str(err.value)
    assert "leaky_relu, silu, softplus, identity" in str(err.value)


@pytest.mark.parametrize(("spec", "field"), [
    ({"name": "mlp", "hidden": [64, 0]}, "hidden"),
    ({"name": "mlp", "dropout": 1.0}, "dropout"),
    ({"name": "mlp", "dropout": -0.1}, "dropout"),
    ({"name": "mlp", "norm": "group"}, "norm"),
    ({"name": "cnn", "channels": [16, -1]}, "channels"),
    ({"name": "cnn", "kernel_size": 0}, "kernel_size"),
    ({"name": "cnn", "hidden": 0}, "hidden"),
    ({"name": "cnn", "activation": "swish"}, "activation"),
])
def test_bad_config(spec, field, digits):
    with pytest.raises(PluginError) as err:
        plugins.build("model", spec, digits)
    assert err.value.field == field
