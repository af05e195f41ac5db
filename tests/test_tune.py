"""`retort lr-find` and `retort batch-size`: real probes on iris (90 training rows, MLP 16, RMSProp)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from retort import recipes
from retort.recipes.cli import main
from tests.conftest import all_runs, retort

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def iris():
    from retort.recipes.tune_lr import prepare

    return prepare(recipes.load("iris-rmsprop"))


def _weights(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _last(out: str, key: str) -> str:
    lines = out.strip().splitlines()
    found = [line for line in lines if line.startswith(f"{key}: ")]
    assert found, out
    return found[-1][len(key) + 2:]


# --- lr-find -----------------------------------------------------------------------------------

def test_range_test_is_seeded_leaves_the_weights_and_suggests_inside_the_range(iris):
    import torch

    from retort.recipes.tune_lr import find_lr

    before = _weights(iris.module)
    first = find_lr(iris, min_lr=1e-5, max_lr=10.0, steps=40)
    for k, v in iris.module.state_dict().items():
        assert torch.equal(v, before[k]), k
    again = find_lr(iris, min_lr=1e-5, max_lr=10.0, steps=40)
    assert again.losses == first.losses and again.suggestion == first.suggestion

    # the lrs rise exponentially from min_lr, one per step
    assert first.lrs[0] == pytest.approx(1e-5)
    ratios = [b / a for a, b in zip(first.lrs, first.lrs[1:])]
    assert ratios == pytest.approx([10 ** (6 / 39)] * len(ratios))
    # the first loss is the untrained model's loss on the first shuffled batch (seed 0, epoch 0)
    x, y = iris.splits.train
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:16]
    with torch.no_grad():
        expected = float(iris.module.loss_fn(iris.module(x[order]), y[order]))
    assert first.losses[0] == pytest.approx(expected, rel=1e-6)
    assert first.smoothed[0] == pytest.approx(first.losses[0])  # bias-corrected average
    # the suggestion is a tested lr, before the lowest smoothed loss; the range holds it
    assert first.suggestion in first.lrs
    lowest = first.lrs[first.smoothed.index(min(v for v in first.smoothed if math.isfinite(v)))]
    assert 1e-5 <= first.low <= first.suggestion <= first.high <= lowest <= 10.0
    assert first.low == pytest.approx(max(1e-5, first.suggestion / 10))
    i = first.lrs.index(first.suggestion)
    assert first.smoothed[i] < first.smoothed[0]  # the loss has fallen there


def test_lr_find_command_prints_the_suggestion_saves_a_png_and_records_nothing(workdir, client, capsys, iris):
    from retort.recipes.tune_lr import find_lr, sig3

    code = main(["lr-find", "iris-rmsprop", "--min-lr", "1e-5", "--steps", "40", "--plot", "iris.png"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[-2].startswith("suggested_lr: ") and lines[-1].startswith("suggested_range: [")
    test = find_lr(iris, min_lr=1e-5, max_lr=10.0, steps=40)  # the same seeded test through the API
    assert float(_last(out, "suggested_lr")) == sig3(test.suggestion)
    low, high = (float(v) for v in _last(out, "suggested_range").strip("[]").split(","))
    assert (low, high) == (sig3(test.low), sig3(test.high))
    assert f"optimizer.lr: {{low: {low:g}, high: {high:g}, log: true}}" in out
    # the printed override is valid recipe input, and its range is the suggested one
    flow = re.search(r"-s '(sweep\.space=.*)'", out).group(1)
    space = recipes.load("iris-rmsprop", [flow]).sweep["space"]
    assert (space["optimizer.lr"]["low"], space["optimizer.lr"]["high"]) == (low, high)
    assert (workdir / "iris.png").read_bytes()[:8] == PNG
    assert all_runs(client) == []


@pytest.mark.parametrize("args, field", [
    (["--min-lr", "1", "--max-lr", "0.1"], "--min-lr"),
    (["--max-lr", "-3"], "--max-lr"),
    (["--steps", "2"], "--steps"),
    (["--smooth", "1"], "--smooth"),
    (["--plot", "curve.jpg"], "--plot"),
    (["--plot", "no/such/folder/x.png"], "--plot"),
    (["-s", "optimizer.lr=-1"], "optimizer.lr"),
])
def test_lr_find_bad_input_exits_2_naming_the_field(workdir, capsys, args, field):
    assert main(["lr-find", "iris-rmsprop", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and field in err and len(err.splitlines()) == 1
    assert not (workdir / "lr-find.png").exists()


@pytest.mark.slow  # a fresh Python importing torch and Lightning
def test_lr_find_console_script_writes_the_default_plot_and_no_store(tmp_path: Path):
    out = retort("lr-find", "iris-rmsprop", "--steps", "30", "-s", "model.hidden=[8]", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lr = float(_last(out.stdout, "suggested_lr"))
    low, high = (float(v) for v in _last(out.stdout, "suggested_range").strip("[]").split(","))
    assert 1e-7 <= low <= lr <= high <= 10
    assert (tmp_path / "lr-find.png").read_bytes()[:8] == PNG
    assert not (tmp_path / "mlflow.db").exists()  # a probe: nothing recorded, no store created


# --- batch-size --------------------------------------------------------------------------------

def test_batch_size_without_a_bound_is_capped_by_the_training_split(iris):
    import torch

    from retort.recipes.tune_batch import find_batch_size

    before = _weights(iris.module)
    search = find_batch_size(iris)
    assert iris.splits.info.n_train == 90
    assert list(search.tries) == [1, 2, 4, 8, 16, 32, 64, 90]
    assert (search.largest, search.failed, search.batch_size) == (90, None, 64)  # no margin when data-bound
    peaks = list(search.tries.values())
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1]
    # at least parameters, their gradients and the batch itself (4 features, float32)
    params = sum(p.numel() * p.element_size() for p in iris.module.parameters())
    assert all(peak >= 2 * params + b * 4 * 4 for b, peak in search.tries.items())
    assert iris.datamodule.batch_size == 16  # the recipe's, put back
    for k, v in iris.module.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert find_batch_size(iris).tries == search.tries  # the count is exact: the same bytes every time


def test_batch_size_respects_a_memory_bound(workdir, client, capsys, iris):
    from retort.recipes.tune_batch import find_batch_size, power_of_two_floor

    peaks = find_batch_size(iris).tries
    bound = peaks[32] + 1  # 32 fits, 64 does not
    code = main(["batch-size", "iris-rmsprop", "--max-memory", str(bound), "--margin", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    # with no margin every size in 32..63 gives 32, so the search stops after 64 fails
    assert re.findall(r"batch +(\d+): peak", out) == ["1", "2", "4", "8", "16", "32", "64"]
    assert "largest batch that fits: 32 to 63" in out
    assert "data.batch_size: {choices: [1, 2, 4, 8, 16, 32]}" in out
    assert out.strip().splitlines()[-1] == "batch_size: 32"
    assert all_runs(client) == []

    search = find_batch_size(iris, max_memory=bound, margin=0.2)
    assert search.failed is not None and search.largest < search.failed
    assert search.batch_size == power_of_two_floor(math.floor(search.largest * 0.8))
    assert all((peak <= bound) == (b <= search.largest) for b, peak in search.tries.items())
    assert search.tries[search.batch_size] <= bound


@pytest.mark.parametrize("args, field", [
    (["--max-memory", "12XB"], "--max-memory"),
    (["--max-memory", "0"], "--max-memory"),
    (["--max-memory", "100B"], "--max-memory"),  # not even a batch of 1 fits
    (["--margin", "1"], "--margin"),
    (["--steps", "0"], "--steps"),
])
def test_batch_size_bad_input_exits_2_naming_the_field(workdir, capsys, args, field):
    assert main(["batch-size", "iris-rmsprop", "-q", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and field in err and len(err.splitlines()) == 1


def test_sizes_parse_in_decimal_and_binary_units():
    from retort.recipes.tune_batch import batch_choices, parse_size, power_of_two_floor

    assert parse_size("512MB") == 512 * 10**6
    assert parse_size("512MiB") == parse_size("512m") == 512 * 2**20
    assert parse_size("1.5 GiB") == 3 * 2**29
    assert parse_size("4096") == 4096
    assert [power_of_two_floor(n) for n in (1, 2, 3, 90, 128, 1077)] == [1, 2, 2, 64, 128, 1024]
    assert batch_choices(512) == [16, 32, 64, 128, 256, 512] and batch_choices(4) == [1, 2, 4]


def test_help_says_the_probes_record_nothing(capsys):
    for command in ("lr-find", "batch-size"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "records no MLflow run" in capsys.readouterr().out
