"""What training minimises, shared by head and full training: softmax cross-entropy with label
smoothing (Keras ``CategoricalCrossentropy(label_smoothing=...)``), Keras' L2 penalty on the new
final layer's weights, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["classification_loss", "l2_penalty", "learning_rate_factor"]


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Mean cross-entropy; the smoothed target is ``(1 - s) * one_hot + s / num_classes``, as Keras'."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def l2_penalty(weight: torch.Tensor, l2: float) -> torch.Tensor:
    """``l2 * sum(weight ** 2)``: Keras ``regularizers.l2(l2)`` (note: no factor 1/2)."""
    return l2 * weight.float().pow(2).sum()


def learning_rate_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")
