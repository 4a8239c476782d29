"""Full mode: fine-tune the whole network (or all but its first cells) with TF-Hub v3's training
semantics (``PNASNet.train()``: batch statistics with moving averages at the set decay, drop path
held at its final keep probability, dropout before the final layer), optionally with TF-Slim's aux
head (loss weight 0.4), checkpointing every epoch and on Ctrl-C, and resuming exactly; optionally
with per-class loss weights, and keeping the best epoch's weights (``keep="best"``) beside the
checkpoint.

:class:`FineTuner` owns the model and optimizer and does one optimizer step at a time;
:func:`fine_tune` is the epoch loop around it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..model import PNASNet
from ..tasks.inference import run_model
from .augment import GeometricAugmentation, TrainingTransform
from .checkpoint import remove_best_weights, save_best_weights, save_checkpoint
from .dataset import LabeledImage
from .distributed import DistContext, convert_sync_batch_norm, shard, wrap_ddp
from .loader import AugmentedImages, epoch_batches, training_batches
from .objective import classification_loss, l2_penalty, learning_rate_factor
from .options import TrainOptions
from .progress import SilentReporter, StopRequest, TrainingInterrupted, TrainReporter
from .report import EpochRecord, best_epoch
from .rng import derive_seed, get_rng_state, set_rng_state

__all__ = ["FineTuner", "evaluate_model", "fine_tune", "layer_groups"]


def layer_groups(model: PNASNet) -> list[tuple[str, list[nn.Module]]]:
    """The network's layers from input to output: the stem convolution, each cell of
    ``model.cell_names``, then the heads (final layer and aux head)."""
    groups: list[tuple[str, list[nn.Module]]] = [("stem", [model.conv0, model.conv0_bn])]
    groups += [(name, [model.get_submodule(name)]) for name in model.cell_names]
    heads = [model.final_layer] + [m for n, m in model.named_children() if n.startswith("aux_")]
    groups.append(("head", heads))
    return groups


class FineTuner:
    """The model in fine-tuning form and its optimizer.

    - ``freeze_cells = N``: the stem convolution and the first ``N`` of ``model.cell_names``
      (``cell_stem_0``, ``cell_stem_1``, ``cell_0``, ...) get no gradient and run in inference mode
      (moving statistics used and left unchanged, no drop path).
    - batch norm frozen (``freeze_batch_norm`` on, or auto with fewer than 8 images per forward
      pass): every BN layer uses and keeps its moving statistics; its scale and offset still train.
    - layer-wise learning rates: the heads get the learning rate, the layer ``d`` below them
      ``learning_rate * layer_lr_decay ** d``.
    - ``accumulation_steps = k``: each optimizer step sums the gradients of ``k`` micro-batches,
      weighted so that the step equals one over the whole batch (batch norm sees the micro-batches).
    - ``class_weights``: each image's loss (main and aux) times its class's weight.
    """

    def __init__(self, model: PNASNet, options: TrainOptions, *, total_steps: int, device: torch.device,
                 dist: DistContext | None = None, class_weights: Sequence[float] | None = None):
        if options.freeze_cells > len(model.cell_names):
            raise ValueError(f"cannot freeze {options.freeze_cells} cells: the model has {len(model.cell_names)} "
                             f"({', '.join(model.cell_names)})")
        if options.aux_head and model.aux_cell is None:
            raise ValueError("this model has no aux head (it needs the aux_head option at construction)")
        self.model = model.to(device)
        self.options = options
        self.total_steps = total_steps
        self.device = device
        model.set_batch_norm_decay(options.batch_norm_decay)
        model.set_drop_path_progress(1.0)  # held at the final keep probability, as TF-Hub fine-tuning
        groups = layer_groups(model)
        self.frozen: list[nn.Module] = []
        if options.freeze_cells:
            self.frozen = [m for _, modules in groups[: 1 + options.freeze_cells] for m in modules]
        for module in self.frozen:
            module.requires_grad_(False)
        param_groups = []
        for depth, (name, modules) in enumerate(reversed(groups)):
            params = [p for m in modules for p in m.parameters() if p.requires_grad]
            if params:
                param_groups.append({"params": params, "name": name,
                                     "lr_multiplier": options.layer_lr_decay ** depth})
        self.optimizer = torch.optim.SGD(param_groups, lr=options.learning_rate, momentum=options.momentum)
        self.autocast_dtype = torch.bfloat16 if options.bfloat16 else None
        self.class_weights = (torch.tensor(class_weights, dtype=torch.float32, device=device)
                              if class_weights is not None else None)
        # [distributed] the model wrapped in DDP (gradients averaged over the processes); None alone
        self.dist = dist
        self.ddp = wrap_ddp(model, dist) if dist is not None else None

    def train_mode(self) -> None:
        self.model.train()
        for module in self.frozen:
            module.eval()
        if self.options.batch_norm_frozen:
            for bn in self.model.batch_norms():
                bn.eval()

    def learning_rate(self, step: int) -> float:
        return self.options.learning_rate * learning_rate_factor(self.options.lr_schedule, step, self.total_steps)

    def _forward_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            if self.ddp is not None:  # [distributed]
                out = self.ddp(images, with_aux=self.options.aux_head)
                logits, aux_logits = out if self.options.aux_head else (out, None)
            elif self.options.aux_head:
                logits, aux_logits = self.model.classify(images, with_aux=True)
            else:
                logits, aux_logits = self.model.classify(images), None
        loss = classification_loss(logits, labels, self.options.label_smoothing, self.class_weights)
        total = loss
        if aux_logits is not None:
            total = total + self.options.aux_loss_weight * classification_loss(
                aux_logits, labels, self.options.label_smoothing, self.class_weights)
        return total, loss.detach(), logits.detach()

    def _begin_step(self, images: torch.Tensor, labels: torch.Tensor,
                    global_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Set this step's learning rates, clear the gradients, move the batch to the device."""
        lr = self.learning_rate(global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_multiplier"]
        self.optimizer.zero_grad(set_to_none=True)
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def step(self, images: torch.Tensor, labels: torch.Tensor, global_step: int,
             global_batch: int | None = None) -> tuple[float, int]:
        """One optimizer step on a batch; returns (summed main loss over the images, correct count).
        [distributed] ``images`` is this process's share of a batch of ``global_batch`` images."""
        if self.ddp is not None:
            return self._distributed_step(images, labels, global_step, global_batch or len(labels))
        images, labels = self._begin_step(images, labels, global_step)
        loss_sum, correct = 0.0, 0
        for part_images, part_labels in zip(images.tensor_split(self.options.accumulation_steps),
                                            labels.tensor_split(self.options.accumulation_steps)):
            if not len(part_labels):
                continue
            total, loss, logits = self._forward_loss(part_images, part_labels)
            (total * (len(part_labels) / len(labels))).backward()
            loss_sum += float(loss) * len(part_labels)
            correct += int((logits.argmax(1) == part_labels).sum())
        fc = self.model.final_layer.FC
        if self.options.l2_regularizer and fc.weight.requires_grad:
            l2_penalty(fc.weight, self.options.l2_regularizer).backward()
        self.optimizer.step()
        return loss_sum, correct

    def _distributed_step(self, images: torch.Tensor, labels: torch.Tensor, global_step: int,
                          global_batch: int) -> tuple[float, int]:
        """[distributed] ``step`` under DDP: each micro-batch's loss weighted by its share of the
        global batch times the world size (DDP divides the summed gradients by the world size);
        gradients synchronised on the last micro-batch only; the L2 term added once per process
        (averaged by DDP to itself)."""
        images, labels = self._begin_step(images, labels, global_step)
        parts = list(zip(images.tensor_split(self.options.accumulation_steps),
                         labels.tensor_split(self.options.accumulation_steps)))
        fc = self.model.final_layer.FC
        scale = self.dist.world_size / global_batch
        loss_sum, correct = 0.0, 0
        for i, (part_images, part_labels) in enumerate(parts):
            last = i == len(parts) - 1
            with contextlib.nullcontext() if last else self.ddp.no_sync():
                total, loss, logits = self._forward_loss(part_images, part_labels)
                total = total * (len(part_labels) * scale)
                if last and self.options.l2_regularizer and fc.weight.requires_grad:
                    total = total + l2_penalty(fc.weight, self.options.l2_regularizer)
                total.backward()
            loss_sum += float(loss) * len(part_labels)
            correct += int((logits.argmax(1) == part_labels).sum())
        self.optimizer.step()
        return loss_sum, correct


@torch.no_grad()
def evaluate_model(model: PNASNet, images: Sequence[LabeledImage], *, image_size: int, transform: str,
                   batch_size: int, workers: int | None, label_smoothing: float
                   ) -> tuple[float | None, float | None, list[int], list[int], list[tuple[str, str]]]:
    """``(loss, accuracy, true labels, predictions, unreadable)`` of ``model`` in inference mode
    with the evaluation transform. The global RNG is left as it was (validation must not change
    what a resumed run draws)."""
    labels = {im.path: im.label for im in images}
    true: list[int] = []
    predicted: list[int] = []
    failed: list[tuple[str, str]] = []
    loss_sum = 0.0
    with torch.random.fork_rng(devices=[]):
        for batch, logits in run_model(model, [im.path for im in images], model.classify, image_size=image_size,
                                       batch_size=batch_size, workers=workers, transform=transform):
            failed += [(p, e) for p, e in zip(batch.paths, batch.errors) if e is not None]
            if not len(logits):
                continue
            target = torch.tensor([labels[p] for p in batch.decoded_paths])
            loss_sum += float(classification_loss(logits, target, label_smoothing)) * len(target)
            true += target.tolist()
            predicted += logits.argmax(1).tolist()
    if not true:
        return None, None, true, predicted, failed
    accuracy = sum(t == p for t, p in zip(true, predicted)) / len(true)
    return loss_sum / len(true), accuracy, true, predicted, failed


def _architecture(model: PNASNet) -> dict:
    return {"config": json.dumps(dataclasses.asdict(model.config), sort_keys=True),
            "num_classes": model.num_classes, "aux_head": model.aux_cell is not None}


def fine_tune(model: PNASNet, train_images: Sequence[LabeledImage], val_images: Sequence[LabeledImage],
              options: TrainOptions, *, image_size: int, checkpoint_path: str | Path, identity: dict,
              resume: dict | None = None, device: torch.device | str = "cpu", workers: int = 0,
              reporter: TrainReporter | None = None, stop: StopRequest | None = None,
              dist: DistContext | None = None, class_weights: Sequence[float] | None = None) -> list[EpochRecord]:
    """Train ``model`` for ``options.total_epochs`` epochs, from ``resume`` (a loaded checkpoint)
    if given; save a checkpoint after every epoch and when ``stop`` is requested (then raise
    :class:`TrainingInterrupted`). Returns the per-epoch history; the model is left with the last
    epoch's weights (with ``options.keep == "best"`` the best epoch's are in the file
    :func:`~pnasnet.training.checkpoint.best_weights_path` names, beside the checkpoint).

    [distributed] ``dist``: this process's share of every batch, gradients averaged by DDP, the
    step's sums and Ctrl-C added up over the processes, rank 0 alone saves and validates."""
    reporter = reporter or SilentReporter()
    device = torch.device(device)
    epochs = options.total_epochs
    steps_per_epoch = len(epoch_batches(len(train_images), options.batch_size, options.seed, 0))
    if dist is not None:  # [distributed]
        _check_shares(len(train_images), options, dist)
        if resume is not None:
            model.load_state_dict(resume["model"])  # before DDP copies rank 0's weights to every process
        if options.sync_batch_norm:
            convert_sync_batch_norm(model)
    tuner = FineTuner(model, options, total_steps=epochs * steps_per_epoch, device=device, dist=dist,
                      class_weights=class_weights)
    geometry = GeometricAugmentation(options.rotation_range, options.width_shift_range, options.height_shift_range,
                                     options.zoom_range)
    dataset = AugmentedImages(train_images, image_size,
                              TrainingTransform(options.augment, options.transform, geometry), options.seed)
    checkpoint_dir = Path(checkpoint_path).parent
    keeps_best = options.keep == "best" and (dist is None or dist.is_main)  # [distributed] rank 0 validates

    if resume is not None:
        model.load_state_dict(resume["model"])
        tuner.optimizer.load_state_dict(resume["optimizer"])
        set_rng_state(_own_rng_state(resume, options, dist))
        epoch, done_steps, global_step = resume["epoch"], resume["step"], resume["global_step"]
        partial = dict(resume["partial"])
        history = [EpochRecord(**r) for r in resume["history"]]
        if keeps_best:  # a file written after the checkpoint, by the run that was stopped, does not count
            best = best_epoch(history)
            remove_best_weights(checkpoint_dir, keep_epoch=best.epoch if best is not None else None)
    else:
        # [distributed] rank 0 draws what a single process draws; the others their own streams
        torch.manual_seed(derive_seed(options.seed, "train") if dist is None or dist.is_main else
                          derive_seed(options.seed, "train", "rank", dist.rank))
        epoch, done_steps, global_step = 0, 0, 0
        partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        history = []
        if keeps_best:
            remove_best_weights(checkpoint_dir)  # left by an earlier run

    def save(epoch_now: int, step_now: int) -> None:
        if dist is not None:  # [distributed] every rank's RNG to rank 0, which alone writes
            rng_ranks = dist.all_gather_object(get_rng_state())
            if dist.is_main:
                save_checkpoint(checkpoint_path, _state(epoch_now, step_now) | {"rng_ranks": rng_ranks, "world_size": dist.world_size})
            dist.barrier()
            return
        save_checkpoint(checkpoint_path, _state(epoch_now, step_now))

    def _state(epoch_now: int, step_now: int) -> dict:
        return {"identity": json.dumps(identity, sort_keys=True), "epoch": epoch_now, "step": step_now,
                 "global_step": global_step, "partial": dict(partial),
                 "history": [r.to_dict() for r in history], "rng": get_rng_state(),
                 "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "optimizer": tuner.optimizer.state_dict(), "architecture": _architecture(model)}

    while epoch < epochs:
        started = time.perf_counter() - partial["seconds"]
        batches = epoch_batches(len(train_images), options.batch_size, options.seed, epoch)
        reporter.epoch_start(epoch + 1, epochs, len(batches), done_steps)
        tuner.train_mode()
        mine = batches if dist is None else [shard(b, dist.rank, dist.world_size) for b in batches]
        stream = training_batches(dataset, mine[done_steps:], epoch, workers=workers,
                                  pin_memory=device.type == "cuda")
        for images, labels in stream:
            if dist is None:
                loss_sum, correct = tuner.step(images, labels, global_step)
            else:  # [distributed] the step's sums and any Ctrl-C, over all processes
                global_batch = len(batches[done_steps])
                loss_sum, correct = tuner.step(images, labels, global_step, global_batch)
                loss_sum, correct, _, stopping = dist.all_sum(
                    [loss_sum, correct, len(labels), float(stop is not None and stop.requested)])
                correct = int(round(correct))
                labels = range(global_batch)  # for the counts below
                if stopping and stop is not None:
                    stop.requested = True
            global_step += 1
            done_steps += 1
            partial["loss_sum"] += loss_sum
            partial["correct"] += correct
            partial["seen"] += len(labels)
            reporter.step(loss_sum / len(labels))
            if stop is not None and stop.requested and done_steps < len(batches):
                partial["seconds"] = time.perf_counter() - started
                save(epoch, done_steps)
                reporter.close()
                raise TrainingInterrupted(f"stopped in epoch {epoch + 1} after step {done_steps}; run the same "
                                          "command again to resume", str(checkpoint_path))
        record = EpochRecord(epoch + 1, partial["loss_sum"] / partial["seen"], partial["correct"] / partial["seen"],
                             learning_rate=tuner.learning_rate(global_step - 1))
        if val_images and (dist is None or dist.is_main):  # [distributed] rank 0 only
            record.val_loss, record.val_accuracy, *_ = evaluate_model(
                model, val_images, image_size=image_size, transform=options.transform,
                batch_size=options.inference_batch_size, workers=workers, label_smoothing=options.label_smoothing)
        record.seconds = time.perf_counter() - started
        history.append(record)
        improved = keeps_best and best_epoch(history) is record
        if improved:  # before the checkpoint that records this epoch
            save_best_weights(checkpoint_dir, record.epoch, model.state_dict())
        epoch, done_steps = epoch + 1, 0
        partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        per_epoch = sum(r.seconds for r in history) / len(history)
        reporter.epoch_end(record, per_epoch * (epochs - epoch))  # logs (TensorBoard) before the checkpoint
        save(epoch, 0)
        if improved:
            remove_best_weights(checkpoint_dir, keep_epoch=record.epoch)
        if dist is not None and epoch < epochs:  # [distributed] a Ctrl-C during validation, on any rank
            stopping = dist.all_sum([float(stop is not None and stop.requested)])[0]
            if stopping and stop is not None:
                stop.requested = True
        if stop is not None and stop.requested and epoch < epochs:
            raise TrainingInterrupted(f"stopped after epoch {epoch}; run the same command again to resume",
                                      str(checkpoint_path))
    model.eval()
    return history


# ---------------------------------------------------------------------------------- [distributed]
def _check_shares(num_images: int, options: TrainOptions, dist: DistContext) -> None:
    smallest = min(num_images, options.batch_size) // dist.world_size
    if smallest < options.accumulation_steps or smallest < 1:
        raise ValueError(f"{dist.world_size} processes need a batch of at least "
                         f"{dist.world_size * options.accumulation_steps} images (each process at least one per "
                         f"micro-batch); got batch size {options.batch_size} with {num_images} training images and "
                         f"{options.accumulation_steps} accumulation step(s)")


def _own_rng_state(resume: dict, options: TrainOptions, dist: DistContext | None) -> dict:
    """The RNG state this process saved (rank 0's alone; each rank's own under torchrun)."""
    if dist is None or dist.is_main:
        return resume["rng"]
    ranks = resume.get("rng_ranks")
    if ranks is not None and len(ranks) == dist.world_size:
        return ranks[dist.rank]
    # another world size than the one that saved: a fresh stream per rank, still reproducible
    generator = torch.Generator().manual_seed(
        derive_seed(options.seed, "train", "resume", resume["epoch"], resume["step"], "rank", dist.rank))
    return {"torch": generator.get_state()}
