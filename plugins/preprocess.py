"""How a trained model takes raw inputs and gives predictions: the preprocessing its data needed, saved with
the model (``retort.tracking.model``) so that it predicts from raw rows, files or folders later.

One small interface, :class:`Preprocess`: ``example()`` (a few raw inputs: the model's input example and
signature), ``read(path)`` (a file or folder as raw inputs, for ``retort predict``), ``transform(inputs)``
(raw inputs to the model's input batch), ``decode(outputs)`` (the model's outputs to a table of
predictions; by default class names and probabilities, or values) and ``predict(net, inputs)`` (the three in
a row, in batches: what the loaded model calls; a subclass whose predictions are not one row per model
output, a language model scoring whole files, overrides it). retort builds :class:`TablePreprocess` (feature
names, the scaler fitted on the training split) for every in-memory table; a data plugin whose data need
other preprocessing (a tokenizer, an image transform) supplies its own subclass as the ``preprocess``
attribute of what it returns (a field of :class:`~retort.plugins.data.DataSets`): ``image_folder``'s
:class:`~retort.plugins.data.images.ImagePreprocess`, ``text``'s :class:`~retort.plugins.data.text.TextPreprocess`.
It is pickled with the model: keep plain data in it (arrays, lists, a vocabulary) and define the class at a
module's top level. Bad raw inputs raise :class:`~retort.plugins.PluginError` naming the file.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from retort.plugins import PluginError


class Preprocess:
    """Raw inputs to the model's input and its outputs to predictions. ``task`` and ``class_names`` are the
    data's; ``outputs`` says what the model returns: logits, probabilities (a softmax/sigmoid head) or values;
    ``target_scaler`` is ``(mean, std)`` of scaled regression targets. retort sets these four when it saves
    the model."""

    task: str = "regression"
    class_names: list[str] | None = None
    outputs: str = "logits"
    target_scaler: tuple[np.ndarray, np.ndarray] | None = None

    def example(self) -> Any:
        """A few raw inputs, as :meth:`transform` takes them."""
        raise NotImplementedError

    def read(self, path: str) -> Any:
        """The raw inputs in a file or folder."""
        raise PluginError(f"{type(self).__name__} cannot read {path}")

    def transform(self, inputs: Any) -> torch.Tensor:
        """Raw inputs to the model's input batch."""
        raise NotImplementedError

    def decode(self, outputs: torch.Tensor) -> Any:
        """The model's outputs (one row per input) to a ``pandas.DataFrame`` of predictions: for classes a
        ``prediction`` column (the class name) and ``probability_<class>`` columns; else ``prediction``
        (``prediction_<i>`` for several targets) in the data's units."""
        import pandas as pd

        y = outputs.detach().float().cpu()
        if self.task == "regression":
            values = y.numpy().astype(np.float64)
            if self.target_scaler is not None:
                mean, std = self.target_scaler
                values = values * std + mean
            columns = ["prediction"] if values.shape[1] == 1 else [f"prediction_{i}" for i in range(values.shape[1])]
            return pd.DataFrame(values, columns=columns)
        if self.task == "binary":
            p1 = torch.sigmoid(y) if self.outputs == "logits" else y
            p = torch.cat([1 - p1, p1], dim=1)
        else:
            p = torch.softmax(y, dim=1) if self.outputs == "logits" else y
        names = self.class_names or [str(i) for i in range(p.shape[1])]
        frame = pd.DataFrame(p.numpy().astype(np.float64), columns=[f"probability_{n}" for n in names])
        frame.insert(0, "prediction", [names[i] for i in p.argmax(dim=1).tolist()])
        return frame

    def predict(self, net: torch.nn.Module, inputs: Any, batch_size: int = 1024) -> Any:
        """Predictions for raw inputs, ``batch_size`` at a time (so that a folder of images is never in memory
        at once): :meth:`transform`, the net as it is (the loaded model's is in eval mode) on its device, and
        :meth:`decode`; one ``pandas.DataFrame``."""
        import pandas as pd

        first = next(net.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        dtype = first.dtype if first is not None else torch.float32  # a bf16-true run's net takes bf16
        rows = getattr(inputs, "iloc", inputs)
        parts = []
        with torch.no_grad():
            for i in range(0, max(len(inputs), 1), batch_size):
                x = self.transform(rows[i:i + batch_size])
                parts.append(self.decode(net(x.to(device, dtype if x.is_floating_point() else x.dtype))))
        return pd.concat(parts, ignore_index=True)


class TablePreprocess(Preprocess):
    """Rows of named numeric features, scaled as the training split was (``(x - offset) / divisor``)."""

    def __init__(self, features: list[str], offset: np.ndarray | None, divisor: np.ndarray | None,
                 examples: np.ndarray):
        self.features = list(features)
        self.offset, self.divisor = offset, divisor
        self.examples = np.asarray(examples, dtype=np.float64)  # float64: accepts float32 and int inputs too

    def example(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.examples, columns=self.features)

    def read(self, path: str) -> Any:
        """A CSV file with a header naming the features (other columns, a target among them, are ignored) or
        an .npz archive whose array ``x`` (or only array) holds the rows."""
        import pandas as pd

        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                keys = ["x"] if "x" in archive.files else archive.files
                if len(keys) != 1:
                    raise PluginError(f"{path}: no array 'x' and {len(keys)} others; keys: {', '.join(keys)}")
                rows = archive[keys[0]]
            rows = rows.reshape(len(rows), -1)
            if rows.shape[1] != len(self.features):
                raise PluginError(f"{path}: rows of {rows.shape[1]} values, but the model takes "
                                  f"{len(self.features)} features")
            return pd.DataFrame(rows.astype(np.float64), columns=self.features)
        if path.endswith(".csv") or os.path.splitext(path)[1] == "":
            frame = pd.read_csv(path)
            missing = [f for f in self.features if f not in frame.columns]
            if missing:
                raise PluginError(f"{path} lacks the feature column(s) {', '.join(missing[:5])}; the model takes "
                                  f"{', '.join(self.features)}")
            return frame[self.features].astype(np.float64)
        raise PluginError(f"{path}: a table model reads .csv or .npz files")

    def transform(self, inputs: Any) -> torch.Tensor:
        if hasattr(inputs, "columns") and all(f in inputs.columns for f in self.features):
            inputs = inputs[self.features]
        x = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
        if x.shape[1] != len(self.features):
            raise PluginError(f"inputs have {x.shape[1]} columns, but the model takes {len(self.features)}")
        if self.offset is not None:
            x = (x - self.offset) / self.divisor
        return torch.from_numpy(x.astype(np.float32))
