"""Images and text, built in: image folders (Pillow, seeded augmentation), the generated shapes folder, byte-level
text blocks, the ResNet-style CNN, the causal transformer, perplexity, and their bad inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retort import plugins, recipes
from retort.plugins.data import DataInfo, split_datasets
from retort.plugins.data.images import crop_box
from retort.plugins.data.serve import make_loader, start_epoch
from retort.plugins.data.shapes import draw
from retort.plugins.data.text import unigram_bits
from retort.plugins.errors import RecipeError
from retort.recipes.schema import resolve
from tests.conftest import all_runs


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RETORT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _folder(root: Path, per_class: int = 6, size: int = 12) -> Path:
    rng = np.random.RandomState(0)
    for kind in ("circle", "square"):
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            draw(kind, size, rng).save(root / kind / f"{i}.png")
    return root


def test_image_folder_reads_classes_and_transforms(tmp_path: Path):
    data = plugins.build("data", {"name": "image_folder", "path": str(_folder(tmp_path / "imgs")), "size": 8,
                                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    assert data.class_names == ["circle", "square"] and data.targets == [0] * 6 + [1] * 6
    x, y = data.train[7]  # evaluation: resized to 8x8, normalized
    img = np.asarray(Image.open(tmp_path / "imgs" / "square" / "1.png").convert("RGB").resize((8, 8), Image.BILINEAR))
    expected = (torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert y == 1 and x.shape == (3, 8, 8) and torch.allclose(x, expected)
    a = data.train.sample(7, torch.Generator().manual_seed(4))[0]
    assert a.shape == (3, 8, 8) and torch.equal(a, data.train.sample(7, torch.Generator().manual_seed(4))[0])
    assert not torch.equal(a, data.train.sample(7, torch.Generator().manual_seed(5))[0])


def test_random_resized_crop_box_keeps_its_area_and_ratio():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        left, top, right, bottom = crop_box((40, 30), (0.5, 1.0), g)
        w, h = right - left, bottom - top
        assert left >= 0 and right <= 40 and top >= 0 and bottom <= 30
        assert 0.5 * 1200 * 0.9 <= w * h <= 1200 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_validation_images_of_a_split_folder_are_not_augmented(tmp_path: Path):
    data = plugins.build("data", {"name": "image_folder", "path": str(_folder(tmp_path / "imgs")), "size": 8})
    s = split_datasets(data, val_fraction=0.25, test_fraction=0.25, seed=0)
    assert (s.info.n_train, s.info.n_val, s.info.n_test, s.info.image_shape) == (6, 3, 3, (3, 8, 8))
    evaluation = next(xb for xb, _ in make_loader(s.val, 3, shuffle=False, seed=0, augment=False))
    assert torch.equal(evaluation, torch.stack([s.val[i][0] for i in range(3)]))
    loader = make_loader(s.train, 6, shuffle=True, seed=0)
    start_epoch(loader, 0)
    first = next(iter(loader))[0]
    start_epoch(loader, 1)
    assert not torch.equal(first, next(iter(loader))[0])


def test_image_folder_bad_inputs_name_the_path(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(plugins.PluginError, match=r"empty has no class folders with 0 images; expected one folder"):
        plugins.build("data", {"name": "image_folder", "path": str(tmp_path / "empty")})
    root = _folder(tmp_path / "imgs")
    (root / "square" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(plugins.PluginError, match=r"square/broken.png is not a readable image") as info:
        plugins.build("data", {"name": "image_folder", "path": str(root)})
    assert info.value.field == "path"


def test_shapes_are_generated_once_and_the_same_everywhere(cache: Path):
    a = plugins.build("data", {"name": "shapes", "per_class": 3, "size": 16})
    folder = cache / "shapes-v2-3x16px-seed0"
    assert sorted(p.name for p in folder.iterdir()) == ["circle", "cross", "square", "triangle"]
    assert len(list(folder.rglob("*.png"))) == 12 and a.class_names == ["circle", "cross", "square", "triangle"]
    pixels = np.asarray(Image.open(folder / "triangle" / "0002.png"), dtype=np.int64)
    assert pixels.shape == (16, 16, 3) and pixels.sum() == 123515  # the drawing is seeded: the same on every machine
    assert plugins.build("data", {"name": "shapes", "per_class": 3, "size": 16}).digest == a.digest


def test_text_blocks_and_their_targets(tmp_path: Path):
    (tmp_path / "t.txt").write_bytes(bytes(range(100)) * 3)
    data = plugins.build("data", {"name": "text", "path": str(tmp_path / "t.txt"), "block_size": 8})
    assert len(data.train) == (300 - 1) // 8 and data.n_outputs == 256
    x, y = data.train[2]
    assert x.tolist() == list(range(16, 24)) and y.tolist() == list(range(17, 25))
    x, y = data.train.sample(2, torch.Generator().manual_seed(0))
    assert x.tolist()[0] in range(16, 24) and (y - x).tolist() == [1] * 8
    s = split_datasets(data, val_fraction=0.2, test_fraction=0.1, seed=0)
    assert (s.info.n_train, s.info.n_val, s.info.n_test, s.info.n_features) == (25, 8, 4, 8)
    (tmp_path / "short.txt").write_text("short")
    with pytest.raises(plugins.PluginError, match=r"short.txt has 5 bytes; one block of block_size 8 needs 9") as e:
        plugins.build("data", {"name": "text", "path": str(tmp_path / "short.txt"), "block_size": 8})
    assert e.value.field == "block_size"
    assert unigram_bits(np.array([0, 1], np.uint8), np.array([0, 1] * 10, np.uint8)) == pytest.approx(
        -math.log2(11 / 276))  # add-one: (10 + 1) / (20 + 256)


def test_resnet_takes_images_of_any_size_and_flattened_rows():
    torch.manual_seed(0)
    info = DataInfo("imgs", "multiclass", 3 * 20 * 28, (3, 20, 28), 4, 10, 0, 0, None)
    net = plugins.build("model", {"name": "resnet", "channels": [8, 16]}, info)
    assert net(torch.randn(2, 3, 20, 28)).shape == (2, 4) and net(torch.randn(2, 3, 64, 40)).shape == (2, 4)
    assert net(torch.randn(2, 3 * 20 * 28)).shape == (2, 4)
    assert sum(p.numel() for p in net.parameters()) == 5164
    with pytest.raises(plugins.PluginError, match="model 'resnet' needs images"):
        plugins.build("model", "resnet", DataInfo("t", "multiclass", 4, None, 3, 10, 0, 0, None))


def test_gpt_is_causal_with_a_tied_head():
    torch.manual_seed(0)
    info = DataInfo("text", "multiclass", 16, None, 256, 10, 0, 0, None)
    net = plugins.build("model", {"name": "gpt", "layers": 2, "heads": 2, "width": 32}, info).eval()
    x = torch.randint(0, 256, (2, 16))
    logits = net(x)
    assert logits.shape == (2, 16, 256) and net.head.weight is net.tokens.weight
    changed = x.clone()
    changed[:, 10] = (x[:, 10] + 1) % 256
    # position t sees positions up to t only: changing token 10 leaves logits before it as they were
    assert torch.allclose(net(changed)[:, :10], logits[:, :10]) and not torch.allclose(net(changed)[:, 10:],
                                                                                       logits[:, 10:])
    with pytest.raises(plugins.PluginError, match=r"width \(30\) must be a multiple of heads \(4\)"):
        plugins.build("model", {"name": "gpt", "width": 30}, info)


def test_perplexity_is_exp_of_the_cross_entropy():
    info = DataInfo("text", "multiclass", 16, None, 4, 10, 0, 0, None)
    metric = plugins.build("metric", "perplexity", info)
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    target = torch.tensor([0, 2, 3])
    metric.update(logits.softmax(1), target)
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert float(metric.compute()) == pytest.approx(math.exp(float(ce)), rel=1e-6)


def test_a_text_recipe_trains_a_gpt_on_sequences(client, tmp_path: Path):
    (tmp_path / "t.txt").write_bytes(b"abcd" * 2000)
    raw = {"name": "abcd", "seed": 0, "data": {"name": "text", "path": str(tmp_path / "t.txt"), "block_size": 8,
                                               "batch_size": 16},
           "model": {"name": "gpt", "layers": 1, "heads": 2, "width": 16}, "loss": "logitcrossentropy",
           "optimizer": {"name": "adam", "lr": 0.01}, "metrics": ["perplexity", "accuracy"],
           "trainer": {"max_epochs": 2, "accelerator": "cpu"}, "tracking": {"experiment": "text"}}
    result = recipes.run(resolve(raw), quiet=True)
    # after 'a' comes 'b', ...: learnt but for the first byte of a block, which has no context
    assert result.metrics["test/accuracy"] >= 0.85 and result.metrics["test/perplexity"] < 2.0
    assert result.metrics["test/perplexity"] == pytest.approx(math.exp(result.metrics["test/loss"]), rel=1e-4)
    with pytest.raises(RecipeError, match=r"data: a batch of data 't.txt' \(x \(2, 8\) torch.int64"):
        recipes.run(resolve({**raw, "model": {"name": "mlp"}, "metrics": []}), quiet=True)
    assert len(all_runs(client)) == 1
