"""The loss catalogue against Flux's numbers: the seed chapter, Flux's docstrings and test suite, torch.

Flux is features x batch with 1-based labels; every example here is transposed to batch-first and its
labels shifted to 0-based. Float32 examples keep Float32 inputs (Flux prints ``...f0``).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from retort import plugins
from retort.plugins.losses import Loss


def loss(name: str, **config) -> Loss:
    return plugins.build("loss", {"name": name, **config})


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def f32(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def i64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.int64)


def softmax_7_7() -> torch.Tensor:
    """Flux's ``softmax(reshape(-7:7, 3, 5) .* 1f0)``, batch-first: 5 identical rows."""
    return torch.arange(-7, 8, dtype=torch.float32).reshape(5, 3).softmax(dim=1)


# (id, loss name, config, yhat, y, expected, relative tolerance)
SEED = [
    # the chapter's comment says 0.0333; 0.14 / 3 is right (seeds/README.md)
    ("mse", "mse", {}, f32([0.5, 1.8, 3.3]), f32([0.6, 2.0, 3.0]), 0.046667, 1e-5),
    ("logitbce", "logitbinarycrossentropy", {}, f32([0.5, -1.0, 2.0]), f32([1.0, 0.0, 1.0]), 0.304756, 1e-5),
    ("bce", "binarycrossentropy", {}, torch.sigmoid(f32([0.5, -1.0, 2.0])), f32([1.0, 0.0, 1.0]),
     0.304756, 1e-5),
    # Float32[0.1 0.8; 0.5 0.1; 0.4 0.1] (3 classes x 2 samples), labels [2, 1] -> [1, 0]
    ("logitce", "logitcrossentropy", {}, f32([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]]), i64([1, 0]), 0.817819, 1e-5),
    ("ce", "crossentropy", {}, f32([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]]).softmax(dim=1), i64([1, 0]),
     0.817819, 1e-5),
]

_LOGITS_7 = torch.cat([torch.arange(-9.0, 1.0), torch.arange(0.0, 10.0), f32([7.5])]).reshape(7, 3)
_P_BIN = f32([[1, 2], [3, 3], [4, 5]]).softmax(dim=1)  # softmax(reshape(vcat(1:3, 3:5), 2, 3))'
_HINGE = (f64([0.1, 0.3, 1, 1.5]), i64([1, -1, 1, 1]))

# Every jldoctest in Flux's src/losses/functions.jl with a printed number.
FLUX_DOCS = [
    ("mae", "mae", {}, f64([1.1, 1.9, 3.1]), i64([1, 2, 3]), 0.10000000000000009, 1e-12),
    ("mse", "mse", {}, f64([1.1, 1.9, 3.1]), i64([1, 2, 3]), 0.010000000000000018, 1e-12),
    ("msle-1", "msle", {}, f32([1.1, 2.2, 3.3]), i64([1, 2, 3]), 0.009084041, 1e-5),
    ("msle-2", "msle", {}, f32([0.9, 1.8, 2.7]), i64([1, 2, 3]), 0.011100831, 1e-5),
    ("huber", "huber", {}, f64([1.1, 2.1, 3.1]), i64([1, 2, 3]), 0.005000000000000009, 1e-12),
    ("huber-delta", "huber", {"delta": 0.05}, f64([1.1, 2.1, 3.1]), i64([1, 2, 3]), 0.003750000000000005, 1e-12),
    ("ce", "crossentropy", {}, softmax_7_7(), i64([0, 1, 2, 1, 0]), 1.6076053, 1e-6),
    ("ce-sum", "crossentropy", {"agg": "sum"}, softmax_7_7(), i64([0, 1, 2, 1, 0]), 5 * 1.6076053, 1e-6),
    ("ce-smooth", "crossentropy", {"label_smoothing": 0.15}, softmax_7_7(), i64([0, 1, 2, 1, 0]), 1.5776052, 1e-6),
    # reshape(vcat(-9:0, 0:9, 7.5f0), 3, 7) with labels "abcabaa"
    ("logitce", "logitcrossentropy", {}, _LOGITS_7, i64([0, 1, 2, 0, 1, 0, 0]), 1.5791205, 1e-6),
    ("ce-softmax", "crossentropy", {}, _LOGITS_7.softmax(dim=1), i64([0, 1, 2, 0, 1, 0, 0]), 1.5791197, 1e-6),
    ("bce", "binarycrossentropy", {}, _P_BIN[:, 1], torch.tensor([True, False, True]), 0.43989, 1e-5),
    ("bce-as-ce", "crossentropy", {}, _P_BIN, i64([1, 0, 1]), 0.43989, 1e-5),
    ("logitbce", "logitbinarycrossentropy", {}, f32([2, -1, math.pi]), torch.tensor([True, False, True]),
     0.160832, 1e-5),
    ("bce-sigmoid", "binarycrossentropy", {}, f32([2, -1, math.pi]).sigmoid(), i64([1, 0, 1]), 0.16083185, 1e-6),
    ("kl", "kldivergence", {}, torch.full((2, 2), 0.5, dtype=torch.float64), i64([[1, 0], [0, 1]]),
     math.log(2), 1e-12),
    ("kl-sum", "kldivergence", {"agg": "sum"}, torch.full((2, 2), 0.5, dtype=torch.float64),
     i64([[1, 0], [0, 1]]), 2 * math.log(2), 1e-12),
    ("kl-same", "kldivergence", {"eps": 0}, torch.full((2, 2), 0.5, dtype=torch.float64),
     torch.full((2, 2), 0.5, dtype=torch.float64), 0.0, 0),
    ("kl-inf", "kldivergence", {"eps": 0}, f64([[1, 0], [0, 1]]), torch.full((2, 2), 0.5, dtype=torch.float64),
     math.inf, 0),
    ("poisson", "poisson", {}, f64([1, 3, 3]), i64([1, 2, 3]), 0.5023128522198171, 1e-12),
    ("hinge", "hinge", {}, *_HINGE, 0.55, 1e-12),
    ("squared_hinge", "squared_hinge", {}, *_HINGE, 0.625, 1e-12),
    ("dice", "dice_coeff", {}, f64([1.1, 2.1, 3.1]), i64([1, 2, 3]), 0.000992391663909964, 1e-10),
    ("binary_focal", "binary_focal", {}, f64([[0.268941, 0.731059], [0.5, 0.5], [0.268941, 0.731059]]),
     i64([[0, 1], [1, 0], [0, 1]]), 0.0728675615927385, 1e-10),
    ("focal", "focal", {}, softmax_7_7(), i64([0, 1, 2, 1, 0]), 1.1277571935622628, 1e-5),
    ("siamese", "siamese_contrastive", {}, f64([0.5, 1.5, 2.5]), i64([1, 2, 3]), -4.833333333333333, 1e-12),
    ("siamese-margin", "siamese_contrastive", {"margin": 2}, f64([0.5, 1.5, 2.5]), i64([1, 2, 3]), -4.0, 1e-12),
]

_REG = (f64([0.9, 0.1, 0.1, 0.9]), i64([1, 1, 0, 0]))
_CE = f64([[0.1, 0.9], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])  # [.1 .9; .9 .1; .9 .1; .1 .9]
_V = math.log(0.1 / 0.9)
_DICE = (f64([0, 1.4, 0.5, 1.2]), f64([1.0, 0.5, 0.3, 2.4]))
_SIAM = (f64([[0.4, 0.5, 0.1], [0.2, 0.5, 0.3]]), i64([[1, 0, 0], [0, 0, 1]]))  # ŷ, y (3x2)'
_SIAM1 = (softmax_7_7(), i64([0, 1, 2, 1, 0]))
_SIAM2 = (f64([0.6, 0.4, 0.1, 0.2, 0.7]), i64([1, 0, 0, 1, 1]))
_TVERSKY_Y = i64([0, 1, 0, 1, 1, 1])

# Flux's own test suite (test/losses.jl), and the tversky example of FluxML/Flux.jl issue #1993.
FLUX_TESTS = [
    # Flux test/ctc.jl, hand-calculated: x = [1. 2. 3.; 2. 1. 1.; 3. 3. 2.] (classes × time; here transposed),
    # y = [1, 2] (here 0-based), blank the last class
    ("ctc", "ctc", {}, f64([[1.0, 2.0, 3.0], [2.0, 1.0, 1.0], [3.0, 3.0, 2.0]]).T, i64([0, 1]),
     3.6990738275138035, 1e-10),
    ("mse", "mse", {}, *_REG, (0.1**2 + 0.9**2) / 2, 1e-12),
    ("mae", "mae", {}, *_REG, 0.5, 1e-12),
    ("huber", "huber", {}, *_REG, 0.20500000000000002, 1e-12),
    ("msle", "msle", {}, f64([345.0, 332.0, 789.0]), f64([123.0, 456.0, 789.0]), 0.38813985859136585, 1e-12),
    ("ce", "crossentropy", {}, _CE, i64([1, 1, 0, 0]), 1.203972804325936, 1e-12),
    ("ce-smooth", "crossentropy", {"label_smoothing": 0.1}, _CE, i64([1, 1, 0, 0]), 1.2039728043259348, 1e-12),
    ("logitce", "logitcrossentropy", {}, f64([[_V, 0], [0, _V], [0, _V], [_V, 0]]), i64([1, 1, 0, 0]),
     1.203972804325936, 1e-12),
    ("kl", "kldivergence", {}, f64([[4.0], [5.0], [6.0]]), f64([[1], [2], [3]]), -1.7661057888493457, 1e-12),
    ("kl-self", "kldivergence", {}, f64([[1], [2], [3]]), f64([[1], [2], [3]]), 0.0, 0),
    ("hinge-0", "hinge", {}, f64([5, 6, 7, 8]), i64([1, 2, 3, 4]), 0.0, 0),
    ("hinge", "hinge", {}, f64([1, 2, 3, 4]), f64([0.5, 1, 1.5, 2]), 0.125, 1e-12),
    ("squared_hinge-0", "squared_hinge", {}, f64([5, 6, 7, 8]), i64([1, 2, 3, 4]), 0.0, 0),
    ("squared_hinge", "squared_hinge", {}, f64([1, 2, 3, 4]), f64([0.5, 1, 1.5, 2]), 0.0625, 1e-12),
    ("poisson", "poisson", {}, f64([0.4, 0.5, 0.6]), f64([0.1, 0.2, 0.3]), 0.6278353988097339, 1e-12),
    ("poisson-self", "poisson", {}, f64([0.1, 0.2, 0.3]), f64([0.1, 0.2, 0.3]), 0.5044459776946685, 1e-12),
    ("dice", "dice_coeff", {}, *_DICE, 0.2799999999999999, 1e-12),
    ("dice-self", "dice_coeff", {}, _DICE[1], _DICE[1], 0.0, 0),
    ("tversky", "tversky", {}, *_DICE, -0.06772009029345383, 1e-12),
    ("tversky-beta", "tversky", {"beta": 0.8}, *_DICE, -0.09490740740740744, 1e-12),
    ("tversky-self", "tversky", {}, _DICE[1], _DICE[1], -0.5576923076923075, 1e-12),
    ("tversky-fnp", "tversky", {}, f64([1, 1, 0, 1, 1, 0]), _TVERSKY_Y, 0.19999999999999996, 1e-12),
    ("tversky-fp", "tversky", {}, f64([1, 1, 1, 1, 1, 1]), _TVERSKY_Y, 0.21875, 1e-12),
    ("binary_focal", "binary_focal", {}, f64([[0.6, 0.4], [0.3, 0.7]]), i64([[1, 0], [0, 1]]),
     0.05691642237852222, 1e-10),
    ("focal", "focal", {}, f64([[0.4, 0.5, 0.1], [0.2, 0.5, 0.3]]), i64([0, 2]), 0.45990566879720157, 1e-10),
    ("siamese", "siamese_contrastive", {}, *_SIAM, 0.2333333333333333, 1e-12),
    ("siamese-0.5", "siamese_contrastive", {"margin": 0.5}, *_SIAM, 0.10000000000000002, 1e-12),
    ("siamese-1.5", "siamese_contrastive", {"margin": 1.5}, *_SIAM, 0.5333333333333333, 1e-12),
    ("siamese-0", "siamese_contrastive", {"margin": 0}, *_SIAM, 0.09166666666666667, 1e-12),
    ("siamese1", "siamese_contrastive", {}, *_SIAM1, 0.32554644, 1e-6),
    ("siamese1-0.5", "siamese_contrastive", {"margin": 0.5}, *_SIAM1, 0.16271012, 1e-6),
    ("siamese1-1.5", "siamese_contrastive", {"margin": 1.5}, *_SIAM1, 0.6532292, 1e-6),
    ("siamese1-0", "siamese_contrastive", {"margin": 0}, *_SIAM1, 0.13161165, 1e-6),
    ("siamese2", "siamese_contrastive", {}, *_SIAM2, 0.21200000000000005, 1e-12),
    ("siamese2-self", "siamese_contrastive", {}, _SIAM2[0], _SIAM2[0], 0.18800000000000003, 1e-12),
]


def _check_golden(name, config, yhat, y, expected, rel):
    value = loss(name, **config)(yhat, y)
    assert value.dtype == yhat.dtype
    assert value.item() == pytest.approx(expected, rel=rel, abs=1e-15)


@pytest.mark.parametrize(("name", "config", "yhat", "y", "expected", "rel"),
                         [c[1:] for c in SEED], ids=[c[0] for c in SEED])
def test_seed_chapter_examples(name, config, yhat, y, expected, rel):
    _check_golden(name, config, yhat, y, expected, rel)


@pytest.mark.parametrize(("name", "config", "yhat", "y", "expected", "rel"),
                         [c[1:] for c in FLUX_DOCS], ids=[c[0] for c in FLUX_DOCS])
def test_flux_docstring_examples(name, config, yhat, y, expected, rel):
    _check_golden(name, config, yhat, y, expected, rel)


@pytest.mark.parametrize(("name", "config", "yhat", "y", "expected", "rel"),
                         [c[1:] for c in FLUX_TESTS], ids=[c[0] for c in FLUX_TESTS])
def test_flux_test_suite_values(name, config, yhat, y, expected, rel):
    _check_golden(name, config, yhat, y, expected, rel)


def test_every_registered_loss_has_a_golden_value():
    covered = {c[1] for c in SEED + FLUX_DOCS + FLUX_TESTS}
    assert set(plugins.available("loss")) <= covered
    assert len(covered) == 18


def test_meta_and_loss_attributes_agree():
    expected = {
        "mae": ("regression", "values"), "mse": ("regression", "values"), "msle": ("regression", "values"),
        "huber": ("regression", "values"), "poisson": ("regression", "values"),
        "crossentropy": ("multiclass", "probabilities"), "logitcrossentropy": ("multiclass", "logits"),
        "kldivergence": ("multiclass", "probabilities"), "focal": ("multiclass", "probabilities"),
        "binarycrossentropy": ("binary", "probabilities"), "logitbinarycrossentropy": ("binary", "logits"),
        "binary_focal": ("binary", "probabilities"), "hinge": ("binary", "logits"),
        "squared_hinge": ("binary", "logits"), "dice_coeff": ("binary", "probabilities"),
        "tversky": ("binary", "probabilities"), "siamese_contrastive": ("binary", "values"),
        "ctc": ("sequence", "logits"),
    }
    assert set(plugins.available("loss")) == set(expected)
    for entry in plugins.entries("loss"):
        task, input = expected[entry.name]
        assert entry.meta == {"task": (task,), "input": input}
        built = plugins.build("loss", entry.name)
        assert isinstance(built, Loss) and isinstance(built, torch.nn.Module)
        assert (built.name, built.task, built.input) == (entry.name, (task,), input)


def test_defaults_are_flux_defaults():
    assert plugins.resolve("loss", "huber") == {"name": "huber", "agg": "mean", "delta": 1.0}
    assert plugins.resolve("loss", "crossentropy") == {
        "name": "crossentropy", "agg": "mean", "eps": None, "label_smoothing": 0.0, "dims": 1}
    assert plugins.resolve("loss", "focal")["gamma"] == 2.0
    assert plugins.resolve("loss", "binary_focal")["gamma"] == 2.0
    assert plugins.resolve("loss", "tversky") == {"name": "tversky", "beta": 0.7}
    assert plugins.resolve("loss", "dice_coeff") == {"name": "dice_coeff", "smooth": 1.0}
    assert plugins.resolve("loss", "siamese_contrastive")["margin"] == 1.0
    # Flux's Greek keywords are aliases
    assert plugins.resolve("loss", {"name": "huber", "δ": 0.5})["delta"] == 0.5
    assert plugins.resolve("loss", {"name": "tversky", "β": 0.6})["beta"] == 0.6
    assert repr(loss("huber", delta=0.5)) == "Loss(name='huber', agg='mean', delta=0.5)"


# --- label smoothing ------------------------------------------------------------------------------

def test_label_smoothing_flux_docstring():
    """Flux: smoothing raises the loss of a near-correct model and lowers that of a wrong one."""
    y = i64([1, 1, 1, 0, 1, 0])
    y_sim = (F.one_hot(y, 2).float() * math.log(2)).softmax(dim=1)  # 1/3, 2/3 on the right class
    y_dis = y_sim.flip(1)
    plain, smooth = loss("crossentropy"), loss("crossentropy", label_smoothing=0.2)
    assert plain(y_sim, y) < smooth(y_sim, y)
    assert plain(y_dis, y) > smooth(y_dis, y)
    # smoothed targets 0.1 / 0.9 (the docstring's y_smoothed): −(0.9 log 2/3 + 0.1 log 1/3)
    assert smooth(y_sim, y).item() == pytest.approx(-(0.9 * math.log(2 / 3) + 0.1 * math.log(1 / 3)), rel=1e-6)


def test_label_smoothing_matches_torch_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(32, 5, generator=g), torch.randint(0, 5, (32,), generator=g)
    for alpha in (0.0, 0.1, 0.3):
        ours = loss("logitcrossentropy", label_smoothing=alpha)(logits, y)
        assert ours.item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=alpha).item(), rel=1e-6)
        probs = loss("crossentropy", label_smoothing=alpha)(logits.softmax(dim=1), y)
        assert probs.item() == pytest.approx(ours.item(), rel=1e-5)


def test_binary_label_smoothing_is_flux_rule():
    """Binary targets are squeezed towards 0.5: y(1 − α) + α/2 (Flux's ``label_smoothing(y, α; dims=0)``)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 1, dtype=torch.float64, generator=g)
    y = torch.randint(0, 2, (64,), generator=g)
    ys = y.double().unsqueeze(1) * 0.8 + 0.1
    ours = loss("logitbinarycrossentropy", label_smoothing=0.2)(logits, y)
    assert ours.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, ys).item(), rel=1e-12)
    p = logits.sigmoid()
    manual = (-ys * p.log() - (1 - ys) * (1 - p).log()).mean()
    assert loss("binarycrossentropy", label_smoothing=0.2, eps=0)(p, y).item() == pytest.approx(manual.item(),
                                                                                             rel=1e-12)


# --- targets: indices, one-hot, shapes -----------------------------------------------------------

@pytest.mark.parametrize("name", ["crossentropy", "logitcrossentropy", "kldivergence", "focal", "mse", "hinge",
                                  "binary_focal"])
def test_index_targets_equal_one_hot(name):
    g = torch.Generator().manual_seed(2)
    yhat = torch.rand(16, 4, generator=g).softmax(dim=1)
    y = torch.randint(0, 4, (16,), generator=g)
    onehot = F.one_hot(y, 4)
    for agg in ("mean", "sum", "none"):
        f = loss(name, agg=agg)
        torch.testing.assert_close(f(yhat, y), f(yhat, onehot), rtol=0, atol=0)
        if name != "hinge":  # float hinge targets are taken as given (0 is not −1)
            torch.testing.assert_close(f(yhat, y), f(yhat, onehot.double()), rtol=0, atol=0)


def test_index_targets_over_extra_dimensions():
    """(N, C, H, W) scores with (N, H, W) indices, as torch's cross_entropy takes them."""
    g = torch.Generator().manual_seed(3)
    logits, y = torch.randn(2, 3, 4, 5, generator=g), torch.randint(0, 3, (2, 4, 5), generator=g)
    ours = loss("logitcrossentropy", agg="none")(logits, y)
    assert ours.shape == (2, 4, 5)
    torch.testing.assert_close(ours, F.cross_entropy(logits, y, reduction="none"))


@pytest.mark.parametrize("name", ["logitbinarycrossentropy", "binarycrossentropy", "binary_focal", "hinge",
                                  "squared_hinge", "dice_coeff", "tversky", "siamese_contrastive", "mse"])
def test_binary_column_and_vector_shapes_agree(name):
    g = torch.Generator().manual_seed(4)
    p = torch.rand(10, generator=g)
    y = torch.randint(0, 2, (10,), generator=g)
    f = loss(name)
    expected = f(p, y)
    cases = [(p.unsqueeze(1), y), (p, y.unsqueeze(1)), (p.unsqueeze(1), y.unsqueeze(1)), (p, y.bool())]
    if "hinge" not in name:  # float hinge targets are taken as given (0 is not −1)
        cases.append((p.unsqueeze(1), y.float()))
    for yhat, target in cases:
        torch.testing.assert_close(f(yhat, target), expected, rtol=0, atol=0)


def test_column_against_vector_never_broadcasts():
    yhat, y = f64([[1.0], [2.0], [4.0]]), f64([1.5, 2.0, 3.0])
    assert loss("mse")(yhat, y).item() == pytest.approx((0.25 + 0 + 1) / 3, rel=1e-12)
    assert loss("mse", agg="none")(yhat, y).shape == (3, 1)
    assert loss("mae", agg="none")(y, yhat).shape == (3,)


def test_hinge_maps_zero_labels_to_minus_one():
    scores = f64([0.1, -0.3, 1.0, -1.5])
    pm = f64([1, -1, 1, -1])
    for name in ("hinge", "squared_hinge"):
        f = loss(name)
        expected = f(scores, pm)
        assert f(scores, i64([1, 0, 1, 0])).item() == pytest.approx(expected.item(), rel=1e-12)
        assert f(scores, i64([1, -1, 1, -1])).item() == pytest.approx(expected.item(), rel=1e-12)
        assert f(scores, torch.tensor([True, False, True, False])).item() == pytest.approx(expected.item())
    assert loss("hinge")(scores, pm).item() == pytest.approx((0.9 + 0.7 + 0 + 0) / 4, rel=1e-12)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"mse: yhat has shape \(4, 3\) but y has shape \(5,\)"):
        loss("mse")(torch.zeros(4, 3), torch.zeros(5))
    with pytest.raises(ValueError, match=r"expected y of shape \(4, 3\)"):
        loss("mse")(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="class indices must be an integer tensor"):
        loss("logitcrossentropy")(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"one-hot/soft labels of shape \(4, 3\) or class indices of shape \(4,\)"):
        loss("crossentropy")(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="class scores on dimension dims=1"):
        loss("logitcrossentropy")(torch.zeros(4), i64([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"binarycrossentropy: yhat has shape \(4, 1\) but y has shape \(2, 2\)"):
        loss("binarycrossentropy")(torch.full((4, 1), 0.5), torch.zeros(2, 2))


# --- agg --------------------------------------------------------------------------------------

def test_agg_elementwise():
    yhat, y = f64([[1.0, 2.0], [3.0, 5.0]]), f64([[1.5, 2.0], [2.0, 3.0]])
    none = loss("mse", agg="none")(yhat, y)
    torch.testing.assert_close(none, f64([[0.25, 0.0], [1.0, 4.0]]))
    assert loss("mse", agg="sum")(yhat, y).item() == pytest.approx(5.25, rel=1e-12)
    assert loss("mse")(yhat, y).item() == pytest.approx(5.25 / 4, rel=1e-12)


def test_agg_class_losses_sum_classes_first():
    logits, y = f64([[0.0, 0.0], [0.0, math.log(3)]]), i64([0, 1])
    none = loss("logitcrossentropy", agg="none")(logits, y)
    torch.testing.assert_close(none, f64([math.log(2), math.log(4 / 3)]))
    assert loss("logitcrossentropy", agg="sum")(logits, y).item() == pytest.approx(math.log(8 / 3), rel=1e-12)
    assert loss("logitcrossentropy")(logits, y).item() == pytest.approx(math.log(8 / 3) / 2, rel=1e-12)


@pytest.mark.parametrize("name", ["mae", "mse", "msle", "huber", "poisson", "crossentropy", "logitcrossentropy",
                                  "kldivergence", "focal", "binarycrossentropy", "logitbinarycrossentropy",
                                  "binary_focal", "hinge", "squared_hinge", "siamese_contrastive"])
def test_agg_modes_are_consistent(name):
    g = torch.Generator().manual_seed(5)
    yhat = torch.rand(6, 3, dtype=torch.float64, generator=g).softmax(dim=1)
    y = torch.rand(6, 3, dtype=torch.float64, generator=g).softmax(dim=1)
    none = loss(name, agg="none")(yhat, y)
    assert none.shape == ((6,) if name in ("crossentropy", "logitcrossentropy", "kldivergence", "focal")
                          else (6, 3))
    assert loss(name, agg="sum")(yhat, y).item() == pytest.approx(none.sum().item(), rel=1e-12)
    assert loss(name)(yhat, y).item() == pytest.approx(none.mean().item(), rel=1e-12)


# --- torch equivalences (REFERENCE.md) ------------------------------------------------------------

def _data(seed: int, shape=(20, 4), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=g), torch.randn(*shape, dtype=dtype, generator=g)


@pytest.mark.parametrize("agg", ["mean", "sum", "none"])
def test_regression_losses_match_torch(agg):
    a, b = _data(6, dtype=torch.float32)
    torch.testing.assert_close(loss("mae", agg=agg)(a, b), F.l1_loss(a, b, reduction=agg))
    torch.testing.assert_close(loss("mse", agg=agg)(a, b), F.mse_loss(a, b, reduction=agg))
    for delta in (1.0, 0.3):
        torch.testing.assert_close(loss("huber", agg=agg, delta=delta)(a, b),
                                   F.huber_loss(a, b, reduction=agg, delta=delta))
    rate, counts = a.abs() + 0.1, b.abs().round()
    torch.testing.assert_close(loss("poisson", agg=agg)(rate, counts),
                               F.poisson_nll_loss(rate, counts, log_input=False, eps=0.0, reduction=agg))


@pytest.mark.parametrize("agg", ["mean", "sum", "none"])
def test_class_losses_match_torch(agg):
    logits, other = _data(7, shape=(20, 5))
    y = torch.randint(0, 5, (20,), generator=torch.Generator().manual_seed(7))
    soft = other.softmax(dim=1)
    for target in (y, soft):
        torch.testing.assert_close(loss("logitcrossentropy", agg=agg)(logits, target),
                                   F.cross_entropy(logits, target, reduction=agg))
    kl_torch = F.kl_div(logits.log_softmax(dim=1), soft, reduction="none").sum(dim=1)
    kl_torch = {"mean": kl_torch.mean(), "sum": kl_torch.sum(), "none": kl_torch}[agg]
    torch.testing.assert_close(loss("kldivergence", agg=agg)(logits.softmax(dim=1), soft), kl_torch)
    if agg == "mean":
        expected = F.kl_div(logits.log_softmax(dim=1), soft, reduction="batchmean")
        torch.testing.assert_close(loss("kldivergence")(logits.softmax(dim=1), soft), expected)


@pytest.mark.parametrize("agg", ["mean", "sum", "none"])
def test_binary_losses_match_torch(agg):
    logits, _ = _data(8, shape=(30, 1))
    y = torch.randint(0, 2, (30,), generator=torch.Generator().manual_seed(8))
    yf = y.double().unsqueeze(1)
    torch.testing.assert_close(loss("logitbinarycrossentropy", agg=agg)(logits, y),
                               F.binary_cross_entropy_with_logits(logits, yf, reduction=agg))
    torch.testing.assert_close(loss("binarycrossentropy", agg=agg)(logits.sigmoid(), y),
                               F.binary_cross_entropy(logits.sigmoid(), yf, reduction=agg))
    # γ = 0: focal losses are the cross entropies
    torch.testing.assert_close(loss("binary_focal", agg=agg, gamma=0)(logits.sigmoid(), y),
                               loss("binarycrossentropy", agg=agg)(logits.sigmoid(), y))
    probs = torch.cat([logits, -logits], dim=1).softmax(dim=1)
    torch.testing.assert_close(loss("focal", agg=agg, gamma=0)(probs, y),
                               loss("crossentropy", agg=agg)(probs, y))


def test_float32_probability_losses_close_to_torch():
    """In float32, adding ε (Flux) instead of clamping the log (torch) moves values by about 1e-6."""
    logits, _ = _data(9, shape=(64, 3), dtype=torch.float32)
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(9))
    ce = loss("crossentropy")(logits.softmax(dim=1), y)
    torch.testing.assert_close(ce, F.cross_entropy(logits, y), rtol=1e-5, atol=1e-6)
    p = logits[:, :1].sigmoid()
    yb = (y[:, None] > 0).float()
    torch.testing.assert_close(loss("binarycrossentropy")(p, yb), F.binary_cross_entropy(p, yb),
                               rtol=1e-5, atol=1e-6)


# --- numerics -----------------------------------------------------------------------------------

def test_logit_forms_are_stable_for_extreme_logits():
    logits = f32([[1e4, -1e4, 0.0], [-3e4, 3e4, 5.0], [88.0, -88.0, 100.0]]).requires_grad_()
    value = loss("logitcrossentropy")(logits, i64([1, 1, 0]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    assert value.item() == pytest.approx((2e4 + 0.0 + 12.0) / 3, rel=1e-6)

    z = f32([1e4, -1e4, 200.0, -200.0]).requires_grad_()
    value = loss("logitbinarycrossentropy", label_smoothing=0.1)(z, i64([0, 1, 1, 0]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()
    # each term ≈ (1 − y_s)|z| for the wrong-signed logits, y_s|z| for the right ones: 0.95, 0.95, 0.05, 0.05
    assert value.item() == pytest.approx((0.95e4 + 0.95e4 + 0.05 * 200 + 0.05 * 200) / 4, rel=1e-5)


@pytest.mark.parametrize("name", ["crossentropy", "kldivergence", "focal", "binarycrossentropy", "binary_focal"])
def test_probability_forms_finite_at_zero_and_one(name):
    p = f32([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]).requires_grad_()
    value = loss(name)(p, i64([1, 1, 0]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(p.grad).all()
    assert value.item() > 1.0  # the confidently wrong first row costs about log(1/ε)/n


def test_float_dtypes_follow_yhat():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        p = torch.tensor([[0.2, 0.8], [0.6, 0.4]], dtype=dtype)
        assert loss("crossentropy")(p, i64([1, 0])).dtype == dtype
    # ε follows the dtype: one log(ε) for an exact zero probability
    for dtype in (torch.float32, torch.float64):
        zero = loss("crossentropy")(torch.tensor([[1.0, 0.0]], dtype=dtype), i64([1]))
        assert zero.item() == pytest.approx(-math.log(torch.finfo(dtype).eps), rel=1e-6)


# --- config validation --------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "field"), [
    ({"name": "crossentropy", "label_smoothing": 1.0}, "label_smoothing"),
    ({"name": "logitcrossentropy", "label_smoothing": -0.1}, "label_smoothing"),
    ({"name": "binarycrossentropy", "label_smoothing": float("nan")}, "label_smoothing"),
    ({"name": "logitbinarycrossentropy", "label_smoothing": 1.5}, "label_smoothing"),
    ({"name": "huber", "delta": 0.0}, "delta"),
    ({"name": "msle", "eps": -1e-8}, "eps"),
    ({"name": "focal", "gamma": -1.0}, "gamma"),
    ({"name": "binary_focal", "gamma": -0.5}, "gamma"),
    ({"name": "tversky", "beta": 1.5}, "beta"),
    ({"name": "dice_coeff", "smooth": -1.0}, "smooth"),
    ({"name": "siamese_contrastive", "margin": -0.5}, "margin"),
    ({"name": "mse", "agg": "avg"}, "agg"),
])
def test_bad_config_names_the_field(spec, field):
    with pytest.raises(plugins.PluginError, match=field) as info:
        plugins.build("loss", spec)
    assert info.value.field == field


def test_direct_factory_call_validates_agg():
    from retort.plugins.losses import mse

    with pytest.raises(plugins.PluginError, match="mean, sum, none") as info:
        mse(agg="avg")
    assert info.value.field == "agg"


def test_mse_of_complex_values_is_the_mean_of_abs2():
    # Flux: mse(ŷ, y) = agg(abs2.(ŷ .- y)); |1+2i|² = 5 and |−i|² = 1, mean 3 (a cast to float would give 0).
    yhat, y = torch.tensor([1 + 2j, 3 + 0j]), torch.tensor([0j, 3 + 1j])
    assert plugins.build("loss", "mse")(yhat, y).item() == pytest.approx(3.0)
    assert plugins.build("loss", {"name": "mse", "agg": "none"})(yhat, y).tolist() == pytest.approx([5.0, 1.0])
    assert plugins.build("loss", "mae")(yhat, y).item() == pytest.approx((5**0.5 + 1) / 2)  # Flux abs


# --- dims, ctc_loss and Flux's function names ----------------------------------------------------

def test_logitcrossentropy_over_a_sequence_models_output():
    # Flux: agg(-sum(y .* logsoftmax(ŷ; dims); dims)), the mean over every position. One sequence of two steps,
    # vocab 2: step 1 logits (0, 0) and target 0 give ln 2; step 2 logits (0, ln 3), softmax (1/4, 3/4), and
    # target 1 give −ln(3/4); the mean is (ln 2 + ln 4/3)/2 = ln(8/3)/2.
    yhat = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]], dtype=torch.float64)
    loss = plugins.build("loss", {"name": "logitcrossentropy", "dims": -1})
    assert loss(yhat, torch.tensor([[0, 1]])).item() == pytest.approx(math.log(8 / 3) / 2, rel=1e-12)
    assert loss.config["dims"] == -1


@pytest.mark.parametrize("name", ["crossentropy", "logitcrossentropy", "kldivergence", "focal"])
def test_dims_moves_the_class_dimension(name):
    # (N, T, V) with dims -1 is the (N·T, V) loss with classes on dimension 1 (every position a sample), and
    # with dims 1 on the permuted (N, V, T) tensor (torch's layout); agg none keeps (N, T).
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    yhat = logits if name == "logitcrossentropy" else logits.softmax(-1)
    y = torch.randint(0, 5, (3, 4), generator=gen)
    flat = plugins.build("loss", name)(yhat.reshape(12, 5), y.reshape(12))
    seq = plugins.build("loss", {"name": name, "dims": -1})
    assert seq(yhat, y).item() == pytest.approx(flat.item(), rel=1e-12)
    assert seq(yhat, F.one_hot(y, 5).double()).item() == pytest.approx(flat.item(), rel=1e-12)
    assert plugins.build("loss", {"name": name, "dims": 1})(yhat.permute(0, 2, 1), y).item() == \
        pytest.approx(flat.item(), rel=1e-12)
    assert plugins.build("loss", {"name": name, "dims": 2, "agg": "none"})(yhat, y).shape == (3, 4)
    if name == "logitcrossentropy":
        assert flat.item() == pytest.approx(F.cross_entropy(yhat.permute(0, 2, 1), y).item(), rel=1e-12)
    with pytest.raises(plugins.PluginError, match="dims"):
        plugins.build("loss", {"name": name, "dims": 0})


def test_label_smoothing_counts_the_classes_on_dims():
    # Flux label_smoothing: y(1 − α) + α/size(y, dims); with vocab 4 on the last dimension α/4 goes to each.
    yhat = torch.zeros(1, 2, 4, dtype=torch.float64)  # uniform softmax: −log(1/4) per position whatever y
    loss = plugins.build("loss", {"name": "logitcrossentropy", "dims": -1, "label_smoothing": 0.2})
    assert loss(yhat, torch.tensor([[1, 3]])).item() == pytest.approx(math.log(4), rel=1e-12)
    yhat[0, 0, 1] = 1.0  # logsoftmax at class 1: 1 − log(e + 3); others −log(e + 3)
    z = math.log(math.e + 3)
    smoothed = -(0.85 * (1 - z) + 0.05 * 3 * (-z))  # y = 0.8·onehot + 0.2/4
    assert loss(yhat, torch.tensor([[1, 3]])).item() == pytest.approx((smoothed + math.log(4)) / 2, rel=1e-12)


def test_ctc_loss_matches_flux_hand_calculated_values():
    # Flux test/ctc.jl: x = [1. 2. 3.; 2. 1. 1.; 3. 3. 2.] (classes × time), y = [1, 2], blank = the last class:
    # ctc_loss(x, y) ≈ 3.6990738275138035; x = [-3. 12. 8. 15.; 4. 20. -2. 20.; 8. -33. 6. 5.] gives
    # 8.02519869363453. Here (time × classes) and 0-based labels.
    ctc = plugins.build("loss", "ctc_loss")
    x1 = torch.tensor([[1.0, 2.0, 3.0], [2.0, 1.0, 1.0], [3.0, 3.0, 2.0]], dtype=torch.float64).T
    x2 = torch.tensor([[-3.0, 12.0, 8.0, 15.0], [4.0, 20.0, -2.0, 20.0], [8.0, -33.0, 6.0, 5.0]],
                      dtype=torch.float64).T
    assert ctc(x1, torch.tensor([0, 1])).item() == pytest.approx(3.6990738275138035, rel=1e-10)
    assert ctc(x2, torch.tensor([0, 1])).item() == pytest.approx(8.02519869363453, rel=1e-10)
    # a batch: x1 padded to 4 steps is another problem, so batch x2 with itself and a label padded with −1
    batch = torch.stack([x2, x2])
    labels = torch.tensor([[0, 1], [1, -1]])
    single = ctc(x2, torch.tensor([1])).item()
    per = plugins.build("loss", {"name": "ctc", "agg": "none"})(batch, labels)
    assert per.tolist() == pytest.approx([8.02519869363453, single], rel=1e-10)
    assert ctc(batch, labels).item() == pytest.approx((8.02519869363453 + single) / 2, rel=1e-10)
    assert plugins.get("loss", "ctc").meta["input"] == "logits"


def test_flux_long_loss_names_are_aliases():
    for flux, short in [("huber_loss", "huber"), ("tversky_loss", "tversky"), ("dice_coeff_loss", "dice_coeff"),
                        ("poisson_loss", "poisson"), ("hinge_loss", "hinge"), ("squared_hinge_loss", "squared_hinge"),
                        ("binary_focal_loss", "binary_focal"), ("focal_loss", "focal"),
                        ("siamese_contrastive_loss", "siamese_contrastive"), ("ctc_loss", "ctc")]:
        assert plugins.resolve("loss", flux)["name"] == short
        row = next(r for r in plugins.describe("loss") if r[1] == short)
        assert flux in row[2]
