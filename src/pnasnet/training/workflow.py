"""``train``: an image folder in, a model directory out (``pnasnet train`` calls this).

1. Scan ``IMAGE_DIR`` (one sub-folder per class), find the unreadable files (head mode: while
   computing features; full mode: a decoding pass), drop them, check what is left, split it by a
   hash of each file name, report the class balance.
2. ``head``: feature vectors from the cache or computed (resumable), a new final layer trained on
   them. ``full``: the classifier fine-tuned end to end, checkpointed every epoch, resumed from the
   checkpoint in ``MODEL_DIR`` when the same run is started again.
3. Keep the last epoch's weights or the best one's (``keep``), evaluate them on the validation
   images and write ``MODEL_DIR`` (:mod:`pnasnet.training.model_dir`) with its model card.

Class weights (``class_weight="balanced"``) come from the training images of each class; the
TensorBoard log (``tensorboard=DIR``) is written by a reporter wrapped around the run's reporter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..model import PNASNet, PNASNetConfig
from ..inference import cpu_support
from ..tasks import default_workers
from ..tasks.inference import model_image_size
from .checkpoint import CHECKPOINT_FILE, ModelDirLock, check_identity, load_best_weights, load_checkpoint
from . import distributed
from .dataset import ImageFolder, LabeledImage, Split, check_class_counts, scan_image_folder, split_train_validation
from .feature_cache import cached_features
from .finetune import evaluate_model, fine_tune
from .head import evaluate_head, train_head
from .loader import find_unreadable
from .model_dir import prepare_model_dir, remove_checkpoint, write_model_dir
from .model_card import equivalent_command
from .models import build_classifier, describe_base, inference_copy, load_backbone
from .objective import class_weights
from .options import TrainOptions
from .progress import ConsoleReporter, SilentReporter, TrainReporter, stop_on_interrupt
from .report import MISSING_MATPLOTLIB, EpochRecord, best_epoch, evaluation_report, kept_epoch, matplotlib_available
from .rng import derive_seed
from .tensorboard import TensorBoardReporter, check_tensorboard_available

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    out: Path
    mode: str
    labels: list[str]
    history: list[EpochRecord]
    evaluation: dict                          # evaluation_report() of the final model
    class_balance: list[dict]
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    resumed: str | None = None                # where a full-mode run resumed from
    kept_epoch: int | None = None             # the epoch whose weights were written (1-based)

    @property
    def val_accuracy(self) -> float | None:
        """Accuracy of the final model on the validation images (None without any)."""
        return self.evaluation["accuracy"] if self.evaluation["evaluated_on"] == "validation" else None


def _resolve_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _balance_lines(balance: list[dict]) -> list[str]:
    width = max(len("class"), *(len(row["label"]) for row in balance))
    lines = [f"  {'class':<{width}}  {'train':>6}  {'val':>5}"]
    lines += [f"  {row['label']:<{width}}  {row['train']:>6}  {row['validation']:>5}" for row in balance]
    counts = [row["train"] + row["validation"] for row in balance]
    if max(counts) > 3 * min(counts):
        lines.append(f"  note: unbalanced classes ({min(counts)} to {max(counts)} images); accuracy favours the "
                     "large ones, see the per-class recall in metrics.json")
    return lines


def _readable_split(folder: ImageFolder, unreadable: Sequence[tuple[str, str]], options: TrainOptions,
                    reporter: TrainReporter) -> Split:
    for path, reason in unreadable:
        reporter.note(f"cannot read {path}: {reason} (skipped)")
    if unreadable:
        reporter.note(f"{len(unreadable)} of {len(folder.images)} images could not be read and are left out")
    bad = {path for path, _ in unreadable}
    images = [im for im in folder.images if im.path not in bad]
    check_class_counts(folder.classes, folder.counts(images), str(folder.root), after="readable ")
    split = split_train_validation(images, folder.classes, options.validation_fraction)
    reporter.note(f"{len(folder.classes)} classes, {len(images)} images: {len(split.train)} to train on, "
                  f"{len(split.validation)} to validate with (split by a hash of each file name)")
    for line in _balance_lines(split.balance(folder.classes)):
        reporter.note(line)
    if split.moved:
        reporter.note(f"  classes given one image on each side despite the hash split: {', '.join(split.moved)}")
    return split


def _class_weights(folder: ImageFolder, split: Split, options: TrainOptions,
                   reporter: TrainReporter) -> list[float] | None:
    weights = class_weights(folder.counts(split.train), options.class_weight)
    if weights is not None:
        reporter.note(f"class weights ({options.class_weight}): "
                      + ", ".join(f"{label} {w:.3g}" for label, w in zip(folder.classes, weights)))
    return weights


def _data_identity(folder: ImageFolder, split: Split) -> str:
    listing = {"classes": folder.classes,
               "train": [(im.name, im.label) for im in split.train],
               "validation": [(im.name, im.label) for im in split.validation]}
    return hashlib.sha256(json.dumps(listing).encode("utf-8", "surrogateescape")).hexdigest()


def _stack(vectors: dict[str, np.ndarray], images: Sequence[LabeledImage]) -> tuple[torch.Tensor, torch.Tensor]:
    if not images:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    x = torch.from_numpy(np.stack([vectors[im.path] for im in images])).float()
    return x, torch.tensor([im.label for im in images], dtype=torch.long)


def train(image_dir: str | os.PathLike, out: str | os.PathLike, *, model: str = "pnasnet5_large",
          weights: str | os.PathLike | None = "tf-slim", options: TrainOptions | None = None, overwrite: bool = False,
          reporter: TrainReporter | None = None, command: Sequence[str] | None = None, **settings) -> TrainResult:
    """Train a classifier for the classes in ``image_dir`` (one sub-folder each) on top of
    ``model`` with ``weights``, and write it to the model directory ``out``.

    ``model``: a variant (``pnasnet5_large``, ``pnasnet5_mobile``, ``*_feature_vector``), "auto"
    (configuration from ``weights``) or a model directory trained before. ``weights``: as
    ``create_model`` takes them (default the TF-Slim release, downloaded once); None = random.
    ``options`` / ``settings``: :class:`TrainOptions` or its fields as keywords (``mode="full"``,
    ``epochs=3``, ...). ``reporter``: progress and notes (default: :class:`ConsoleReporter` on
    stderr). ``overwrite``: replace a finished model or another run's checkpoint in ``out``.
    ``command``: the command line that started the run, for the model card (default: the
    equivalent ``pnasnet train`` command).

    Raises :class:`~pnasnet.training.dataset.DatasetError` for an unusable folder,
    :class:`~pnasnet.training.progress.TrainingInterrupted` after Ctrl-C (state saved; the same
    call resumes).
    """
    options = dataclasses.replace(options, **settings) if options is not None else TrainOptions(**settings)
    if options.tensorboard is not None:
        check_tensorboard_available()
    if options.bfloat16 and not str(options.device or "").startswith("cuda") and not torch.cuda.is_available():
        if not cpu_support().bf16_runs:  # refused before any work, as the inference commands refuse it
            raise ValueError(f"--bf16 needs a CPU with bfloat16 convolutions (AVX-512, AVX-NE-CONVERT or AMX on "
                             f"x86, BF16 on Arm); this CPU: {cpu_support().describe()}. Train without --bf16")
    reporter = reporter if reporter is not None else ConsoleReporter()
    out = Path(out)
    if out.resolve().is_relative_to(Path(image_dir).resolve()):
        raise ValueError(f"the model directory {out} must not be inside the image folder {image_dir} "
                         "(it would be taken for a class)")
    # [distributed] under torchrun (WORLD_SIZE > 1): full mode in every process, rank 0 writes
    dist = None
    if distributed.world_size_from_environment() > 1:
        if options.mode != "full":
            raise ValueError("under torchrun only --mode full runs in several processes; run head mode as one "
                             "process (its feature extraction can use --engine ray)")
        dist = distributed.from_environment(options.device)
        overwrite = overwrite and distributed.restart_count() == 0  # a restart resumes, never starts over
        if not dist.is_main:
            reporter.close()
            reporter = SilentReporter()
    if options.tensorboard is not None and (dist is None or dist.is_main):  # [distributed] rank 0 writes
        reporter = TensorBoardReporter(reporter, options.tensorboard)
    if not matplotlib_available():
        reporter.note(MISSING_MATPLOTLIB)
    if command is None:
        from ..api import is_model_dir

        command = equivalent_command(image_dir, out, model, weights, options, model_is_dir=is_model_dir(str(model)))
        command_info = {"argv": list(command), "equivalent": True}
    else:
        command_info = {"argv": list(command), "equivalent": False}
    created = not out.exists()
    started = time.perf_counter()
    finished = False
    try:
        with contextlib.ExitStack() as held:
            def claim_model_dir() -> None:
                held.enter_context(ModelDirLock(out))
                prepare_model_dir(out, overwrite=overwrite)

            if dist is None:
                claim_model_dir()
            else:  # [distributed] rank 0 holds the lock; the others wait for it to clear the way
                dist.on_main(claim_model_dir)
                for line in distributed.restart_notes():
                    reporter.note(line)
            folder = scan_image_folder(image_dir)
            if folder.ignored:
                reporter.note(f"{len(folder.ignored)} image(s) directly in {folder.root} belong to no class "
                              "and are ignored (put them in a class sub-folder)")
            device = _resolve_device(options.device) if dist is None else dist.device
            workers = options.workers if options.workers is not None else default_workers(device)
            if options.mode == "head":
                result = _train_head(folder, out, model, weights, options, device, workers, reporter, command_info)
            else:
                result = _train_full(folder, out, model, weights, options, device, workers, reporter, command_info,
                                     dist)
        finished = True
    finally:
        reporter.close()
        if (dist is None or dist.is_main) and created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # stopped before writing anything (e.g. an unusable image folder)
        if dist is not None:
            dist.shutdown(clean=finished)
    result.seconds["total"] = time.perf_counter() - started
    return result


# ------------------------------------------------------------------------------------------ head
def _train_head(folder: ImageFolder, out: Path, model_name: str, weights, options: TrainOptions,
                device: torch.device, workers: int, reporter: TrainReporter, command: dict) -> TrainResult:
    seconds: dict[str, float] = {}
    backbone = load_backbone(model_name, weights, bounded_activation=options.bounded_activation).to(device)
    size = model_image_size(backbone, options.image_size)
    base = describe_base(model_name, weights)
    reporter.note(f"features of {len(folder.images)} images ({backbone.config.name}, {size} px, "
                  f"{options.transform} transform; cached by file content)")
    tick = time.perf_counter()
    features = cached_features(backbone, [im.path for im in folder.images], cache_dir=options.cache_dir,
                               model_name=model_name, weights=base, transform=options.transform, image_size=size,
                               batch_size=options.inference_batch_size, workers=workers,
                               progress=reporter.features_progress())
    seconds["features"] = time.perf_counter() - tick
    reporter.note(f"{features.computed} feature vectors computed, {features.from_cache} from the cache "
                  f"({features.folder})")
    split = _readable_split(folder, features.failed, options, reporter)
    loss_weights = _class_weights(folder, split, options, reporter)
    train_x, train_y = _stack(features.vectors, split.train)
    val_x, val_y = _stack(features.vectors, split.validation)

    tick = time.perf_counter()
    with stop_on_interrupt() as stop:
        layer, history = train_head(train_x, train_y, val_x if len(val_y) else None, val_y if len(val_y) else None,
                                    len(folder.classes), options, reporter=reporter, stop=stop,
                                    class_weights=loss_weights)
    seconds["training"] = time.perf_counter() - tick

    classifier = build_classifier(backbone.cpu(), len(folder.classes), image_size=size,
                                  dropout_rate=options.dropout_rate)
    with torch.no_grad():
        classifier.final_layer.FC.weight.copy_(layer.weight)
        classifier.final_layer.FC.bias.copy_(layer.bias)
    on_val = len(val_y) > 0
    eval_x, eval_y = (val_x, val_y) if on_val else (train_x, train_y)
    loss, _, predicted = evaluate_head(layer, eval_x, eval_y, options.label_smoothing)
    evaluation = evaluation_report(eval_y.tolist(), predicted.tolist(), folder.classes,
                                   evaluated_on="validation" if on_val else "training", loss=loss)
    return _finish(out, classifier.eval(), folder, split, features.failed, options, model_name, base, size,
                   history, evaluation, seconds, reporter, command, loss_weights)


# ------------------------------------------------------------------------------------------ full
def _train_full(folder: ImageFolder, out: Path, model_name: str, weights, options: TrainOptions,
                device: torch.device, workers: int, reporter: TrainReporter, command: dict,
                dist: distributed.DistContext | None = None) -> TrainResult:
    seconds: dict[str, float] = {}
    tick = time.perf_counter()
    paths = [im.path for im in folder.images]
    unreadable = (find_unreadable(paths, workers=workers) if dist is None else  # [distributed] rank 0 decodes
                  dist.on_main(lambda: find_unreadable(paths, workers=workers)))
    seconds["checking images"] = time.perf_counter() - tick
    split = _readable_split(folder, unreadable, options, reporter)
    loss_weights = _class_weights(folder, split, options, reporter)
    base = describe_base(model_name, weights)
    identity = {"options": options.identity(), "model": str(model_name), "weights": base,
                "data": _data_identity(folder, split)}
    checkpoint_path = out / CHECKPOINT_FILE
    resume = None
    if checkpoint_path.exists():
        resume = load_checkpoint(checkpoint_path)
        check_identity(resume["identity"], identity, str(out))
        arch = resume["architecture"]
        config = PNASNetConfig(**json.loads(arch["config"]))
        model = PNASNet(config, num_classes=arch["num_classes"], aux_head=arch["aux_head"])
        size = config.image_size
        where = f"epoch {resume['epoch'] + 1} of {options.total_epochs}"
        where = f"{where}, after its step {resume['step']}" if resume["step"] else f"the start of {where}"
        reporter.note(f"resuming from {checkpoint_path}: {where}")
    else:
        backbone = load_backbone(model_name, weights, bounded_activation=options.bounded_activation)
        size = model_image_size(backbone, options.image_size)
        torch.manual_seed(derive_seed(options.seed, "init"))  # an aux head absent from the weights
        model = build_classifier(backbone, len(folder.classes), image_size=size, dropout_rate=options.dropout_rate,
                                 aux_head=options.aux_head, batch_norm_decay=options.batch_norm_decay,
                                 drop_path_keep_prob=options.drop_path_keep_prob)
        del backbone
    if options.bfloat16 and device.type == "cpu" and not cpu_support().bf16_native:
        reporter.note("bfloat16: this CPU has no native bfloat16 arithmetic; it is emulated and may be slower")
    frozen_bn = options.batch_norm_frozen
    reporter.note(f"fine-tuning {model.config.name} at {size} px on {device}: {options.total_epochs} epochs, batch "
                  f"{options.batch_size}" + (f" in {options.accumulation_steps} micro-batches" if
                                              options.accumulation_steps > 1 else "")
                  + (", batch norm frozen" if frozen_bn else f", batch norm decay {options.batch_norm_decay}")
                  + (f", first {options.freeze_cells} cells frozen" if options.freeze_cells else "")
                  + (", aux head" if options.aux_head else "")
                  + (f"; {dist.world_size} processes ({dist.backend}), {-(-options.batch_size // dist.world_size)} "
                     "images per process per step" + (", batch norm synchronised" if options.sync_batch_norm else "")
                     if dist is not None else ""))
    tick = time.perf_counter()
    with stop_on_interrupt() as stop:
        history = fine_tune(model, split.train, split.validation, options, image_size=size,
                            checkpoint_path=checkpoint_path, identity=identity, resume=resume, device=device,
                            workers=workers, reporter=reporter, stop=stop, dist=dist, class_weights=loss_weights)
    seconds["training"] = time.perf_counter() - tick
    if dist is not None:  # [distributed] rank 0 evaluates and writes MODEL_DIR; every rank gets the result
        return dist.on_main(lambda: _evaluate_and_write(out, model, folder, split, unreadable, options, model_name,
                                                        base, size, history, seconds, reporter, workers, resume,
                                                        checkpoint_path, command, loss_weights))
    return _evaluate_and_write(out, model, folder, split, unreadable, options, model_name, base, size, history,
                               seconds, reporter, workers, resume, checkpoint_path, command, loss_weights)


def _evaluate_and_write(out: Path, model: PNASNet, folder: ImageFolder, split: Split, unreadable, options: TrainOptions,
                        model_name: str, base: str, size: int, history: list[EpochRecord], seconds: dict[str, float],
                        reporter: TrainReporter, workers: int, resume, checkpoint_path: Path, command: dict,
                        loss_weights: list[float] | None) -> TrainResult:
    if options.keep == "best":
        best = best_epoch(history)
        if best is None:
            raise RuntimeError("internal error: keep 'best' without validation metrics")
        model.load_state_dict(load_best_weights(checkpoint_path.parent, best.epoch))
    on_val = bool(split.validation)
    loss, _, true, predicted, _ = evaluate_model(
        model, split.validation if on_val else split.train, image_size=size, transform=options.transform,
        batch_size=options.inference_batch_size, workers=workers, label_smoothing=options.label_smoothing)
    evaluation = evaluation_report(true, predicted, folder.classes,
                                   evaluated_on="validation" if on_val else "training", loss=loss)
    result = _finish(out, inference_copy(model), folder, split, unreadable, options, model_name, base, size,
                     history, evaluation, seconds, reporter, command, loss_weights)
    remove_checkpoint(out)
    result.resumed = str(checkpoint_path) if resume is not None else None
    return result


# ------------------------------------------------------------------------------------------ output
def _finish(out: Path, model: PNASNet, folder: ImageFolder, split: Split, unreadable, options: TrainOptions,
            model_name: str, base: str, size: int, history: list[EpochRecord], evaluation: dict,
            seconds: dict[str, float], reporter: TrainReporter, command: dict,
            loss_weights: list[float] | None) -> TrainResult:
    from .. import __version__

    labels = list(folder.classes)
    balance = split.balance(labels)
    metadata = {"variant": model.config.name, "base_model": str(model_name), "base_weights": base,
                "training_mode": options.mode, "labels": json.dumps(labels, ensure_ascii=False),
                "transform": options.transform, "image_size": str(size), "source": "pnasnet train"}
    classify = ["pnasnet", "classify", "--model", str(out)]
    if options.transform != "tf-slim":
        classify += ["--transform", options.transform]
    config = {
        "pnasnet_version": __version__,
        "mode": options.mode,
        "base_model": str(model_name),
        "base_weights": base,
        "architecture": dataclasses.asdict(model.config),
        "image_size": size,
        "transform": options.transform,
        "num_classes": len(labels),
        "labels": labels,
        "training": options.to_json_dict(),
        "class_weights": (dict(zip(labels, loss_weights)) if loss_weights is not None else None),
        "data": {"image_dir": str(folder.root), "images": len(split.train) + len(split.validation),
                 "train_images": len(split.train), "validation_images": len(split.validation),
                 "split": "SHA-1 of the file name inside its class folder (retrain.py rule, _nohash_ suffix "
                          f"ignored); validation fraction {options.validation_fraction}",
                 "class_balance": balance,
                 "unreadable": [{"path": p, "reason": r} for p, r in unreadable],
                 "ignored_outside_class_folders": folder.ignored},
        "use": {"python": f"pnasnet.create_model({str(out)!r})", "cli": " ".join(classify) + " IMAGES..."},
        "command": command,
    }
    kept = kept_epoch(history, options.keep)
    metrics = {"epochs": [r.to_dict() for r in history],
               "kept": {"keep": options.keep, "epoch": kept.epoch if kept else None, "epochs": len(history),
                        "chosen_by": ("the highest validation accuracy (ties: lower validation loss, earlier epoch)"
                                      if options.keep == "best" else "the last epoch")},
               "final": evaluation, "class_balance": balance,
               "seconds": {k: round(v, 3) for k, v in seconds.items()}}
    written = write_model_dir(out, model, labels, metadata=metadata, config=config, metrics=metrics, history=history,
                              title=f"{model.config.name} {options.mode} training on {folder.root.name}")
    accuracy = evaluation["accuracy"]
    if kept is not None and options.keep == "best":
        reporter.note(f"kept epoch {kept.epoch} of {len(history)} (best validation accuracy {kept.val_accuracy:.4f})")
    reporter.note(f"wrote {out} ({', '.join(p.name for p in written)})")
    if accuracy is not None:
        reporter.note(f"{evaluation['evaluated_on']} accuracy {accuracy:.4f} "
                      f"({evaluation['correct']} of {evaluation['images']} images)")
    return TrainResult(out, options.mode, labels, history, evaluation, balance, list(unreadable), seconds,
                       kept_epoch=kept.epoch if kept else None)
