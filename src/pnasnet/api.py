"""``create_model``: one place that turns a variant name (and optionally weights) into a model."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .model import LARGE, MOBILE, PNASNet, PNASNetConfig
from .model.ops import DEFAULT_BN_DECAY


@dataclass(frozen=True)
class Variant:
    config: PNASNetConfig
    num_classes: int
    description: str


VARIANTS: dict[str, Variant] = {
    "pnasnet5_large": Variant(LARGE, 1001, "PNASNet-5 Large, 331 px, 1001 ImageNet logits (0 = background)"),
    "pnasnet5_large_feature_vector": Variant(LARGE, 0, "PNASNet-5 Large, 331 px, 4320-d feature vector, no final layer"),
    "pnasnet5_mobile": Variant(MOBILE, 1001, "PNASNet-5 Mobile, 224 px, 1001 ImageNet logits (0 = background)"),
    "pnasnet5_mobile_feature_vector": Variant(MOBILE, 0, "PNASNet-5 Mobile, 224 px, 1080-d feature vector, no final layer"),
}


def list_models() -> list[str]:
    """Names ``create_model`` accepts."""
    return sorted(VARIANTS)


def create_model(name: str = "pnasnet5_large", weights: str | os.PathLike | None = None, *,
                 num_classes: int | None = None, aux_head: bool = False,
                 batch_norm_decay: float = DEFAULT_BN_DECAY, drop_path_keep_prob: float | None = None,
                 dropout_keep_prob: float | None = None, prefer_moving_averages: bool = False) -> PNASNet:
    """Build a PNASNet-5 variant, in eval (inference) mode; call ``.train()`` to fine-tune.

    Args:
        name: one of ``list_models()``; ``*_feature_vector`` variants have no final layer.
        weights: None for random initialisation, or a TF-Slim checkpoint (prefix such as
            ``.../model.ckpt``, its ``.index`` file, or the directory holding it).
        num_classes: override the variant's number of classes (0 = feature vector).
        aux_head, batch_norm_decay, drop_path_keep_prob, dropout_keep_prob: see ``PNASNet``.
        prefer_moving_averages: load ``ExponentialMovingAverage`` shadows where the checkpoint has them.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    variant = VARIANTS[name]
    model = PNASNet(variant.config, num_classes=variant.num_classes if num_classes is None else num_classes,
                    aux_head=aux_head, batch_norm_decay=batch_norm_decay,
                    drop_path_keep_prob=drop_path_keep_prob, dropout_keep_prob=dropout_keep_prob)
    if weights is not None:
        from .weights import load_weights

        load_weights(model, weights, prefer_moving_averages=prefer_moving_averages)
    return model.eval()
