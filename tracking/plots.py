"""Plots recorded with a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def loss_curves(record: Any, path: Path) -> Path | None:
    """The run's loss curves (per-step train/loss, per-epoch averages and val/loss), read back from the record
    (so a resumed run's plot is whole) and logged as the artifact ``loss.png``."""
    client, run_id = record.client, record.run_id
    series = {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
              for key in ("train/loss", "train/loss_epoch", "val/loss")}
    epochs = series["train/loss_epoch"]
    if not epochs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = series["train/loss"]
    last_step = steps[-1][0] if steps else len(epochs)
    per_epoch = last_step / len(epochs)  # steps are batches; epochs are drawn at their last batch
    if steps:
        ax.plot([s / per_epoch for s, _ in steps], [v for _, v in steps], lw=0.6, alpha=0.35, label="train/loss (step)")
    ax.plot([e for e, _ in epochs], [v for _, v in epochs], "o-", ms=3, label="train/loss (epoch average)")
    if series["val/loss"]:
        ax.plot([e for e, _ in series["val/loss"]], [v for _, v in series["val/loss"]], "s-", ms=3, label="val/loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if all(v > 0 for _, v in epochs) else "linear")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    record.log_artifact(path)
    return path
