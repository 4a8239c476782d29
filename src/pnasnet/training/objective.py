"""What training minimises, shared by head and full training: softmax cross-entropy with label
smoothing (Keras ``CategoricalCrossentropy(label_smoothing=...)``), optionally weighted per class,
Keras' L2 penalty on the new final layer's weights, and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["class_weights", "classification_loss", "l2_penalty", "learning_rate_factor"]


def class_weights(counts: Sequence[int], rule: str) -> list[float] | None:
    """Loss weight of each class from its number of training images, or None for ``"none"``.

    ``"balanced"``: ``n_samples / (n_classes * n_c)``, scikit-learn's definition
    (``compute_class_weight("balanced")``): every class then weighs as much in the loss as if the
    classes were equally large, and the weights average 1 over the training images."""
    if rule == "none":
        return None
    if rule != "balanced":
        raise ValueError(f"unknown class weight {rule!r} (none or balanced)")
    if not counts or min(counts) < 1:
        raise ValueError(f"balanced class weights need at least one training image per class, got {list(counts)}")
    total = sum(counts)
    return [total / (len(counts) * n) for n in counts]


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy; the smoothed target is ``(1 - s) * one_hot + s / num_classes``, as Keras'.

    ``weights`` (one per class): each image's loss times its class's weight, averaged over the
    images, as Keras' ``class_weight`` does (not PyTorch's ``weight=``, which divides by the sum of
    the weights and so makes an image's influence depend on the rest of its batch; this keeps a
    batch split into micro-batches or over processes equal to the whole batch)."""
    if weights is None:
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    losses = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, reduction="none")
    return (losses * weights.to(losses.device, losses.dtype)[labels]).mean()


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
