"""Command line: ``pnasnet train IMAGE_DIR --out MODEL_DIR`` (argument parsing and printing only;
the work is done by :func:`pnasnet.training.train`).

Exit status: 0 trained and written; 1 written, but the validation accuracy is below
``--assert-accuracy-at-least``; 2 usage or data errors (bad options, an unusable image folder, a
model directory holding another run); 130 interrupted (the same command resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

EXIT_OK, EXIT_BELOW_ACCURACY, EXIT_INTERRUPTED = 0, 1, 130


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .options import choose_weights, download_advice
    from ..training import ConsoleReporter, TrainingInterrupted, TrainOptions, train

    # without --weights: the variant's TF-Slim release (a model directory: its own weights);
    # downloaded inside train() before any image is decoded (offline: fails there, in seconds)
    choice = choose_weights(args.model, args.weights, seed=args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.assert_accuracy_at_least is not None and args.validation_fraction == 0:
        raise ValueError("--assert-accuracy-at-least needs validation images (--validation-fraction > 0)")
    # every TrainOptions field has the flag of its name (--bf16 stores bfloat16); aux_loss_weight has none
    options = TrainOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)
                              if hasattr(args, f.name)})
    try:
        with download_advice():
            result = train(args.image_dir, args.out, model=args.model, weights=choice.weights, options=options,
                           overwrite=args.overwrite, reporter=ConsoleReporter(show_bar=not args.quiet),
                           command=getattr(args, "invoked_as", None))  # the card shows the command as typed
    except TrainingInterrupted as stopped:
        print(f"pnasnet: interrupted: {stopped}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("pnasnet: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    classify = f"pnasnet classify --model {args.out}" + (
        f" --transform {args.transform}" if args.transform != "tf-slim" else "")
    main_process = os.environ.get("RANK", "0") == "0"  # [distributed] under torchrun, rank 0 alone prints
    if main_process:
        print(f"pnasnet: classify images with: {classify} IMAGES...", file=sys.stderr)
    threshold = args.assert_accuracy_at_least
    if threshold is not None:
        accuracy = result.val_accuracy
        if accuracy is None or accuracy < threshold:
            if main_process:
                print(f"pnasnet: validation accuracy {accuracy} is below the required {threshold}", file=sys.stderr)
            return EXIT_BELOW_ACCURACY
    return EXIT_OK


def add_train_commands(sub: argparse._SubParsersAction) -> None:
    """Register this group's subcommands on the top-level parser."""
    from ..training.options import (AUGMENTATIONS, CLASS_WEIGHTS, DEFAULT_EPOCHS, FREEZE_BN_CHOICES, KEEP_CHOICES,
                                    LR_SCHEDULES, MODES, TrainOptions)
    from .options import add_bounded_activation_option

    d = TrainOptions()
    p = sub.add_parser(
        "train", help="train a classifier on your own images (new final layer, or full fine-tuning)",
        description="Train a classifier for the classes in IMAGE_DIR (one sub-folder of images per class, "
                    "the folder names are the labels) and write MODEL_DIR: model.safetensors, labels.txt, "
                    "config.json, metrics.json, curves.png (with matplotlib: pip install 'pnasnet[train]') and "
                    "README.md (the model card). `pnasnet classify --model MODEL_DIR` uses it. "
                    "Defaults follow TF-Hub's make_image_classifier.")
    p.add_argument("image_dir", metavar="IMAGE_DIR", help="folder with one sub-folder of images per class")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    p.add_argument("--model", default="pnasnet5_large",
                   help="variant to start from (see `pnasnet models`; default %(default)s), 'auto' (configuration "
                        "from --weights) or a model directory trained before")
    p.add_argument("--weights", help="weights to start from: a known source or a local file (default: the "
                                     "variant's published TF-Slim weights, downloaded once; a model directory's own); "
                                     "'none' = random initialisation")
    p.add_argument("--mode", choices=MODES, default=d.mode,
                   help="head: train a new final layer on cached feature vectors (fast, default); "
                        "full: fine-tune the whole network")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int,
                   help=f"passes over the training images (default {DEFAULT_EPOCHS['head']} head, "
                        f"{DEFAULT_EPOCHS['full']} full)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step (default %(default)s)")
    g.add_argument("--learning-rate", type=float, default=d.learning_rate, help="SGD (default %(default)s)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="(default %(default)s)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="(default %(default)s)")
    g.add_argument("--dropout-rate", type=float, default=d.dropout_rate,
                   help="dropout before the final layer (default %(default)s)")
    g.add_argument("--l2-regularizer", type=float, default=d.l2_regularizer,
                   help="L2 penalty on the final layer's weights (default %(default)s)")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="(default %(default)s)")
    g.add_argument("--validation-fraction", type=float, default=d.validation_fraction,
                   help="share of each class held out, chosen by a hash of the file name (default %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="(default %(default)s)")
    g.add_argument("--image-size", type=int, help="side of the model input (default: the model's, 331 / 224)")
    g.add_argument("--transform", choices=["tf-slim", "resize"], default=d.transform,
                   help="evaluation preprocessing, also used for head-mode features (default %(default)s)")
    g.add_argument("--keep", choices=KEEP_CHOICES, default=d.keep,
                   help="weights to write: after the last epoch (default, as make_image_classifier), or of the "
                        "epoch with the best validation accuracy (needs validation images)")
    add_bounded_activation_option(g)
    g.add_argument("--class-weight", choices=CLASS_WEIGHTS, default=d.class_weight,
                   help="balanced: weigh each image's loss by n_images / (n_classes * n_class) of its class, for "
                        "imbalanced folders (default %(default)s)")
    g.add_argument("--assert-accuracy-at-least", type=float, metavar="X",
                   help="exit with status 1 if the final validation accuracy is below X (0..1)")
    f = p.add_argument_group("full fine-tuning (--mode full)")
    f.add_argument("--augment", choices=AUGMENTATIONS, default=d.augment,
                   help="training augmentation: tf-slim = random box crop, flip, colour (default); flip; none")
    f.add_argument("--rotation-range", type=float, default=d.rotation_range, metavar="DEGREES",
                   help="random rotation in [-DEGREES, DEGREES] after --augment (make_image_classifier's; default "
                        "%(default)s = off)")
    f.add_argument("--width-shift-range", type=float, default=d.width_shift_range, metavar="W",
                   help="random horizontal shift in [-W, W]: below 1 a fraction of the width, else pixels "
                        "(default %(default)s = off)")
    f.add_argument("--height-shift-range", type=float, default=d.height_shift_range, metavar="H",
                   help="the same vertically (default %(default)s = off)")
    f.add_argument("--zoom-range", type=float, default=d.zoom_range, metavar="Z",
                   help="each axis scaled by a random factor in [1 - Z, 1 + Z] (default %(default)s = off)")
    f.add_argument("--batch-norm-decay", type=float, default=d.batch_norm_decay,
                   help="moving-average decay of batch norm (default %(default)s, as TF-Hub v3)")
    f.add_argument("--freeze-batch-norm", choices=FREEZE_BN_CHOICES, default=d.freeze_batch_norm,
                   help="keep batch norm's moving statistics (auto: when a forward pass has < 8 images)")
    f.add_argument("--freeze-cells", type=int, default=d.freeze_cells, metavar="N",
                   help="do not train the stem and the first N cells (cell_stem_0, cell_stem_1, cell_0, ...)")
    f.add_argument("--aux-head", action="store_true", help="train with TF-Slim's aux head (loss weight 0.4)")
    f.add_argument("--layer-lr-decay", type=float, default=d.layer_lr_decay,
                   help="learning rate x this per layer below the final layer (default %(default)s)")
    f.add_argument("--drop-path-keep-prob", type=float,
                   help="final drop-path keep probability (default the model's: 0.6 Large, 1.0 Mobile)")
    f.add_argument("--accumulation-steps", type=int, default=d.accumulation_steps,
                   help="split each batch into this many micro-batches (default %(default)s)")
    f.add_argument("--bf16", dest="bfloat16", action="store_true", help="bfloat16 autocast of the forward pass")
    f.add_argument("--sync-batch-norm", action="store_true",
                   help="under torchrun: batch norm statistics over the images of all processes, not each "
                        "process's share (use when the per-process batch is small)")
    r = p.add_argument_group("running")
    r.add_argument("--overwrite", action="store_true",
                   help="replace a trained model or another run's checkpoint in MODEL_DIR")
    r.add_argument("--workers", type=int, help="image decoding processes (default: 2 on a CPU)")
    r.add_argument("--threads", type=int, help="CPU threads for the model (default: PyTorch's)")
    r.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    r.add_argument("--inference-batch-size", type=int, default=d.inference_batch_size,
                   help="images per batch for features and validation (default %(default)s)")
    r.add_argument("--cache-dir", help="feature cache of head mode (default: <pnasnet cache>/train-features)")
    r.add_argument("--tensorboard", metavar="DIR",
                   help="write TensorBoard scalars to DIR (train/, validation/, train_steps/; needs "
                        "pip install 'pnasnet[train]'); view with: tensorboard --logdir DIR")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)
