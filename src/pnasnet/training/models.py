"""The networks of a training run: the pretrained backbone, the classifier built on it (a new
final layer, optionally an aux head), and the inference copy that goes into the model directory."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from ..api import MODEL_FILE, VARIANTS, create_model
from ..model import PNASNet

__all__ = ["build_classifier", "describe_base", "inference_copy", "load_backbone"]

_NEW_HEAD_PREFIXES = ("final_layer.FC.", "aux_")


def load_backbone(model: str, weights: str | os.PathLike | None, *, progress: bool = True,
                  bounded_activation: bool | None = None) -> PNASNet:
    """The feature-vector network to train on: ``model`` is a variant, "auto" (configuration from
    ``weights``) or a model directory (a classifier trained before: its final layer is dropped).
    ``bounded_activation``: TF-Slim's ReLU6 form (None: what the weights record, else off)."""
    if model not in VARIANTS and model != "auto" and Path(model).expanduser().is_dir():
        if weights is None:
            weights = Path(model).expanduser() / MODEL_FILE
        model = "auto"
    if model == "auto" and weights is None:
        raise ValueError("model 'auto' takes its configuration from the weights: pass --weights")
    return create_model(model, weights=weights, num_classes=0, progress=progress,
                        bounded_activation=bounded_activation)


def describe_base(model: str, weights: str | os.PathLike | None) -> str:
    if weights is None:
        return "random initialisation" if model in VARIANTS or model == "auto" else str(model)
    return str(weights)


def build_classifier(backbone: PNASNet, num_classes: int, *, image_size: int, dropout_rate: float,
                     aux_head: bool = False, batch_norm_decay: float | None = None,
                     drop_path_keep_prob: float | None = None) -> PNASNet:
    """``backbone``'s weights under a new, zero-initialised final layer of ``num_classes`` (and a
    freshly initialised aux head if asked for). The configuration records ``image_size`` as the
    model's expected size (what ``pnasnet classify`` then uses by default) and the dropout."""
    config = replace(backbone.config, image_size=image_size)
    options = {} if batch_norm_decay is None else {"batch_norm_decay": batch_norm_decay}
    model = PNASNet(config, num_classes=num_classes, aux_head=aux_head, drop_path_keep_prob=drop_path_keep_prob,
                    dropout_keep_prob=1.0 - dropout_rate, **options)
    missing, unexpected = model.load_state_dict(backbone.state_dict(), strict=False)
    new = [k for k in missing if not k.startswith(_NEW_HEAD_PREFIXES)]
    if new or unexpected:
        raise RuntimeError(f"internal error: backbone does not fit the classifier (missing {new}, "
                           f"unexpected {unexpected})")
    with torch.no_grad():
        # A zero layer starts at the uniform prediction (loss log(num_classes)) and needs no seed.
        model.final_layer.FC.weight.zero_()
        model.final_layer.FC.bias.zero_()
    return model


def inference_copy(model: PNASNet) -> PNASNet:
    """``model`` without its aux head (used only in training), on the CPU, in eval mode."""
    copy = PNASNet(model.config, num_classes=model.num_classes)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("aux_")}
    copy.load_state_dict(state, strict=True)
    return copy.eval()
