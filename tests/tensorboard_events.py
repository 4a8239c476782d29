"""The scalars of a ``pnasnet train --tensorboard DIR`` log as TensorBoard itself reads them, for
the training tests."""

from pathlib import Path

import numpy as np


def read_scalars(log_dir: Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """``{(run, tag): [(step, value), ...]}`` as TensorBoard reads them (purged events left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = {}
    for run in ("train", "validation", "train_steps"):
        accumulator = EventAccumulator(str(log_dir / run))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found[(run, tag)] = [(e.step, e.value) for e in accumulator.Scalars(tag)]
    return found


def assert_tensorboard_equals_metrics(log_dir: Path, metrics: dict, steps: int) -> None:
    scalars = read_scalars(log_dir)
    epochs = metrics["epochs"]
    expected = {("train", "epoch_loss"): "train_loss", ("train", "epoch_accuracy"): "train_accuracy",
                ("train", "epoch_learning_rate"): "learning_rate", ("validation", "epoch_loss"): "val_loss",
                ("validation", "epoch_accuracy"): "val_accuracy"}
    for key, field in expected.items():
        assert scalars[key] == [(e["epoch"], float(np.float32(e[field]))) for e in epochs], key
    assert [s for s, _ in scalars[("train_steps", "batch_loss")]] == list(range(1, steps + 1))
