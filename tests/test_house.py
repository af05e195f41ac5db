"""The house: floors that only look down, one import name no user module can shadow."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, retort

FLOORS = {"plugins": 1, "tracking": 2, "recipes": 3}  # each may import its own floor and the ones below


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute module name ``path`` imports, function-level imports included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            if node.module == "retort":  # from retort import recipes
                out += [(node.lineno, f"retort.{a.name}") for a in node.names]
    return out


def upward_imports() -> list[str]:
    bad = []
    for package, floor in FLOORS.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for line, name in _imports(path):
                parts = name.split(".")
                if parts[0] in FLOORS:  # the old top-level names: shadowable by a user's folder
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {name} (write retort.{name})")
                elif parts[0] == "retort" and len(parts) > 1 and FLOORS.get(parts[1], 0) > floor:
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {name}: {package} is below {parts[1]}")
    return bad


def test_floors_only_look_down():
    assert upward_imports() == []


def test_the_floor_scan_sees_a_function_level_import(tmp_path: Path):
    (tmp_path / "m.py").write_text("def f():\n    from retort.recipes.runner import run\n    import tracking\n")
    assert _imports(tmp_path / "m.py") == [(2, "retort.recipes.runner"), (3, "tracking")]


@pytest.mark.parametrize("package, blocked", [("plugins", ("tracking", "recipes")), ("tracking", ("recipes",))])
def test_each_floor_imports_with_the_floors_above_blocked(package: str, blocked: tuple[str, ...]):
    """Import every module of a floor in a fresh interpreter where importing a higher floor raises."""
    modules = sorted(f"retort.{package}." + ".".join(p.relative_to(REPO / package).with_suffix("").parts)
                     for p in (REPO / package).rglob("*.py") if p.name != "__init__.py")
    code = (
        "import importlib, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[:2] in [['retort', b] for b in {list(blocked)!r}]:\n"
        "            raise ImportError(f'upward import of {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


SHADOWS = {
    "tracking.py": "raise ImportError('the user folder tracking.py was imported')\n",
    "plugins/__init__.py": "raise ImportError('the user folder plugins/ was imported')\n",
    "recipes.py": "raise ImportError('the user folder recipes.py was imported')\n",
}


@pytest.fixture
def shadowed(tmp_path: Path) -> Path:
    """A research folder holding its own tracking.py, plugins/ and recipes.py, as research code often does."""
    for name, text in SHADOWS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_a_users_own_tracking_and_plugins_do_not_shadow_retort_in_the_cli(shadowed: Path):
    out = retort("run", "iris-rmsprop", "-q", "-s", "trainer.max_epochs=1", cwd=shadowed,
                 env={"PYTHONPATH": str(shadowed)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].startswith("run_id: ")


def test_a_users_own_tracking_and_plugins_do_not_shadow_retort_in_python(shadowed: Path):
    code = ("from retort import plugins, recipes\n"
            "import sys\n"
            "r = recipes.load('iris-rmsprop', ['trainer.max_epochs=1', 'tracking.system_metrics=false'])\n"
            "res = recipes.run(r, quiet=True)\n"
            "print(len(res.run_id), plugins.get('loss', 'mse').origin, recipes.__file__)\n")
    env = {**os.environ, "PYTHONPATH": str(shadowed)}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=shadowed, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["32", "retort.plugins.losses", str(REPO / "recipes" / "__init__.py")]


@pytest.mark.slow
def test_a_users_own_tracking_and_plugins_do_not_shadow_retort_under_torchrun(shadowed: Path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": str(shadowed), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "retort.recipes.cli", "run",
                          "iris-rmsprop", "-q", "-s", "trainer.max_epochs=1", "-s", "trainer.devices=2",
                          "-s", "trainer.strategy=ddp", "-s", "trainer.accelerator=cpu"],
                         cwd=shadowed, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sum(line.startswith("run_id: ") for line in out.stdout.splitlines()) == 1


def test_every_package_folder_is_installed():
    """A plain (non-editable) install ships only the packages pyproject.toml lists: a sub-package missing from
    the list works in a checkout and fails after `pip install .`."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {"retort." + ".".join(init.parent.relative_to(REPO).parts)
               for floor in ("plugins", "tracking", "recipes") for init in (REPO / floor).rglob("__init__.py")}
    assert listed == on_disk
