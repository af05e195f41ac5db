"""Data plugins that return torch Datasets: seeded splits, DataLoaders with workers, exact mid-epoch resume,
DDP with the distributed sampler, rows of .npy files read on demand, and data sets that do not fit the model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from retort import plugins, recipes
from retort.plugins.data import DataSets, TensorLoader, split_datasets
from retort.plugins.data.serve import EpochSampler, make_loader, start_epoch
from retort.plugins.errors import Interrupted, RecipeError
from retort.recipes.schema import resolve
from tests.conftest import all_runs, retort
from tests.test_record import _SignalAt, history


class Noisy(Dataset):
    """Wine rows plus noise drawn from the generator retort passes: augmentation that must resume exactly."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        self.classes = ["0", "1", "2"]
        self.targets = y.tolist()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]

    def sample(self, i: int, generator: torch.Generator):
        return self.x[i] + 0.1 * torch.randn(self.x.shape[1], generator=generator), self.y[i]


def _wine() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_wine

    d = load_wine()
    x = torch.tensor(d.data, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0), torch.tensor(d.target)


@plugins.register("data", "test_noisy_wine")
def noisy_wine() -> Noisy:
    "Wine with seeded noise per sample (tests)."
    return Noisy(*_wine())


@plugins.register("data", "test_bad_targets")
def bad_shape() -> DataSets:
    "Targets of two labels a sample, for a loss that takes one (tests)."
    x, y = _wine()
    return DataSets(TensorDataset(x, torch.stack([y, y], dim=1)), task="multiclass", n_outputs=3, name="bad")


RECIPE = {
    "name": "noisy", "seed": 7,
    "data": {"name": "test_noisy_wine", "batch_size": 16},
    "model": {"name": "mlp", "hidden": [8], "dropout": 0.2},
    "loss": "logitcrossentropy",
    "optimizer": {"name": "adam", "lr": 0.01},
    "metrics": ["accuracy"],
    "trainer": {"max_epochs": 3, "accelerator": "cpu"},
    "tracking": {"experiment": "datasets"},
}


def noisy(**data):
    raw = yaml.safe_load(yaml.safe_dump(RECIPE))
    raw["data"].update(data)
    return resolve(raw)


def test_split_by_seeded_index_matches_the_table_split():
    x, y = _wine()
    s = split_datasets(Noisy(x, y), val_fraction=0.2, test_fraction=0.2, seed=0)
    assert (s.info.n_train, s.info.n_val, s.info.n_test) == (106, 36, 36)
    assert (s.info.task, s.info.n_outputs, s.info.n_features) == ("multiclass", 3, 13)
    table = plugins.data.prepare(plugins.build("data", "wine"), val_fraction=0.2, test_fraction=0.2, seed=0,
                                 scale="none")
    # stratified from the data set's targets, exactly as a table of the same rows is split
    assert torch.equal(torch.stack([s.test[i][1] for i in range(36)]), table.test[1])
    assert torch.equal(torch.stack([s.val[i][1] for i in range(36)]), table.val[1])
    # a split serves a plain torch DataLoader too (a hand-written loop over retort's splits)
    xb, yb = next(iter(torch.utils.data.DataLoader(s.test, batch_size=36)))
    assert torch.equal(yb, table.test[1]) and xb.shape == (36, 13)


def test_epoch_order_is_the_tensor_loaders_for_every_rank():
    x = torch.arange(50).float().reshape(-1, 1)
    for rank in (0, 1):
        for epoch in (0, 3):
            sampler = EpochSampler(50, shuffle=True, seed=11, rank=rank, world_size=2)
            sampler.set_epoch(epoch)
            table = TensorLoader(x, x, 50, seed=11, rank=rank, world_size=2)
            table.set_epoch(epoch)
            assert [i for _, i in sampler] == next(iter(table))[0].long().reshape(-1).tolist()


def test_two_workers_serve_the_same_batches_as_none_and_resume_mid_epoch():
    ds = Noisy(*_wine())

    def batches(workers: int, epoch: int, start: int = 0) -> list[torch.Tensor]:
        loader = make_loader(ds, 32, shuffle=True, seed=3, num_workers=workers)
        start_epoch(loader, epoch, start)
        return [xb for xb, _ in loader]

    plain, two = batches(0, 1), batches(2, 1)
    assert len(plain) == 6 and all(torch.equal(a, b) for a, b in zip(plain, two, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(plain[2:], batches(2, 1, start=2), strict=True))
    assert not torch.equal(plain[0], batches(0, 2)[0])  # another epoch: another order and other noise


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(10):
            yield torch.tensor([float(i)]), torch.tensor(i % 2)

    def __len__(self) -> int:
        return 10


def test_an_iterable_data_set_is_sharded_over_ranks_and_workers_and_resumes():
    seen = {}
    for rank in (0, 1):
        for workers in (0, 2):
            loader = make_loader(Stream(), 2, shuffle=False, seed=0, rank=rank, world_size=2, num_workers=workers)
            seen[rank, workers] = sorted(int(v) for xb, _ in loader for v in xb.reshape(-1))
    assert seen[0, 0] == seen[0, 2] == [0, 2, 4, 6, 8] and seen[1, 0] == seen[1, 2] == [1, 3, 5, 7, 9]
    loader = make_loader(Stream(), 2, shuffle=False, seed=0)
    start_epoch(loader, 0, 3)
    assert [xb.reshape(-1).tolist() for xb, _ in loader] == [[6.0, 7.0], [8.0, 9.0]]
    with pytest.raises(plugins.PluginError, match="iterable data set cannot be split by index"):
        split_datasets(DataSets(Stream(), task="binary"), val_fraction=0.2, test_fraction=0, seed=0)


def test_rows_read_on_demand_train_exactly_as_the_same_table_in_memory(workdir: Path):
    x, y = _wine()
    (workdir / "rows").mkdir()
    np.save(workdir / "rows" / "x.npy", x.numpy())
    np.save(workdir / "rows" / "y.npy", y.numpy())
    np.savez(workdir / "rows.npz", x=x.numpy(), y=y.numpy())
    base = {**RECIPE, "model": {"name": "mlp", "hidden": [8]}, "optimizer": {"name": "adam", "lr": 0.05}}
    table = recipes.run(resolve({**base, "data": {"name": "npz", "path": "rows.npz", "scale": "none"}}), quiet=True)
    rows = recipes.run(resolve({**base, "data": {"name": "npy", "path": "rows", "scale": "none"}}), quiet=True)
    assert rows.metrics == table.metrics
    assert rows.metrics["test/accuracy"] == pytest.approx(0.861111, abs=1e-6)


def test_interrupt_with_two_workers_then_resume_equals_an_uninterrupted_run(client):
    recipe = noisy(num_workers=2, persistent_workers=True)
    whole = recipes.run(recipe, quiet=True)
    with pytest.raises(Interrupted):
        recipes.run(recipe, quiet=True, callbacks=[_SignalAt(1, 2)])
    killed = next(r for r in all_runs(client) if r.info.run_id != whole.run_id)
    assert killed.info.status == "KILLED"
    resumed = recipes.run(recipe, quiet=True, resume=killed.info.run_id)
    assert resumed.metrics == whole.metrics
    for key in ("train/loss", "train/loss_epoch", "val/loss"):
        assert history(client, resumed.run_id, key) == history(client, whole.run_id, key), key
    assert whole.metrics["test/accuracy"] == pytest.approx(0.805556, abs=1e-6)


def test_a_data_set_that_does_not_fit_the_model_is_bad_input_and_records_nothing(client, workdir: Path):
    with pytest.raises(RecipeError, match=r"data: a batch of data 'bad' \(x \(2, 13\) torch.float32, y \(2, 2\) "
                                          r"torch.int64\) does not fit model 'mlp' and loss 'logitcrossentropy'"):
        recipes.run(resolve({**RECIPE, "data": {"name": "test_bad_targets"}, "model": {"name": "mlp", "hidden": [8]},
                             "metrics": []}), quiet=True)
    assert all_runs(client) == []
    with pytest.raises(RecipeError, match=r"data\.persistent_workers: persistent_workers needs num_workers"):
        noisy(persistent_workers=True)


def test_bad_npy_folders_name_the_file(workdir: Path):
    (workdir / "rows").mkdir()
    np.save(workdir / "rows" / "x.npy", np.zeros((4, 3), np.float32))
    with pytest.raises(plugins.PluginError, match=r"y.npy does not exist; .*rows holds x.npy"):
        plugins.build("data", {"name": "npy", "path": "rows"})
    np.save(workdir / "rows" / "y.npy", np.zeros(5))
    with pytest.raises(plugins.PluginError, match=r"y.npy has shape \(5,\), but .*x.npy has 4 rows"):
        plugins.build("data", {"name": "npy", "path": "rows"})
    (workdir / "rows" / "x.npy").write_bytes(b"not numpy")
    with pytest.raises(plugins.PluginError, match=r"x.npy is not a readable .npy file"):
        plugins.build("data", {"name": "npy", "path": "rows"})


@pytest.mark.slow
def test_ddp_over_two_processes_shards_with_the_distributed_sampler(tmp_path: Path):
    """Two CPU processes (gloo), each reading its shard of the .npy rows: one run, as on one process."""
    x, y = _wine()
    (tmp_path / "rows").mkdir()
    np.save(tmp_path / "rows" / "x.npy", x.numpy())
    np.save(tmp_path / "rows" / "y.npy", y.numpy())
    out = retort("run", "wine-momentum", "-q", "-s", "data={name: npy, path: rows, num_workers: 1}",
                 "-s", "trainer.max_epochs=2", "-s", "trainer.devices=2", "-s", "trainer.strategy=ddp",
                 "-s", "trainer.accelerator=cpu", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    from mlflow import MlflowClient

    runs = all_runs(MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["retort.world_size"] == "2"
    assert float(runs[0].data.metrics["test/accuracy"]) == pytest.approx(0.611111, abs=1e-6)  # 2 epochs, seeded


_UNDER_A_LIMIT = r"""
import resource, sys
import numpy as np
from retort import recipes
from retort.recipes.schema import resolve

folder, small, uri = sys.argv[1:4]
recipe = lambda path: resolve({"seed": 0, "data": {"name": "npy", "path": path, "batch_size": 1024,
                                                   "eval_batch_size": 1024},
                               "model": {"name": "linear"}, "loss": "logitbinarycrossentropy", "metrics": ["accuracy"],
                               "trainer": {"max_epochs": 1, "accelerator": "cpu"},
                               "tracking": {"experiment": "limit", "checkpoint": False, "system_metrics": False}})
recipes.run(recipe(small), tracking_uri=uri, quiet=True)  # every import and first-use cost, before the limit
with open("/proc/self/status") as fh:
    used = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
limit = used + (192 << 20)  # 192 MB more address space than the process holds now
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    np.load(f"{folder}/x.npy")
    print("loaded into memory")
except MemoryError:
    print("too large to load")
result = recipes.run(recipe(folder), tracking_uri=uri, quiet=True)
print(f"trained: accuracy {result.metrics['test/accuracy']:.4f}")
"""


def _rows(folder: Path, rows: int, width: int) -> None:
    """Two classes of float32 rows, written in chunks (never the whole array in this process's memory)."""
    folder.mkdir()
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32, shape=(rows, width))
    y = np.arange(rows) % 2
    rng = np.random.default_rng(0)
    for start in range(0, rows, 2048):
        stop = min(rows, start + 2048)
        x[start:stop] = rng.standard_normal((stop - start, width), dtype=np.float32) + 0.2 * y[start:stop, None]
    x.flush()
    del x
    np.save(folder / "y.npy", y)


@pytest.mark.slow
def test_rows_larger_than_the_memory_limit_train_read_on_demand(tmp_path: Path):
    """384 MB of rows, with 192 MB of address space to spare: loading them fails, training on them does not."""
    _rows(tmp_path / "big", 49152, 2048)
    _rows(tmp_path / "small", 256, 2048)
    out = subprocess.run([sys.executable, "-c", _UNDER_A_LIMIT, str(tmp_path / "big"), str(tmp_path / "small"),
                          f"sqlite:///{tmp_path / 'mlflow.db'}"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-2:] == ["too large to load", "trained: accuracy 0.7605"]
