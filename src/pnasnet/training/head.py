"""Head mode: a new final layer trained on fixed feature vectors (what make_image_classifier did
without ``--do_fine_tuning``): dropout on the features, a linear layer, softmax cross-entropy with
label smoothing, Keras' L2 penalty on the weights, SGD with momentum.

One difference from make_image_classifier: the layer is trained on features minus their mean over
the training images, and the mean is folded into the bias afterwards (``W (x - m) + b = W x +
(b - W m)``), so the exported layer takes the features as they are. PNASNet's features are averages
of ReLU outputs, all positive; their common mean makes the largest curvature of the loss grow
with the feature size (for 4320-d features it puts make_image_classifier's learning rate 0.005 at
the edge of divergence), and centring takes that direction out (10-25x smaller in our
measurements), so the same learning rate is stable for any variant and image size.

With ``keep="best"`` the layer of the epoch with the best validation accuracy is returned
(:func:`~pnasnet.training.report.best_epoch`); with class weights the training loss weighs each
image by its class's weight."""

from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .loader import epoch_batches
from .objective import classification_loss, l2_penalty, learning_rate_factor
from .options import TrainOptions
from .progress import SilentReporter, StopRequest, TrainingInterrupted, TrainReporter
from .report import EpochRecord, best_epoch
from .rng import derive_seed

__all__ = ["evaluate_head", "train_head"]


@torch.no_grad()
def evaluate_head(layer: nn.Linear, features: torch.Tensor, labels: torch.Tensor,
                  label_smoothing: float) -> tuple[float, float, torch.Tensor]:
    """``(loss, accuracy, predictions)`` of ``layer`` on ``features`` (no dropout)."""
    logits = layer(features)
    loss = float(classification_loss(logits, labels, label_smoothing))
    predicted = logits.argmax(dim=1)
    return loss, float((predicted == labels).float().mean()), predicted


def train_head(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor | None, val_y: torch.Tensor | None,
               num_classes: int, options: TrainOptions, *, reporter: TrainReporter | None = None,
               stop: StopRequest | None = None,
               class_weights: Sequence[float] | None = None) -> tuple[nn.Linear, list[EpochRecord]]:
    """Train ``Linear(D, num_classes)`` on ``train_x [N, D]`` / ``train_y [N]``; returns it (taking
    uncentred features; the last epoch's, or the best one's with ``options.keep == "best"``) and one
    record per epoch (validation metrics when ``val_x`` is given and not empty). ``class_weights``:
    one loss weight per class (:func:`~pnasnet.training.objective.class_weights`)."""
    reporter = reporter or SilentReporter()
    torch.manual_seed(derive_seed(options.seed, "head"))  # the dropout masks
    layer = nn.Linear(train_x.shape[1], num_classes)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.SGD(layer.parameters(), lr=options.learning_rate, momentum=options.momentum)
    weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
    epochs = options.total_epochs
    steps_per_epoch = max(1, len(train_x) // options.batch_size)
    has_val = val_x is not None and len(val_x) > 0
    center = train_x.mean(dim=0)
    train_x = train_x - center
    if has_val:
        val_x = val_x - center
    if options.keep == "best" and not has_val:
        raise ValueError("keep 'best' needs validation images")
    history: list[EpochRecord] = []
    best_state: dict[str, torch.Tensor] | None = None  # keep="best": the layer of the best epoch so far
    step = 0
    for epoch in range(epochs):
        started = time.perf_counter()
        reporter.epoch_start(epoch + 1, epochs, steps_per_epoch)
        loss_sum = correct = seen = 0.0
        lr = options.learning_rate
        for indices in epoch_batches(len(train_x), options.batch_size, options.seed, epoch):
            lr = options.learning_rate * learning_rate_factor(options.lr_schedule, step, epochs * steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = train_x[indices], train_y[indices]
            logits = layer(F.dropout(x, options.dropout_rate, training=True))
            loss = classification_loss(logits, y, options.label_smoothing, weights)
            optimizer.zero_grad(set_to_none=True)
            (loss + l2_penalty(layer.weight, options.l2_regularizer)).backward()
            optimizer.step()
            step += 1
            step_loss = loss.item()
            loss_sum += step_loss * len(y)
            correct += float((logits.argmax(1) == y).sum())
            seen += len(y)
            reporter.step(step_loss)
        record = EpochRecord(epoch + 1, loss_sum / seen, correct / seen, learning_rate=lr)
        if has_val:
            record.val_loss, record.val_accuracy, _ = evaluate_head(layer, val_x, val_y, options.label_smoothing)
        record.seconds = time.perf_counter() - started
        history.append(record)
        if options.keep == "best" and best_epoch(history) is record:
            best_state = {k: v.detach().clone() for k, v in layer.state_dict().items()}
        per_epoch = sum(r.seconds for r in history) / len(history)
        reporter.epoch_end(record, per_epoch * (epochs - epoch - 1))
        if stop is not None and stop.requested and epoch + 1 < epochs:
            raise TrainingInterrupted("head training stopped; run again to retrain it from the cached features")
    if best_state is not None:
        layer.load_state_dict(best_state)
    with torch.no_grad():
        layer.bias.sub_(layer.weight @ center)
    return layer, history
