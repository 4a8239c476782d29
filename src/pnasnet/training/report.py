"""What a training run reports: per-epoch records, the epoch kept, the evaluation of the kept
model (accuracy, confusion matrix, per-class precision and recall) and a PNG of the learning curves
drawn with matplotlib (the ``train`` extra; without it the numbers alone are written)."""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ..atomic_files import atomic_path

__all__ = ["EpochRecord", "MISSING_MATPLOTLIB", "best_epoch", "confusion_matrix", "draw_learning_curves",
           "evaluation_report", "kept_epoch", "learning_curves_figure", "matplotlib_available", "per_class_metrics"]

MISSING_MATPLOTLIB = ("matplotlib is not installed: no curves.png (metrics.json has the numbers); "
                      "pip install 'pnasnet[train]' for the learning curves")


@dataclass
class EpochRecord:
    """One epoch. Training loss/accuracy are averaged over the epoch's steps in training mode
    (dropout on), as Keras reports them; validation ones come from the model in inference mode
    after the epoch. Losses are the cross-entropy with label smoothing, without the L2 term; with
    class weights the training loss is the weighted one (what is minimised, as Keras reports it),
    the validation loss the plain one."""

    epoch: int                      # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    learning_rate: float = 0.0      # at the epoch's last step
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def best_epoch(history: Sequence[EpochRecord]) -> EpochRecord | None:
    """The epoch with the highest validation accuracy; ties go to the lower validation loss, then
    to the earlier epoch. None without validation metrics."""
    scored = [r for r in history if r.val_accuracy is not None]
    if not scored:
        return None
    return min(scored, key=lambda r: (-r.val_accuracy, r.val_loss if r.val_loss is not None else math.inf, r.epoch))


def kept_epoch(history: Sequence[EpochRecord], keep: str) -> EpochRecord | None:
    """The record of the epoch whose weights ``keep`` (``last`` or ``best``) writes."""
    if not history:
        return None
    if keep == "last":
        return history[-1]
    if keep == "best":
        return best_epoch(history)
    raise ValueError(f"keep must be last or best, got {keep!r}")


def confusion_matrix(true: Sequence[int], predicted: Sequence[int], num_classes: int) -> list[list[int]]:
    """``matrix[t][p]``: images of true class ``t`` predicted as ``p``."""
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(true, predicted):
        matrix[t][p] += 1
    return matrix


def per_class_metrics(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> list[dict]:
    """Per class: precision (None when nothing was predicted as it), recall, F1, support."""
    rows = []
    for k, label in enumerate(labels):
        hits = matrix[k][k]
        predicted = sum(row[k] for row in matrix)
        support = sum(matrix[k])
        precision = hits / predicted if predicted else None
        recall = hits / support if support else None
        f1 = (2 * precision * recall / (precision + recall)
              if precision is not None and recall is not None and precision + recall > 0 else None)
        rows.append({"label": label, "precision": precision, "recall": recall, "f1": f1, "support": support})
    return rows


def evaluation_report(true: Sequence[int], predicted: Sequence[int], labels: Sequence[str], *,
                      evaluated_on: str, loss: float | None = None) -> dict:
    matrix = confusion_matrix(true, predicted, len(labels))
    correct = sum(matrix[k][k] for k in range(len(labels)))
    return {
        "evaluated_on": evaluated_on,
        "images": len(true),
        "correct": correct,
        "accuracy": correct / len(true) if len(true) else None,
        "loss": loss,
        "confusion_matrix": {"labels": list(labels), "rows": "true class", "columns": "predicted class",
                             "matrix": matrix},
        "per_class": per_class_metrics(matrix, labels),
    }


# ------------------------------------------------------------------------------------------ plot
_TRAIN_COLOUR, _VAL_COLOUR = "tab:blue", "tab:orange"


def matplotlib_available() -> bool:
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return False
    return True


def _finite(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None or not math.isfinite(v) else float(v) for v in values]


def learning_curves_figure(history: Sequence[EpochRecord], *, title: str = "", kept: int | None = None):
    """A matplotlib ``Figure``: loss (left) and accuracy (right) per epoch, training and validation,
    integer epoch ticks; ``kept``: the epoch whose weights were kept, marked when it is not the
    last. None when matplotlib is not installed. No pyplot: no global state, no display."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None

    epochs = [r.epoch for r in history]
    figure = Figure(figsize=(10, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    panels = ((loss_axes, "loss", [r.train_loss for r in history], [r.val_loss for r in history]),
              (accuracy_axes, "accuracy", [r.train_accuracy for r in history], [r.val_accuracy for r in history]))
    marker = "o" if len(epochs) <= 30 else None
    for axes, name, train, val in panels:
        axes.plot(epochs, _finite(train), color=_TRAIN_COLOUR, marker=marker, markersize=4, label="training")
        if any(v is not None for v in val):
            axes.plot(epochs, _finite(val), color=_VAL_COLOUR, marker=marker, markersize=4, label="validation")
        if kept is not None and epochs and kept != epochs[-1]:
            axes.axvline(kept, color="grey", linestyle="--", linewidth=1, label=f"kept (epoch {kept})")
        axes.set_title(name)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:
            axes.set_xlim(epochs[0] - 1, epochs[0] + 1)
        axes.grid(True, color="0.9")
        axes.legend(loc="best", fontsize="small")
    accuracy_axes.set_ylim(-0.02, 1.02)
    loss_axes.set_ylim(bottom=0)
    if title:
        figure.suptitle(title)
    return figure


def draw_learning_curves(history: Sequence[EpochRecord], path: str | os.PathLike, *, title: str = "",
                         kept: int | None = None) -> Path | None:
    """:func:`learning_curves_figure` as a PNG at ``path`` (written atomically). Returns None,
    writing nothing, when matplotlib is not installed."""
    figure = learning_curves_figure(history, title=title, kept=kept)
    if figure is None:
        return None
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path
