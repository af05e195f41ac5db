"""`retort compare`: real runs of a tiny recipe (3 seeds x 2 learning rates, and a sweep whose parent run is
made by hand with two PRUNED trials), the exact table, CSV, seed groups, sorting, the HTML report in headless
Chromium, and every kind of bad input."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
import yaml

from retort import recipes
from retort.recipes.cli import main
from retort.recipes.schema import resolve
from retort.tracking.compare import Run, extremes, histories, select, sweep_of
from tests.conftest import retort

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "iris", "batch_size": 32},
    "model": {"name": "mlp", "hidden": [8]},
    "loss": "logitcrossentropy",
    "optimizer": {"name": "adam", "lr": 0.01},
    "metrics": ["accuracy"],
    "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1},
    "tracking": {"experiment": "grid", "checkpoint": False, "system_metrics": False},
}
METRICS = ["val/loss", "val/accuracy", "test/loss", "test/accuracy", "train/loss_epoch"]
CHROMIUM = "/usr/bin/chromium"


def tiny(seed: int, lr: float, experiment: str, epochs: int = 2, **data):
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw["seed"], raw["optimizer"]["lr"], raw["tracking"]["experiment"] = seed, lr, experiment
    raw["trainer"]["max_epochs"] = epochs
    raw["data"].update(data)
    return resolve(raw)


class Store:
    """The module's store: its URI, a client, and the runs made in it."""

    def __init__(self, folder: Path):
        from mlflow import MlflowClient

        self.folder = folder
        self.uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.grid: dict[tuple[float, int], str] = {}  # (lr, seed) -> run id
        self.trials: dict[float, str] = {}  # lr -> run id
        self.pruned: set[str] = set()
        self.parent = ""

    def expected(self, run_id: str, metric: str) -> dict[str, float]:
        """last, min and max of a metric, straight from its recorded history."""
        history = sorted(self.client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
        values = [m.value for m in history]
        return {"last": values[-1], "min": min(values), "max": max(values)}

    def best(self, run_id: str, metric: str) -> float:
        e = self.expected(run_id, metric)
        return e["min"] if "loss" in metric else e["max"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, _store_template: Path) -> Store:
    folder = tmp_path_factory.mktemp("compare")
    shutil.copy(_store_template, folder / "mlflow.db")
    s = Store(folder)
    for lr in (0.01, 0.05):
        for seed in (0, 1, 2):
            s.grid[(lr, seed)] = recipes.run(tiny(seed, lr, "grid"), tracking_uri=s.uri, quiet=True).run_id
    exp = s.client.create_experiment("sweep")
    s.parent = s.client.create_run(exp, run_name="sweep-parent", tags={
        "retort.sweep.metric": "val/accuracy", "retort.sweep.direction": "maximize"}).info.run_id
    for number, (lr, pruned) in enumerate(((0.002, True), (0.01, False), (0.03, True), (0.1, False))):
        # the tags retort's sweep engine puts on a trial's run
        tags = {"retort.trial": str(number), "retort.trial_state": "PRUNED" if pruned else "COMPLETE"}
        result = recipes.run(tiny(0, lr, "sweep", epochs=1 if pruned else 2), tracking_uri=s.uri, quiet=True,
                             parent_run_id=s.parent, tags=tags)
        s.trials[lr] = result.run_id
        if pruned:
            s.pruned.add(result.run_id)
    s.client.set_terminated(s.parent)
    s.client.create_experiment("empty")
    return s


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """``retort`` in-process: returns (exit code, stdout, stderr)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # main() sets it from --tracking-uri

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def parse_table(text: str) -> tuple[list[str], list[list[str]]]:
    """Headers (multi-line headers joined by a space) and rows of the rich table."""
    lines = [line for line in text.splitlines() if "│" in line or "┿" in line]
    split = next(i for i, line in enumerate(lines) if "┿" in line)
    head = [[c.strip() for c in line.split("│")] for line in lines[:split]]
    headers = [" ".join(p for p in parts if p) for parts in zip(*head)]
    rows = [[c.strip() for c in line.split("│")] for line in lines[split + 1:]]
    return headers, rows


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def f4(v: float) -> str:
    return f"{v:.4g}"


# --- the table ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_table_shows_the_params_that_differ_and_last_and_best_values_sorted(store: Store, cli):
    code, out, err = cli("compare", "--experiment", "grid", "--no-group-by-seed", "--wide", "--tracking-uri", store.uri)
    assert code == 0, err
    headers, rows = parse_table(out)
    assert headers == ["run id", "name", "optimizer.lr", "seed", "val/loss last", "val/loss best",
                       "val/accuracy last", "val/accuracy best", "test/loss", "test/accuracy",
                       "train/loss_epoch last", "train/loss_epoch best"]
    by_id = {rid: key for key, rid in store.grid.items()}
    order = sorted(store.grid.values(), key=lambda rid: store.best(rid, "val/loss"))
    assert [r[0] for r in rows] == order  # best val/loss first
    for row in rows:
        rid = row[0]
        lr, seed = by_id[rid]
        expected = [rid, store.client.get_run(rid).info.run_name, str(lr), str(seed)]
        for m in METRICS:
            e = store.expected(rid, m)
            expected += [f4(e["last"])] if m.startswith("test/") else [f4(e["last"]), f4(store.best(rid, m))]
        assert row == expected
    assert "6 runs, sorted by val/loss best (minimize)" in out


@pytest.mark.slow
def test_csv_has_every_value_exactly(store: Store, cli, tmp_path: Path):
    code, out, _ = cli("compare", "--experiment", "grid", "--no-group-by-seed", "--csv", "--tracking-uri", store.uri)
    assert code == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["run_id", "name", "optimizer.lr", "seed", "val/loss:last", "val/loss:best",
                             "val/accuracy:last", "val/accuracy:best", "test/loss", "test/accuracy",
                             "train/loss_epoch:last", "train/loss_epoch:best"]
    assert [r["run_id"] for r in rows] == sorted(store.grid.values(), key=lambda rid: store.best(rid, "val/loss"))
    for r in rows:
        for m in METRICS:
            e = store.expected(r["run_id"], m)
            if m.startswith("test/"):
                assert float(r[m]) == e["last"]
            else:
                assert float(r[f"{m}:last"]) == e["last"]
                assert float(r[f"{m}:best"]) == store.best(r["run_id"], m)
    # the same into a file
    path = tmp_path / "runs.csv"
    code, out, _ = cli("compare", "--experiment", "grid", "--no-group-by-seed", "--csv", str(path),
                       "--tracking-uri", store.uri)
    assert code == 0 and out == "" and read_csv(path.read_text()) == rows


@pytest.mark.slow
def test_runs_that_differ_only_by_seed_fold_into_mean_and_std(store: Store, cli):
    code, out, _ = cli("compare", "--experiment", "grid", "--csv", "--tracking-uri", store.uri)
    assert code == 0
    rows = read_csv(out)
    assert list(rows[0])[:3] == ["n", "seeds", "optimizer.lr"] and list(rows[0])[-1] == "run_ids"
    assert [r["optimizer.lr"] for r in rows] == sorted(
        ["0.01", "0.05"], key=lambda lr: statistics.fmean(store.best(store.grid[(float(lr), s)], "val/loss")
                                                          for s in range(3)))
    groups = {}
    for r in rows:
        lr = float(r["optimizer.lr"])
        ids = [store.grid[(lr, s)] for s in range(3)]
        assert r["n"] == "3" and r["seeds"] == "0, 1, 2" and r["run_ids"].split() == ids
        for m in METRICS:
            for summary in (["last"] if m.startswith("test/") else ["last", "best"]):
                key = m if m.startswith("test/") else f"{m}:{summary}"
                values = [store.expected(i, m)["last"] if summary == "last" else store.best(i, m) for i in ids]
                assert float(r[f"{key} mean"]) == pytest.approx(statistics.fmean(values), rel=1e-12)
                assert float(r[f"{key} std"]) == pytest.approx(statistics.stdev(values), rel=1e-12)
        groups[r["optimizer.lr"]] = r

    code, out, _ = cli("compare", "--experiment", "grid", "--wide", "--tracking-uri", store.uri)
    headers, table = parse_table(out)
    assert headers[:3] == ["n", "seeds", "optimizer.lr"] and headers[3] == "val/loss last"
    assert "6 runs in 2 groups (mean ± std over seeds)" in out
    for row in table:
        g = groups[row[2]]
        mean, std = float(g["val/loss:best mean"]), float(g["val/loss:best std"])
        assert row[4] == f"{mean:.4g} ± {std:.2g}"


@pytest.mark.slow
def test_metric_and_summary_choose_the_column_and_the_order(store: Store, cli):
    code, out, _ = cli("compare", "--experiment", "grid", "--no-group-by-seed", "--metric", "val/accuracy",
                       "--summary", "max", "--csv", "--tracking-uri", store.uri)
    assert code == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["run_id", "name", "optimizer.lr", "seed", "val/accuracy:max"]
    maxima = {rid: store.expected(rid, "val/accuracy")["max"] for rid in store.grid.values()}
    assert [float(r["val/accuracy:max"]) for r in rows] == sorted(maxima.values(), reverse=True)
    assert all(maxima[r["run_id"]] == float(r["val/accuracy:max"]) for r in rows)

    code, out, _ = cli("compare", "--experiment", "grid", "--no-group-by-seed", "-m", "val/loss", "--summary", "last",
                       "--csv", "--tracking-uri", store.uri)
    lasts = [float(r["val/loss:last"]) for r in read_csv(out)]
    assert lasts == sorted(lasts)


@pytest.mark.slow
def test_a_sweep_sorts_by_its_metric_and_direction_and_shows_pruned_trials(store: Store, cli):
    code, out, _ = cli("compare", "--sweep", store.parent, "--csv", "--tracking-uri", store.uri)
    assert code == 0
    rows = read_csv(out)
    assert list(rows[0])[:5] == ["run_id", "name", "state", "optimizer.lr", "trainer.max_epochs"]
    assert list(rows[0])[5:7] == ["val/accuracy:last", "val/accuracy:best"]  # the sweep's metric comes first
    assert store.parent not in [r["run_id"] for r in rows] and len(rows) == 4
    finished = [store.trials[0.01], store.trials[0.1]]
    pruned = [store.trials[0.002], store.trials[0.03]]
    # maximize, from the parent's tags; by the last value, which is what a sweep tells Optuna
    key = lambda rid: -store.expected(rid, "val/accuracy")["last"]  # noqa: E731
    assert [r["run_id"] for r in rows] == sorted(finished, key=key) + sorted(pruned, key=key)
    assert [r["state"] for r in rows] == ["FINISHED", "FINISHED", "PRUNED", "PRUNED"]
    assert {r["trainer.max_epochs"] for r in rows[2:]} == {"1"}

    code, out, _ = cli("compare", "--sweep", store.parent, "--tracking-uri", store.uri)
    assert f"4 runs, sweep {store.parent}, sorted by val/accuracy last (maximize)" in out
    code, out, _ = cli("compare", "--experiment", "sweep", "--csv", "--tracking-uri", store.uri)
    assert {r["run_id"] for r in read_csv(out)} == set(store.trials.values())  # the parent run is left out


def test_the_sweep_metric_comes_from_the_parent_tags_else_its_params_else_val_loss():
    def run(tags=None, params=None) -> Run:
        return Run("p", "p", "1", "FINISHED", "FINISHED", 0, params or {}, tags or {}, {})

    s = sweep_of(run(tags={"retort.sweep.metric": "val/f1", "retort.sweep.direction": "maximize"}))
    assert (s.metric, s.direction) == ("val/f1", "maximize")
    s = sweep_of(run(params={"sweep.metric": "val/accuracy", "sweep.direction": "maximize"}))
    assert (s.metric, s.direction) == ("val/accuracy", "maximize")
    s = sweep_of(run())
    assert (s.metric, s.direction) == ("val/loss", "minimize")


@pytest.mark.slow
def test_named_runs_and_the_default_store_and_experiment(store: Store, cli):
    a, b = store.grid[(0.01, 0)], store.grid[(0.05, 0)]
    code, out, _ = cli("compare", b, a, "--csv", "--tracking-uri", store.uri)
    assert code == 0
    rows = read_csv(out)
    assert sorted(r["run_id"] for r in rows) == sorted([a, b])
    assert list(rows[0])[:3] == ["run_id", "name", "optimizer.lr"] and "seed" not in rows[0]
    # the real console script, in the store's folder: ./mlflow.db, and the latest run's experiment
    done = retort("compare", "--csv", cwd=store.folder)
    assert done.returncode == 0, done.stderr
    assert "comparing experiment 'sweep'" in done.stderr
    assert {r["run_id"] for r in read_csv(done.stdout)} == set(store.trials.values())


@pytest.mark.slow
def test_best_values_from_sql_and_from_the_client_agree(store: Store):
    sel = select(store.uri, experiments=["grid"])
    ids = [r.run_id for r in sel.runs]
    keys = ["val/loss", "val/accuracy", "train/loss"]
    sql = extremes(sel, ids, keys, backend="sql")
    assert sql == extremes(sel, ids, keys, backend="client")
    assert len(sql) == 18 and sql[(ids[0], "val/loss")] == (store.expected(ids[0], "val/loss")["min"],
                                                              store.expected(ids[0], "val/loss")["max"])
    assert histories(sel, ids, keys, backend="sql") == histories(sel, ids, keys, backend="client")


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bad_input_exits_2_naming_it(store: Store, cli, tmp_path: Path):
    unknown = "0" * 32
    cases = [
        (["compare", unknown, "--tracking-uri", store.uri], f"no run '{unknown}'"),
        (["compare", "--experiment", "nope", "--tracking-uri", store.uri],
         "no experiment 'nope'"),
        (["compare", "--experiment", "empty", "--tracking-uri", store.uri], "experiment 'empty' has no runs"),
        (["compare", "--experiment", "grid", "--metric", "val/nope", "--tracking-uri", store.uri],
         "no run has a metric 'val/nope'; metrics: lr, perf/data_wait_fraction, perf/samples_per_second"),
        (["compare", "--sweep", unknown, "--tracking-uri", store.uri], f"--sweep: no run '{unknown}'"),
        (["compare", "--sweep", store.grid[(0.01, 0)], "--tracking-uri", store.uri], "has no child runs"),
        (["compare", "--tracking-uri", f"sqlite:///{tmp_path / 'missing.db'}"], f"no MLflow store at {tmp_path}"),
    ]
    for args, message in cases:
        code, out, err = cli(*args, "--html", str(tmp_path / "r.html"))
        assert code == 2, (args, err)
        assert message in err and err.count("\n") == 1 and out == "", (args, err)
    assert "experiments: Default, empty, grid, sweep" in cli("compare", "-e", "nope", "--tracking-uri", store.uri)[2]
    assert not (tmp_path / "missing.db").exists() and not (tmp_path / "r.html").exists()


# --- the HTML report ------------------------------------------------------------------------------

def render(path: Path, tmp: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium without network."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed on this CI machine (scripts/setup installs it)")
        pytest.skip("Chromium is not installed (scripts/setup installs it)")
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp / 'chromium'}", "--virtual-time-budget=10000", "--dump-dom",
                           "--enable-logging=stderr", "--v=0", path.as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    # any JavaScript error fails the test, whether or not the page's own handler saw it
    errors = [line for line in done.stderr.splitlines() if "CONSOLE" in line and re.search(r"Error|Uncaught", line)]
    assert not errors, errors
    assert '<pre id="report-errors"></pre>' in done.stdout
    return done.stdout


def drawn_runs(dom: str) -> set[str]:
    """Run ids on elements the page's script drew (SVG lines, points, series)."""
    ids: set[str] = set()
    for attrs in re.findall(r"data-runs?=\"([^\"]*)\"", dom):
        ids.update(attrs.split())
    return ids


def assert_self_contained(page: str) -> None:
    assert not re.search(r"<(script|img|link|iframe)[^>]*\b(src|href)=", page, re.I)
    assert "@import" not in page and "url(" not in page
    assert not re.search(r"\bhttps?://", page.replace("http://www.w3.org/2000/svg", ""))  # a namespace, not fetched


@pytest.mark.slow
def test_html_report_of_seed_groups_renders_every_run(store: Store, cli, tmp_path: Path):
    path = tmp_path / "grid.html"
    code, _, err = cli("compare", "--experiment", "grid", "--html", str(path), "--tracking-uri", store.uri)
    assert code == 0 and f"report: {path}" in err
    page = path.read_text()
    assert_self_contained(page)
    dom = render(path, tmp_path)
    assert '<div id="report-status" data-state="ok">rendered 6 runs</div>' in dom
    assert '<pre id="report-errors"></pre>' in dom
    ids = set(store.grid.values())
    assert ids <= drawn_runs(dom.split("<table")[0])  # curves and parallel coordinates, drawn by the script
    for rid in ids:
        name = store.client.get_run(rid).info.run_name
        assert re.search(rf"<tr data-run=\"{rid}\"[^>]*>.*?<td class=\"id\">{rid}</td><td>{name}</td>", dom)
        assert dom.count(f'data-run="{rid}"') >= 2  # the table row and the parallel coordinates line
    for metric in ("val/loss", "val/accuracy", "train/loss_epoch"):
        assert f'data-metric="{metric}"' in dom
    assert dom.count('class="series"') == 2 * 3  # one line + band per group in each of 3 curve charts
    assert "Optuna fANOVA" in dom and 'data-param="optimizer.lr"' in dom
    assert "Groups: mean ± std over seeds" in dom
    assert dom.count('<details class="diff"') == 5  # every run but the best against the best


@pytest.mark.slow
def test_html_report_of_a_sweep_shows_history_and_pruned_trials(store: Store, cli, tmp_path: Path):
    path = tmp_path / "sweep.html"
    code, _, err = cli("compare", "--sweep", store.parent, "--html", str(path), "-q", "--tracking-uri", store.uri)
    assert code == 0 and err == ""
    assert_self_contained(path.read_text())
    dom = render(path, tmp_path)
    assert '<div id="report-status" data-state="ok">rendered 4 runs</div>' in dom
    assert '<pre id="report-errors"></pre>' in dom
    history = dom.split('id="history"')[1].split('id="intermediate"')[0]
    assert drawn_runs(history) == set(store.trials.values())
    for number, lr in enumerate((0.002, 0.01, 0.03, 0.1)):  # each point titled with its trial number
        assert re.search(rf'data-run="{store.trials[lr]}"[^>]*><title>trial {number} ', history)
    intermediate = dom.split('id="intermediate"')[1].split("<h2>")[0]
    for rid in store.trials.values():
        state = "PRUNED" if rid in store.pruned else "FINISHED"
        assert f'<g data-run="{rid}" class="trial {state}">' in intermediate
    best = max((store.trials[0.01], store.trials[0.1]), key=lambda rid: store.expected(rid, "val/accuracy")["last"])
    assert f'<tr data-run="{best}" class="best">' in dom
    # the best run's recipe.yaml artifact in full, and a field-by-field diff for each other trial
    assert "the best run&#x27;s resolved recipe (recipe.yaml artifact)" in dom or \
        "the best run's resolved recipe (recipe.yaml artifact)" in dom
    other = store.trials[0.03]
    diff = dom.split(f'<details class="diff" data-run="{other}">')[1].split("</details>")[0]
    assert "optimizer.lr</td><td class=\"minus\">" in diff and "<td class=\"plus\">0.03</td>" in diff
    assert "trainer.max_epochs" in diff


def test_the_report_scripts_parse():
    """The page's script files, checked by node where it is installed (the browser tests run them)."""
    from importlib.resources import files

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the scripts are only checked by the browser tests")
    for name in ("report.js", "onerror.js"):
        script = files("retort.tracking.report").joinpath(name)
        done = subprocess.run([node, "--check", str(script)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{name}: {done.stderr}"


def test_one_tick_algorithm_gives_round_ticks_and_integers_on_integer_axes():
    from retort.tracking.axes import axis, log_ticks, ticks

    assert ticks(1, 2, integer=True) == [1, 2]  # epochs 1 and 2: no 1.2, 1.4
    assert ticks(1, 2) == [1, 1.2, 1.4, 1.6, 1.8, 2]
    assert ticks(1, 12, integer=True) == [2, 4, 6, 8, 10, 12]
    assert ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1]
    assert ticks(0.1043, 0.2113, n=5) == [0.12, 0.14, 0.16, 0.18, 0.2]
    assert log_ticks(0.01, 2) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2]
    assert log_ticks(1e-5, 1) == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1]
    assert axis([3, 3], integer=True) == {"domain": [2, 4], "log": False, "ticks": [2, 3, 4], "labels": ["2", "3", "4"]}
    assert axis([0.02, 2.0]) == {"domain": [0.02, 2.0], "log": True, "ticks": [0.02, 0.05, 0.1, 0.2, 0.5, 1, 2],
                                 "labels": ["0.02", "0.05", "0.1", "0.2", "0.5", "1", "2"]}
    assert axis([])["domain"] == [0, 1] and axis([float("nan"), 5.0, None])["domain"] == [4.75, 5.25]



# --- a table that fits, seeds as an axis ----------------------------------------------------------

SIX = {"optimizer.lr": ["0.0012345678901234567", "0.034567890123456789", "0.00056789012345678901",
                        "0.0098765432109876543", "0.21098765432109876"],
       "data.batch_size": ["16", "32", "64", "128", "256"],
       "model.dropout": ["0.1", "0.2", "0.30000000000000004", "0.4", "0.5"],
       "optimizer.weight_decay": ["1.2345678901234567e-05", "0.00012345678901234567", "0.0", "1e-06", "0.001"],
       "model.hidden": ["[128, 64]", "[64]", "[256, 128]", "[32, 32]", "[512]"],
       "model.activation": ["relu", "gelu", "tanh", "elu", "silu"]}


def six_param_sweep(uri: str) -> tuple[str, list[str]]:
    """A sweep's parent run and 5 trials, written with MLflow's client: 6 params differ (as a sweep's
    sampler writes them, to 17 digits), and so do the descriptive ones."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("six")
    parent = client.create_run(exp, run_name="sweep six", tags={
        "retort.sweep": "parent", "retort.study": "six", "retort.sweep.metric": "val/loss",
        "retort.sweep.direction": "minimize"}).info.run_id
    trials = []
    for i in range(5):
        run = client.create_run(exp, run_name=f"six trial {i}", tags={
            "mlflow.parentRunId": parent, "retort.trial": str(i), "retort.trial_state": "COMPLETE"}).info.run_id
        params = {k: v[i] for k, v in SIX.items()}
        params.update({"seed": "0", "name": f"six-{i}", "description": f"trial {i} of a long description",
                       "sweep.trials": str(10 + i), "tracking.run_name": f"six trial {i}", "trainer.max_epochs": "3"})
        metrics = [Metric(f"val/{k}", 0.5 / (i + 1) + e * 0.01 + j * 0.1, 0, e) for e in (1, 2, 3)
                   for j, k in enumerate(("loss", "accuracy"))]
        metrics += [Metric("test/loss", 0.4 + i / 7, 0, 0), Metric("test/accuracy", 0.9 - i / 70, 0, 0),
                    Metric("train/loss_epoch", 0.3 + i / 9, 0, 3)]
        client.log_batch(run, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run)
        trials.append(run)
    client.set_terminated(parent)
    return parent, trials


def test_a_six_param_sweep_fits_120_columns_and_wide_shows_all(workdir: Path, cli):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    parent, trials = six_param_sweep(uri)
    code, out, err = cli("compare", "--sweep", parent, "--tracking-uri", uri)
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 120, out
    headers, rows = parse_table(out)
    # every param that differs, over two header lines where long, and nothing descriptive
    assert headers[:7] == ["run id", "data. batch_size", "model. activation", "model. dropout", "model. hidden",
                           "optimizer. lr", "optimizer. weight_decay"], headers
    assert headers[7:9] == ["val/loss last", "val/loss best"]
    assert not any(h.startswith(("name", "description", "sweep", "tracking")) for h in headers)
    by_order = [trials[i] for i in (4, 3, 2, 1, 0)]  # val/loss falls with i
    assert [r[0] for r in rows] == [t[:8] for t in by_order]
    assert rows[0][1:7] == ["256", "silu", "0.5", "[512]", "0.211", "0.001"]
    assert rows[2][1:7] == ["64", "tanh", "0.3", "[256, 128]", "0.0005679", "0"]
    assert rows[4][5:9] == ["0.001235", "1.235e-05", "0.53", "0.51"]
    left = len(["val/accuracy last", "val/accuracy best", "test/loss", "test/accuracy", "train/loss_epoch last",
                "train/loss_epoch best", "name"]) - (len(headers) - 9)
    assert f"{left} columns left out to fit (--wide shows all)" in " ".join(out.split())

    code, out, _ = cli("compare", "--sweep", parent, "--wide", "--tracking-uri", uri)
    headers, rows = parse_table(out)
    assert headers[:2] == ["run id", "name"] and "optimizer.weight_decay" in headers and len(headers) == 16
    assert rows[-1][0] == trials[0] and "0.0012345678901234567" in rows[-1] and "left out" not in out
    code, out, _ = cli("compare", "--sweep", parent, "--descriptive", "--csv", "--tracking-uri", uri)
    assert {"name", "description", "sweep.trials"} <= set(read_csv(out)[0])
    assert "tracking.run_name" not in read_csv(out)[0]  # a run's name is its name column


@pytest.mark.slow
def test_seeds_group_once_repeats_are_not_seeds_and_the_verdict_by_seed(workdir: Path, cli):
    """3 seeds each: lr 0.1; the same with an eval batch size that changes nothing (identical numbers); lr 1e-5
    (it barely trains: far beyond seed noise); and a rerun of lr 0.1's seed 0, a repeat and not a fourth seed."""
    from scipy import stats

    from retort.tracking.vocabulary import Tag

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    ids: dict[str, list[str]] = {"fast": [], "same": [], "slow": []}
    for seed in (0, 1, 2):
        for key, lr, overrides in (("fast", 0.1, {}), ("same", 0.1, {"eval_batch_size": 512}), ("slow", 1e-5, {})):
            ids[key].append(recipes.run(tiny(seed, lr, "seeds", 3, **overrides), tracking_uri=uri, quiet=True).run_id)
    rerun = recipes.run(tiny(0, 0.1, "seeds", epochs=3), tracking_uri=uri, quiet=True,
                        tags={Tag.RERUN_OF: ids["fast"][0]}).run_id

    code, out, err = cli("compare", "--experiment", "seeds", "--csv", "--tracking-uri", uri)
    assert code == 0, err
    rows = read_csv(out)
    assert [r["n"] for r in rows] == ["3", "3", "3"]
    by_ids = {frozenset(r["run_ids"].split()): r for r in rows}
    fast, same, slow = (by_ids[frozenset(ids["fast"] + [rerun])], by_ids[frozenset(ids["same"])],
                        by_ids[frozenset(ids["slow"])])
    assert fast["seeds"] == "0 ×2, 1, 2" and same["seeds"] == slow["seeds"] == "0, 1, 2"
    assert rows[0] is fast and fast["vs best"] == "best"
    assert same["vs best"] == "within noise (p=1)"
    from mlflow import MlflowClient

    mc = MlflowClient(tracking_uri=uri)

    def best_loss(run_id: str) -> float:
        return min(m.value for m in mc.get_metric_history(run_id, "val/loss"))

    a, b = [best_loss(i) for i in ids["slow"]], [best_loss(i) for i in ids["fast"]]
    p = stats.ttest_rel(a, b).pvalue
    assert p < 0.05 and slow["vs best"] == f"worse (p={p:.2g})"
    mean, std = statistics.fmean(a), statistics.stdev(a)
    half = stats.t.ppf(0.975, 2) * std / 3 ** 0.5
    assert float(slow["val/loss:best mean"]) == pytest.approx(mean, rel=1e-12)
    assert float(slow["val/loss:best low"]) == pytest.approx(mean - half, rel=1e-9)
    assert float(slow["val/loss:best high"]) == pytest.approx(mean + half, rel=1e-9)
    # the rerun repeats seed 0 exactly: the group's mean over seeds is the three seeds' mean
    assert float(fast["val/loss:best mean"]) == pytest.approx(statistics.fmean(b), rel=1e-12)

    code, out, _ = cli("compare", "--experiment", "seeds", "--tracking-uri", uri)
    assert "10 runs in 3 groups (mean ± std over seeds)" in " ".join(out.split())
    headers, table = parse_table(out)
    assert headers[:3] == ["n", "seeds", "data. eval_batch_size"] and "vs best" in headers and "95% CI" in headers
    assert [r[headers.index("vs best")] for r in table] == ["best", "within noise (p=1)", f"worse (p={p:.2g})"]
