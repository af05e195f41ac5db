"""The trained model back out: a run's best weights as an MLflow pyfunc model (artifact ``model/``), loadable
in a fresh process with ``mlflow.pyfunc.load_model("runs:/RUN_ID/model")``; ``retort predict`` serves it.

The folder is written in MLflow's format directly, not by ``mlflow.pyfunc.save_model`` (whose requirement
inference and example validation cost seconds a run): ``MLmodel`` (flavor python_function with this module
as its loader, the signature, an input example), ``requirements.txt`` and ``python_env.yaml``, and under
``data/``: ``weights.pt`` (the net's state dict), ``model.json`` (the model plugin's spec, the data's
shapes, the output head), ``preprocess.pkl`` (the data's :class:`~retort.plugins.preprocess.Preprocess`)
and ``code/`` (the recipe's own files, which register its plugins). Loading rebuilds the net from the
plugin registry: it runs those files and unpickles the preprocessing, as loading any pickled model runs
code: load models from records you trust.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

LOADER = "retort.tracking.model"


def save(folder: Path, *, net: Any, spec: dict[str, Any], info: Any, head: str, preprocess: Any,
         code: list[tuple[str, str]] = (), modules: list[str] = ()) -> Path:
    """Write the model folder; ``code`` is ``(file name, text)`` of each of the recipe's own files, ``modules``
    the importable modules it names (imported again at load)."""
    import dataclasses

    import torch
    from mlflow.models import Model, infer_signature
    from mlflow.models.utils import _save_example

    data = folder / "data"
    (data / "code").mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, data / "weights.pt")
    (data / "model.json").write_text(json.dumps({"spec": spec, "info": dataclasses.asdict(info), "head": head,
                                                 "code": [name for name, _ in code], "modules": list(modules)},
                                                indent=1))
    for name, text in code:
        (data / "code" / name).write_text(text)
    with open(data / "preprocess.pkl", "wb") as fh:
        pickle.dump(preprocess, fh)
    example = preprocess.example()
    was = net.training
    net.eval()
    outputs = preprocess.predict(net, example)
    net.train(was)
    model = Model()
    with warnings.catch_warnings():  # "integer columns cannot hold missing values": of outputs, never missing
        warnings.simplefilter("ignore", UserWarning)
        model.signature = infer_signature(example, outputs)
    _save_example(model, example, str(folder))
    model.add_flavor("python_function", loader_module=LOADER, data="data", env={"virtualenv": "python_env.yaml"},
                     python_version=".".join(map(str, sys.version_info[:3])))
    model.save(str(folder / "MLmodel"))
    (folder / "requirements.txt").write_text("\n".join(_requirements()) + "\n")
    (folder / "python_env.yaml").write_text(
        f"python: {'.'.join(map(str, sys.version_info[:3]))}\nbuild_dependencies: [pip]\n"
        "dependencies: [-r requirements.txt]\n")
    return folder


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("retort", "torch", "mlflow", "numpy", "pandas"):
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{name}=={version(name)}")
    return out


class RetortModel:
    """What ``mlflow.pyfunc.load_model`` wraps: raw inputs in, a ``pandas.DataFrame`` of predictions out."""

    def __init__(self, net: Any, preprocess: Any, batch_size: int = 1024):
        self.net, self.preprocess, self.batch_size = net, preprocess, batch_size

    def get_raw_model(self) -> RetortModel:
        """This object (``mlflow.pyfunc.load_model(...).get_raw_model()``), to :meth:`read` files."""
        return self

    def read(self, path: str) -> Any:
        """The raw inputs in a file or folder (a CSV, an .npz, an image folder, a text file), as :meth:`predict`
        takes them."""
        return self.preprocess.read(path)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        return self.preprocess.predict(self.net, model_input, self.batch_size)


def _load_pyfunc(data_path: str) -> RetortModel:
    """MLflow's loader hook: rebuild the net from the registry (running the recipe's own files first)."""
    import torch
    from torch import nn

    from retort import plugins
    from retort.plugins.data import DataInfo

    data = Path(data_path)
    meta = json.loads((data / "model.json").read_text())
    for name in meta["code"]:
        _run_file(data / "code" / name)
    for name in meta["modules"]:
        import importlib

        importlib.import_module(name)
    info = meta["info"]
    info = DataInfo(**{**info, "image_shape": tuple(info["image_shape"]) if info["image_shape"] else None})
    net = plugins.build("model", meta["spec"], info)
    head = {"softmax": nn.Softmax(dim=-1), "sigmoid": nn.Sigmoid()}.get(meta["head"])
    net = net if head is None else nn.Sequential(net, head)
    net.load_state_dict(torch.load(data / "weights.pt", map_location="cpu", weights_only=True))
    net.eval()
    with open(data / "preprocess.pkl", "rb") as fh:
        preprocess = pickle.load(fh)  # the model's own preprocessing, as MLflow unpickles models
    return RetortModel(net, preprocess)


def _run_file(path: Path) -> None:
    """Run one of the recipe's own files under its own name (once), so its registrations exist."""
    import importlib.util

    name = path.stem
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
