"""What a training run reports: per-epoch records, the evaluation of the final model (accuracy,
confusion matrix, per-class precision and recall) and a PNG of the learning curves (drawn with
Pillow, so no plotting library is needed)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ..atomic_files import atomic_path

__all__ = ["EpochRecord", "confusion_matrix", "draw_learning_curves", "evaluation_report", "per_class_metrics"]


@dataclass
class EpochRecord:
    """One epoch. Training loss/accuracy are averaged over the epoch's steps in training mode
    (dropout on), as Keras reports them; validation ones come from the model in inference mode
    after the epoch. Losses are the cross-entropy with label smoothing, without the L2 term."""

    epoch: int                      # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    learning_rate: float = 0.0      # at the epoch's last step
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


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
        "accuracy": correct / len(true) if len(true) else None,
        "loss": loss,
        "confusion_matrix": {"labels": list(labels), "rows": "true class", "columns": "predicted class",
                             "matrix": matrix},
        "per_class": per_class_metrics(matrix, labels),
    }


# ------------------------------------------------------------------------------------------ plot
_SIZE = (1000, 420)
_PANEL_MARGIN = dict(left=70, right=20, top=40, bottom=50)
_TRAIN_COLOUR, _VAL_COLOUR, _AXIS_COLOUR, _GRID_COLOUR = (31, 119, 180), (255, 127, 14), (40, 40, 40), (225, 225, 225)


def _nice_range(values: Sequence[float], floor_zero: bool) -> tuple[float, float]:
    low, high = min(values), max(values)
    if floor_zero:
        low = min(0.0, low)
    if high - low < 1e-9:
        high = low + 1.0
    pad = 0.05 * (high - low)
    return (low if floor_zero else low - pad), high + pad


def _draw_panel(draw, font, box: tuple[int, int, int, int], title: str, epochs: list[int],
                series: list[tuple[str, list[float | None], tuple[int, int, int]]], *, fixed: tuple[float, float] | None,
                floor_zero: bool) -> None:
    x0, y0, x1, y1 = box
    left, top = x0 + _PANEL_MARGIN["left"], y0 + _PANEL_MARGIN["top"]
    right, bottom = x1 - _PANEL_MARGIN["right"], y1 - _PANEL_MARGIN["bottom"]
    values = [v for _, vs, _ in series for v in vs if v is not None and math.isfinite(v)]
    low, high = fixed if fixed is not None else _nice_range(values or [0.0, 1.0], floor_zero)
    first, last = epochs[0], max(epochs[-1], epochs[0] + 1)

    def to_xy(epoch: float, value: float) -> tuple[float, float]:
        return (left + (epoch - first) / (last - first) * (right - left),
                bottom - (value - low) / (high - low) * (bottom - top))

    draw.text(((left + right) / 2, y0 + 12), title, fill=_AXIS_COLOUR, font=font, anchor="mm")
    for i in range(6):  # horizontal grid with value labels
        value = low + i * (high - low) / 5
        _, y = to_xy(first, value)
        draw.line([(left, y), (right, y)], fill=_GRID_COLOUR)
        draw.text((left - 6, y), f"{value:.3g}", fill=_AXIS_COLOUR, font=font, anchor="rm")
    step = max(1, math.ceil(len(epochs) / 10))
    for epoch in epochs[::step] + ([epochs[-1]] if (len(epochs) - 1) % step else []):
        x, _ = to_xy(epoch, low)
        draw.line([(x, bottom), (x, bottom + 4)], fill=_AXIS_COLOUR)
        draw.text((x, bottom + 8), str(epoch), fill=_AXIS_COLOUR, font=font, anchor="mt")
    draw.text(((left + right) / 2, y1 - 14), "epoch", fill=_AXIS_COLOUR, font=font, anchor="mm")
    draw.rectangle([left, top, right, bottom], outline=_AXIS_COLOUR)
    legend_y = top + 8
    for name, vs, colour in series:
        points = [to_xy(e, v) for e, v in zip(epochs, vs) if v is not None and math.isfinite(v)]
        if not points:
            continue
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)
        draw.line([(right - 110, legend_y), (right - 90, legend_y)], fill=colour, width=3)
        draw.text((right - 84, legend_y), name, fill=_AXIS_COLOUR, font=font, anchor="lm")
        legend_y += 16


def draw_learning_curves(history: Sequence[EpochRecord], path: str | os.PathLike, *, title: str = "") -> Path:
    """Loss (left) and accuracy (right) per epoch, training and validation, as a PNG at ``path``."""
    from PIL import Image, ImageDraw, ImageFont

    path = Path(path)
    image = Image.new("RGB", _SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    epochs = [r.epoch for r in history] or [1]
    half = _SIZE[0] // 2
    top = 20 if title else 0
    if title:
        draw.text((_SIZE[0] / 2, 12), title, fill=_AXIS_COLOUR, font=font, anchor="mm")
    _draw_panel(draw, font, (0, top, half, _SIZE[1]), "loss", epochs,
                [("train", [r.train_loss for r in history], _TRAIN_COLOUR),
                 ("validation", [r.val_loss for r in history], _VAL_COLOUR)], fixed=None, floor_zero=True)
    _draw_panel(draw, font, (half, top, _SIZE[0], _SIZE[1]), "accuracy", epochs,
                [("train", [r.train_accuracy for r in history], _TRAIN_COLOUR),
                 ("validation", [r.val_accuracy for r in history], _VAL_COLOUR)], fixed=(0.0, 1.0),
                floor_zero=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
