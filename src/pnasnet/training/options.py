"""``TrainOptions``: every setting of a training run, with TF-Hub ``make_image_classifier``'s
defaults where it had the setting, and the checks that turn a bad value into a clear error.

The fields that change the result (everything but the runtime settings at the end) make up the
run's *identity*: a checkpoint is resumed only by a run with the same identity.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..model.ops import DEFAULT_BN_DECAY

MODES = ("head", "full")
AUGMENTATIONS = ("tf-slim", "flip", "none")
LR_SCHEDULES = ("constant", "cosine")
FREEZE_BN_CHOICES = ("auto", "on", "off")
KEEP_CHOICES = ("last", "best")
CLASS_WEIGHTS = ("none", "balanced")

# make_image_classifier trained 5 epochs whatever the mode. With cached features an epoch of head
# training costs milliseconds, and 5 epochs of a few hundred images is only a few dozen steps of
# SGD, so head mode defaults to more.
DEFAULT_EPOCHS = {"head": 30, "full": 5}
# Below this many images per forward pass batch statistics are too noisy to fine-tune batch norm
# (make_image_classifier's help: "avoid < 8 when fine-tuning BN models"): "auto" freezes it.
MIN_BATCH_FOR_BN = 8
# field metadata of the settings that came after the first checkpoints (see TrainOptions.identity)
_ADDED_LATER = {"added_later": True}


@dataclass
class TrainOptions:
    """Settings of ``pnasnet.training.train`` (CLI flags of the same names, ``_`` as ``-``)."""

    mode: str = "head"                    # head: new final layer on cached features; full: everything
    epochs: int | None = None             # default DEFAULT_EPOCHS[mode]
    batch_size: int = 32                  # images per optimizer step
    learning_rate: float = 0.005          # SGD
    momentum: float = 0.9
    dropout_rate: float = 0.2             # before the new final layer
    l2_regularizer: float = 1e-4          # l2 * sum(W**2) of the new final layer's weights, as Keras
    label_smoothing: float = 0.1
    validation_fraction: float = 0.2      # by a hash of each file name (stable when files are added)
    image_size: int | None = None         # default: the model's (331 Large, 224 Mobile)
    transform: str = "tf-slim"            # evaluation transform: tf-slim (central crop) or resize
    seed: int = 0
    lr_schedule: str = "constant"         # constant (make_image_classifier) or cosine to zero
    # last: the weights after the last epoch (what make_image_classifier exports); best: those of the
    # epoch with the highest validation accuracy (ties: lower validation loss, then the earlier epoch)
    keep: str = field(default="last", metadata=_ADDED_LATER)
    # balanced: loss x n_samples / (n_classes * n_class), per class
    class_weight: str = field(default="none", metadata=_ADDED_LATER)
    # TF-Slim's use_bounded_activation (ReLU6, clipped branch outputs); None: what the weights record
    bounded_activation: bool | None = field(default=None, metadata=_ADDED_LATER)
    # full mode only
    augment: str = "tf-slim"              # tf-slim (random box crop, flip, colour), flip, none
    # make_image_classifier's other augmentations, applied after ``augment``; 0 = off (its default:
    # off unless --do_data_augmentation, then 40 / 0.2 / 0.2 / 0.2)
    # rotation: degrees, a random rotation in [-r, r]; shifts: < 1 a fraction of the side, >= 1 pixels,
    # a shift in [-w, w]; zoom: each axis scaled by a random factor in [1 - z, 1 + z]
    rotation_range: float = field(default=0.0, metadata=_ADDED_LATER)
    width_shift_range: float = field(default=0.0, metadata=_ADDED_LATER)
    height_shift_range: float = field(default=0.0, metadata=_ADDED_LATER)
    zoom_range: float = field(default=0.0, metadata=_ADDED_LATER)
    batch_norm_decay: float = DEFAULT_BN_DECAY
    freeze_batch_norm: str = "auto"       # auto: frozen when a forward pass sees < 8 images
    freeze_cells: int = 0                 # stem conv + the first N of model.cell_names
    aux_head: bool = False
    aux_loss_weight: float = 0.4          # TF-Slim's train_image_classifier
    layer_lr_decay: float = 1.0           # learning rate x decay**depth below the final layer
    drop_path_keep_prob: float | None = None  # default: the model's (0.6 Large, none Mobile), held
    accumulation_steps: int = 1           # micro-batches per optimizer step
    bfloat16: bool = False                # autocast the forward pass to bfloat16
    # [distributed] under torchrun: batch norm statistics over all processes' images (no effect alone)
    sync_batch_norm: bool = False
    # runtime: no effect on the result
    workers: int | None = field(default=None, metadata={"runtime": True})
    device: str | None = field(default=None, metadata={"runtime": True})
    inference_batch_size: int = field(default=32, metadata={"runtime": True})
    cache_dir: str | None = field(default=None, metadata={"runtime": True})
    tensorboard: str | None = field(default=None, metadata={"runtime": True})  # log folder for TensorBoard

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------ derived
    @property
    def total_epochs(self) -> int:
        return DEFAULT_EPOCHS[self.mode] if self.epochs is None else self.epochs

    @property
    def micro_batch_size(self) -> int:
        """Images per forward pass (what batch norm sees)."""
        return -(-self.batch_size // self.accumulation_steps)

    @property
    def batch_norm_frozen(self) -> bool:
        if self.freeze_batch_norm == "auto":
            return self.micro_batch_size < MIN_BATCH_FOR_BN
        return self.freeze_batch_norm == "on"

    def identity(self) -> dict:
        """The settings that change the result, for comparing a checkpoint with this run. Settings
        added after checkpoints were first written count only when not at their default, so that
        a run checkpointed before they existed still resumes."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("runtime")
                  and not (f.metadata.get("added_later") and getattr(self, f.name) == f.default)}
        return values | {"epochs": self.total_epochs}

    def to_json_dict(self) -> dict:
        return dataclasses.asdict(self) | {"epochs": self.total_epochs}

    @property
    def geometric_augmentation(self) -> bool:
        """Any of make_image_classifier's rotation, shifts or zoom asked for."""
        return any((self.rotation_range, self.width_shift_range, self.height_shift_range, self.zoom_range))

    # ------------------------------------------------------------------------------ checks
    def validate(self) -> None:
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(message)

        need(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        need(self.epochs is None or self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        need(self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}")
        need(self.learning_rate > 0, f"learning rate must be positive, got {self.learning_rate}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(0 <= self.dropout_rate < 1, f"dropout rate must be in [0, 1), got {self.dropout_rate}")
        need(self.l2_regularizer >= 0, f"l2 regularizer must be 0 or more, got {self.l2_regularizer}")
        need(0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        need(0 <= self.validation_fraction < 1,
             f"validation fraction must be in [0, 1), got {self.validation_fraction}")
        need(self.image_size is None or self.image_size >= 1, f"image size must be positive, got {self.image_size}")
        need(self.transform in ("tf-slim", "resize"), f"transform must be tf-slim or resize, got {self.transform!r}")
        need(self.lr_schedule in LR_SCHEDULES, f"lr schedule must be one of {', '.join(LR_SCHEDULES)}")
        need(self.keep in KEEP_CHOICES, f"keep must be one of {', '.join(KEEP_CHOICES)}, got {self.keep!r}")
        need(self.keep != "best" or self.validation_fraction > 0,
             "keep 'best' picks the epoch by validation accuracy: it needs validation images "
             "(a validation fraction above 0)")
        need(self.class_weight in CLASS_WEIGHTS,
             f"class weight must be one of {', '.join(CLASS_WEIGHTS)}, got {self.class_weight!r}")
        need(0 <= self.rotation_range <= 180, f"rotation range must be in [0, 180] degrees, got {self.rotation_range}")
        need(self.width_shift_range >= 0, f"width shift range must be 0 or more, got {self.width_shift_range}")
        need(self.height_shift_range >= 0, f"height shift range must be 0 or more, got {self.height_shift_range}")
        need(0 <= self.zoom_range < 1, f"zoom range must be in [0, 1), got {self.zoom_range}")
        need(self.augment in AUGMENTATIONS, f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        need(0 <= self.batch_norm_decay <= 1, f"batch norm decay must be in [0, 1], got {self.batch_norm_decay}")
        need(self.freeze_batch_norm in FREEZE_BN_CHOICES,
             f"freeze batch norm must be one of {', '.join(FREEZE_BN_CHOICES)}, got {self.freeze_batch_norm!r}")
        need(self.freeze_cells >= 0, f"freeze cells must be 0 or more, got {self.freeze_cells}")
        need(self.aux_loss_weight >= 0, f"aux loss weight must be 0 or more, got {self.aux_loss_weight}")
        need(0 < self.layer_lr_decay <= 1, f"layer lr decay must be in (0, 1], got {self.layer_lr_decay}")
        need(self.drop_path_keep_prob is None or 0 < self.drop_path_keep_prob <= 1,
             f"drop path keep prob must be in (0, 1], got {self.drop_path_keep_prob}")
        need(1 <= self.accumulation_steps <= self.batch_size,
             f"accumulation steps must be between 1 and the batch size, got {self.accumulation_steps}")
        need(self.inference_batch_size >= 1, "inference batch size must be at least 1")
        if self.mode == "head":
            full_only = ("augment", "rotation_range", "width_shift_range", "height_shift_range", "zoom_range",
                         "batch_norm_decay", "freeze_batch_norm", "freeze_cells", "aux_head",
                         "layer_lr_decay", "drop_path_keep_prob", "accumulation_steps", "bfloat16",
                         "sync_batch_norm")
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            unused = [name for name in full_only if getattr(self, name) != defaults[name]]
            need(not unused, f"{', '.join(unused)}: only for mode 'full' (head mode trains the final layer "
                             "on cached features)")
