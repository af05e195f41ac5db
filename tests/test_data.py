import dataclasses
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from retort import plugins
from retort.plugins import PluginError
from retort.plugins.data import Table, TensorLoader, prepare, table_digest


@pytest.fixture(scope="module")
def digits() -> Table:
    return plugins.build("data", "digits")


def split(table: Table, **kw):
    args = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0, **kw}
    return prepare(table, **args)


# --- built-in sets and splits -------------------------------------------------------------------

def test_builtin_tables():
    shapes = {"digits": (1797, 64, "multiclass"), "wine": (178, 13, "multiclass"),
              "breast_cancer": (569, 30, "binary"), "diabetes": (442, 10, "regression"),
              "iris": (150, 4, "multiclass"), "synthetic_classification": (1000, 20, "binary"),
              "synthetic_regression": (1000, 20, "regression")}
    for name, (n, f, task) in shapes.items():
        t = plugins.build("data", name)
        assert (t.x.shape, t.x.dtype, t.task, t.name) == ((n, f), np.float32, task, name)
        if task == "regression":
            assert (t.y.shape, t.y.dtype) == ((n, 1), np.float32)
        else:
            assert (t.y.shape, t.y.dtype) == ((n,), np.int64)
    d = plugins.build("data", "digits")
    assert (d.image_shape, d.source) == ((1, 8, 8), "sklearn:digits")
    assert d.class_names == [str(i) for i in range(10)]
    assert plugins.build("data", "breast_cancer").class_names == ["malignant", "benign"]
    three = plugins.build("data", {"name": "synthetic_classification", "n_classes": 3, "n_samples": 90})
    assert (three.task, three.x.shape) == ("multiclass", (90, 20))
    assert np.bincount(three.y).tolist() == [30, 30, 30]
    multi = plugins.build("data", {"name": "synthetic_regression", "n_targets": 3, "n_samples": 50})
    assert multi.y.shape == (50, 3)


def test_digits_split_sizes_and_info(digits):
    s = split(digits)
    assert [len(p[0]) for p in (s.train, s.val, s.test)] == [1077, 360, 360]
    assert s.train[0].shape == (1077, 64) and s.train[0].dtype == torch.float32
    assert s.train[1].shape == (1077,) and s.train[1].dtype == torch.int64
    assert s.info == plugins.data.DataInfo("digits", "multiclass", 64, (1, 8, 8), 10, 1077, 360, 360,
                                           [str(i) for i in range(10)])
    # every row lands in exactly one split: compare sorted raw rows (scale off)
    raw = split(digits, scale="none")
    rows = torch.cat([raw.train[0], raw.val[0], raw.test[0]]).numpy()
    assert np.array_equal(np.unique(rows, axis=0), np.unique(digits.x, axis=0))
    assert int(torch.cat([raw.train[1], raw.val[1], raw.test[1]]).bincount().sum()) == 1797


def test_split_sizes_other_fractions(digits):
    s = split(digits, val_fraction=0.1, test_fraction=0.25)
    assert (s.info.n_train, s.info.n_val, s.info.n_test) == (1167, 180, 450)
    t = Table(np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10, dtype=np.float32).reshape(10, 1),
              "regression", "ten")
    s = prepare(t, val_fraction=0.1, test_fraction=0.7, seed=0)  # 0.7 * 10 is 7.000000000000001
    assert (s.info.n_train, s.info.n_val, s.info.n_test) == (2, 1, 7)


def test_zero_fractions_give_empty_splits(digits):
    s = split(digits, val_fraction=0.0, test_fraction=0.0)
    assert s.info.n_train == 1797
    assert s.val[0].shape == (0, 64) and s.val[1].shape == (0,) and s.val[1].dtype == torch.int64
    d = split(plugins.build("data", "diabetes"), val_fraction=0.0)
    assert d.val[0].shape == (0, 10) and d.val[1].shape == (0, 1) and d.val[1].dtype == torch.float32
    assert (d.info.n_train, d.info.n_val, d.info.n_test) == (353, 0, 89)


def test_determinism_and_seed(digits):
    a, b, c = split(digits), split(digits), split(digits, seed=1)
    for pa, pb in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        assert torch.equal(pa[0], pb[0]) and torch.equal(pa[1], pb[1])
    assert not torch.equal(a.test[0], c.test[0])
    assert a.info == c.info


def test_stratified(digits):
    s = split(digits)
    overall = np.bincount(digits.y, minlength=10) / len(digits.y)
    for part in (s.train, s.val, s.test):
        counts = np.bincount(part[1].numpy(), minlength=10)
        assert np.all(np.abs(counts - overall * len(part[1])) < 1), counts


def test_standard_scaling_fitted_on_train_only(digits):
    s, raw = split(digits), split(digits, scale="none")
    train_raw = raw.train[0].double().numpy()
    mean, std = train_raw.mean(0), train_raw.std(0)
    constant = std == 0  # four pixels are 0 in every training image of this split
    assert constant.sum() == 4
    x = s.train[0].double().numpy()
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(x.std(0), np.where(constant, 0, 1), atol=1e-6)
    safe = np.where(constant, 1, std)
    for part, raw_part in ((s.val, raw.val), (s.test, raw.test)):
        np.testing.assert_allclose(part[0].numpy(), (raw_part[0].double().numpy() - mean) / safe, atol=1e-5)
    # statistics of all rows would differ: the val split is not exactly standardised
    assert abs(float(s.val[0][:, ~constant].mean())) > 1e-3


def test_minmax_scaling(digits):
    s, raw = split(digits, scale="minmax"), split(digits, scale="none")
    x = s.train[0].numpy()
    varying = x.max(0) > 0
    np.testing.assert_array_equal(x.min(0), 0)
    np.testing.assert_allclose(x.max(0)[varying], 1, atol=1e-6)
    lo, hi = raw.train[0].numpy().min(0), raw.train[0].numpy().max(0)
    expect = (raw.test[0].numpy() - lo) / np.where(hi > lo, hi - lo, 1)
    np.testing.assert_allclose(s.test[0].numpy(), expect, atol=1e-6)


def test_target_scaling():
    table = plugins.build("data", "diabetes")
    s, raw = split(table, target_scale="standard"), split(table)
    y = s.train[1].double()
    assert abs(float(y.mean())) < 1e-6 and abs(float(y.std(unbiased=False)) - 1) < 1e-6
    mean, std = s.target_scaler
    assert mean.shape == std.shape == (1,)
    np.testing.assert_allclose(float(mean[0]), raw.train[1].double().mean().item(), rtol=1e-6)
    torch.testing.assert_close(s.unscale_target(s.test[1]), raw.test[1])
    assert raw.target_scaler is None and torch.equal(raw.unscale_target(raw.test[1]), raw.test[1])


def test_digest(digits):
    assert split(digits).digest == table_digest(digits) == "1265950b511575fa"
    assert split(digits, seed=3).digest == "1265950b511575fa"
    x = digits.x.copy()
    x[100, 5] += 1
    assert table_digest(dataclasses.replace(digits, x=x)) != "1265950b511575fa"
    y = digits.y.copy()
    y[0] = 9
    assert table_digest(dataclasses.replace(digits, y=y)) != "1265950b511575fa"
    # the same bytes read as another task are another data set
    assert table_digest(dataclasses.replace(digits, task="binary")) != "1265950b511575fa"
    assert len(table_digest(digits)) == 16


# --- files --------------------------------------------------------------------------------------

def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_csv_string_labels_and_features(tmp_path):
    path = write(tmp_path / "pets.csv", "weight, height ,kind,age\n4.5,30,dog,3\n3.0,25,cat,5\n"
                                        "\n5.5,35,dog,1\n2.5,20,bird,2\n")
    t = plugins.build("data", {"name": "csv", "path": path, "target": "kind"})
    assert (t.task, t.name, t.source, t.class_names) == ("multiclass", "pets", path, ["bird", "cat", "dog"])
    np.testing.assert_array_equal(t.x, [[4.5, 30, 3], [3, 25, 5], [5.5, 35, 1], [2.5, 20, 2]])
    assert t.x.dtype == np.float32
    np.testing.assert_array_equal(t.y, [2, 1, 2, 0])
    picked = plugins.build("data", {"name": "csv", "path": path, "target": "kind",
                                    "features": ["age", "weight"]})
    np.testing.assert_array_equal(picked.x, [[3, 4.5], [5, 3], [1, 5.5], [2, 2.5]])


def test_csv_task_detection(tmp_path):
    rows = "".join(f"{i},{i % 2},{i % 3},{i * 0.5}\n" for i in range(12))
    path = write(tmp_path / "t.csv", "a;b;c;d\n".replace(";", ",") + rows)
    binary = plugins.build("data", {"name": "csv", "path": path, "target": "b"})
    assert (binary.task, binary.class_names, binary.y.dtype) == ("binary", ["0", "1"], np.int64)
    multi = plugins.build("data", {"name": "csv", "path": path, "target": "c"})
    assert (multi.task, multi.class_names) == ("multiclass", ["0", "1", "2"])
    reg = plugins.build("data", {"name": "csv", "path": path, "target": "d"})
    assert (reg.task, reg.y.shape, reg.y.dtype) == ("regression", (12, 1), np.float32)
    assert reg.y[3, 0] == 1.5
    forced = plugins.build("data", {"name": "csv", "path": path, "target": "c", "task": "regression"})
    assert forced.task == "regression"
    semi = write(tmp_path / "semi.csv", "a;y\n1;x\n2;y\n")
    spec = {"name": "csv", "path": semi, "target": "y", "delimiter": ";"}
    assert plugins.build("data", spec).task == "binary"


def test_csv_prepare_round_trip(tmp_path):
    labels = ["no", "yes"] * 10
    text = "f1,f2,label\n" + "".join(f"{i},{i * i},{labels[i]}\n" for i in range(20))
    t = plugins.build("data", {"name": "csv", "path": write(tmp_path / "d.csv", text), "target": "label"})
    s = prepare(t, val_fraction=0.2, test_fraction=0.2, seed=0, scale="none")
    assert (s.info.task, s.info.n_outputs, s.info.class_names) == ("binary", 1, ["no", "yes"])
    assert (s.info.n_train, s.info.n_val, s.info.n_test) == (12, 4, 4)
    for x, y in (s.train, s.val, s.test):
        assert torch.equal(y, (x[:, 0].long() % 2))  # labels followed their rows
        assert int(y.sum()) * 2 == len(y)  # stratified: half of each split is "yes"


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((30, 4, 4))
    names = np.array(["a", "b", "c"] * 10)
    np.savez(tmp_path / "img.npz", pixels=images, label=names)
    t = plugins.build("data", {"name": "npz", "path": str(tmp_path / "img.npz"), "x": "pixels", "y": "label"})
    assert (t.task, t.image_shape, t.x.shape) == ("multiclass", (1, 4, 4), (30, 16))
    assert t.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(t.x, images.reshape(30, 16).astype(np.float32))
    np.testing.assert_array_equal(t.y, [0, 1, 2] * 10)
    assert t.source == str(tmp_path / "img.npz")

    np.savez(tmp_path / "reg.npz", x=rng.random((10, 3, 2, 2)), y=rng.random((10, 2)))
    r = plugins.build("data", {"name": "npz", "path": str(tmp_path / "reg.npz")})
    assert (r.task, r.image_shape, r.x.shape, r.y.shape) == ("regression", (3, 2, 2), (10, 12), (10, 2))
    s = prepare(r, val_fraction=0.0, test_fraction=0.2, seed=0)
    assert s.info.n_outputs == 2 and s.test[1].shape == (2, 2)

    np.savez(tmp_path / "int.npz", x=rng.random((8, 2)), y=np.array([0, 1, 1, 0, 1, 0, 0, 1]))
    b = plugins.build("data", {"name": "npz", "path": str(tmp_path / "int.npz")})
    assert (b.task, b.class_names) == ("binary", ["0", "1"])


# --- bad input ----------------------------------------------------------------------------------

BAD_CSV = {
    "ragged": ("a,b,y\n1,2,0\n3,4\n", {}, "path", "line 3: 2 fields"),
    "header only": ("a,b,y\n", {}, "path", "0 data row"),
    "one row": ("a,b,y\n1,2,0\n", {}, "path", "1 data row"),
    "empty": ("", {}, "path", "is empty"),
    "unknown target": ("a,b,label\n1,2,0\n3,4,1\n", {"target": "lable"}, "target",
                       "did you mean 'label'?); columns: a, b, label"),
    "unknown feature": ("a,bb,y\n1,2,0\n3,4,1\n", {"features": ["a", "b"]}, "features", "did you mean 'bb'"),
    "target as feature": ("a,b,y\n1,2,0\n3,4,1\n", {"features": ["a", "y"]}, "features", "is the target"),
    "non-numeric": ("a,b,y\n1,2,0\n3,four,1\n", {}, "features", "line 3: feature 'b' has the non-numeric"),
    "empty cell": ("a,b,y\n1,,0\n3,4,1\n", {}, "features", "line 2: feature 'b'"),
    "nan": ("a,b,y\n1,2,0\n3,nan,1\n", {}, "features", "nan in feature 'b' at line 3"),
    "binary with 3": ("a,y\n1,x\n2,y\n3,z\n", {"task": "binary"}, "task", "exactly 2 classes, but"),
    "one class": ("a,y\n1,x\n2,x\n", {}, "target", "1 distinct class label"),
    "text regression": ("a,y\n1,x\n2,y\n", {"task": "regression"}, "task", "needs a numeric target"),
    "empty target": ("a,y\n1,x\n2,\n3,y\n", {}, "target", "line 3: the target 'y' is empty"),
    "quote": ('a,y\n1,"x\n', {}, "path", "malformed CSV"),
    "delimiter": ("a,y\n1,x\n2,y\n", {"delimiter": ";;"}, "delimiter", "one character"),
}


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_csv_bad_input(tmp_path, case):
    text, extra, field, words = BAD_CSV[case]
    spec = {"name": "csv", "path": write(tmp_path / "bad.csv", text), "target": "y", **extra}
    with pytest.raises(PluginError, match=None) as err:
        plugins.build("data", spec)
    assert err.value.field == field
    assert words in str(err.value)


def test_missing_files_name_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("csv", "npz"):
        spec = {"name": name, "path": "nowhere.dat", **({"target": "y"} if name == "csv" else {})}
        with pytest.raises(PluginError) as err:
            plugins.build("data", spec)
        assert err.value.field == "path"
        assert f"{os.path.join(str(tmp_path), 'nowhere.dat')} does not exist" in str(err.value)


def test_csv_not_utf8(tmp_path):
    (tmp_path / "bin.csv").write_bytes(b"a,y\n\xff\xfe,1\n")
    with pytest.raises(PluginError, match="not UTF-8") as err:
        plugins.build("data", {"name": "csv", "path": str(tmp_path / "bin.csv"), "target": "y"})
    assert err.value.field == "path"


def test_npz_bad_input(tmp_path):
    rng = np.random.default_rng(0)

    def npz_error(spec: dict) -> PluginError:
        with pytest.raises(PluginError) as err:
            plugins.build("data", {"name": "npz", "path": str(tmp_path / "d.npz"), **spec})
        return err.value

    (tmp_path / "d.npz").write_text("x,y\n1,2\n")
    e = npz_error({})
    assert e.field == "path" and "not a zip file" in str(e)
    np.savez(tmp_path / "d.npz", features=rng.random((5, 2)), y=np.arange(5))
    e = npz_error({})
    assert e.field == "x" and "keys: features, y" in str(e)
    e = npz_error({"x": "features", "y": "target"})
    assert e.field == "y" and "no array 'target'" in str(e)
    np.savez(tmp_path / "d.npz", x=rng.random((5, 2)), y=np.arange(4))
    e = npz_error({})
    assert e.field == "y" and "but 'x' has 5 rows" in str(e)
    x = rng.random((5, 2))
    x[3, 1] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5))
    e = npz_error({})
    assert e.field == "x" and "at row 3" in str(e)
    np.savez(tmp_path / "d.npz", x=np.array([["a", "b"], ["c", "d"]]), y=np.arange(2))
    assert npz_error({}).field == "x"
    np.savez(tmp_path / "d.npz", x=rng.random((6, 2)), y=np.array([0, 1, 2, 0, 1, 2]))
    e = npz_error({"task": "binary"})
    assert e.field == "task" and "has 3: 0, 1, 2" in str(e)
    np.savez(tmp_path / "d.npz", x=rng.random((1, 2)), y=np.arange(1))
    assert npz_error({}).field == "path"


def test_prepare_bad_input(digits):
    cases = [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction"),
        ({"scale": "zscore"}, "scale"),
        ({"target_scale": "standard"}, "target_scale"),
        ({"test_fraction": 0.003}, "test_fraction"),  # 6 test rows cannot hold 10 classes
    ]
    for kw, field in cases:
        with pytest.raises(PluginError) as err:
            split(digits, **kw)
        assert err.value.field == field, kw


def test_factory_bad_config():
    with pytest.raises(PluginError) as err:
        plugins.build("data", {"name": "synthetic_classification", "n_informative": 30})
    assert err.value.field == "n_informative"
    with pytest.raises(PluginError) as err:
        plugins.build("data", {"name": "csv", "path": "x.csv", "target": "y", "task": "ordinal"})
    assert err.value.field == "task"


# --- TensorLoader -------------------------------------------------------------------------------

def loader_indices(loader: TensorLoader) -> list[int]:
    return [i for _, yb in loader for i in yb.tolist()]


def make(n: int = 10, **kw) -> TensorLoader:
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    return TensorLoader(x, torch.arange(n), **{"batch_size": 4, **kw})


def test_loader_covers_every_row_once_and_reshuffles():
    loader = make(10)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(yb) for _, yb in batches] == [4, 4, 2]
    for xb, yb in batches:
        assert torch.equal(xb[:, 0].long(), yb) and xb.shape[1] == 3
    first = [i for _, yb in batches for i in yb.tolist()]
    second = loader_indices(loader)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second
    assert first == torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()

    again = make(10)
    assert loader_indices(again) == first and loader_indices(again) == second
    again.set_epoch(1)
    assert loader_indices(again) == second
    assert loader_indices(make(10, seed=5)) != first


def test_loader_no_shuffle_and_drop_last():
    assert loader_indices(make(10, shuffle=False)) == list(range(10))
    loader = make(10, drop_last=True)
    assert len(loader) == 2
    idx = loader_indices(loader)
    assert len(idx) == 8 and len(set(idx)) == 8
    assert len(make(0)) == 0 and list(make(0)) == []


@pytest.mark.parametrize("n", [11, 12])
def test_loader_two_ranks_match_distributed_sampler(n):
    ranks = [make(n, world_size=2, rank=r, seed=3) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # ceil(n / 2) = 6 rows per rank in batches of 4
    dataset = list(range(n))
    for epoch in (0, 1):
        seen = []
        for r, loader in enumerate(ranks):
            sampler = DistributedSampler(dataset, num_replicas=2, rank=r, shuffle=True, seed=3)
            sampler.set_epoch(epoch)
            idx = loader_indices(loader)
            assert idx == list(sampler)
            seen += idx
        assert len(seen) == 12 and set(seen) == set(range(n))  # disjoint, plus one padded repeat for 11
    plain = [make(5, world_size=2, rank=r, shuffle=False, batch_size=2) for r in (0, 1)]
    assert [loader_indices(p) for p in plain] == [[0, 2, 4], [1, 3, 0]]
    assert len(make(11, world_size=2, rank=1, drop_last=True)) == 1


def test_loader_bad_arguments():
    with pytest.raises(PluginError) as err:
        make(10, batch_size=0)
    assert err.value.field == "batch_size"
    with pytest.raises(ValueError, match="rank 2"):
        make(10, world_size=2, rank=2)
