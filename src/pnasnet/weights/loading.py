"""Load weights from any local form into a model, with the class-count rules in one place."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from torch import nn

from .formats import WeightsFormatError, WeightsSource, open_weights
from .tf_slim_names import LoadReport, load_tf_slim_variables

# The logit given to the background class when a 1000-class source (timm) is loaded into a
# 1001-class model: zero weights and this bias, so it never wins a softmax yet stays finite.
UNTRAINED_BACKGROUND_LOGIT = -1.0e4
_FC_WEIGHTS, _FC_BIASES = "final_layer/FC/weights", "final_layer/FC/biases"


class WithBackgroundRow:
    """A 1000-class source seen as 1001 classes: class 0 (background) added as an untrained row."""

    def __init__(self, source: WeightsSource):
        self.source = source

    def names(self) -> list[str]:
        return self.source.names()

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.source.shape(name)
        return shape[:-1] + (shape[-1] + 1,) if name in (_FC_WEIGHTS, _FC_BIASES) else shape

    def read(self, name: str) -> np.ndarray:
        value = self.source.read(name)
        if name == _FC_WEIGHTS:
            return np.concatenate([np.zeros_like(value[:, :1]), value], axis=1)
        if name == _FC_BIASES:
            return np.concatenate([np.full(1, UNTRAINED_BACKGROUND_LOGIT, value.dtype), value])
        return value


def check_variant(model: nn.Module, source: WeightsSource) -> None:
    config = source.guess_config()
    ours = getattr(model, "config", None)
    if config is not None and ours is not None and config.stem_multiplier != ours.stem_multiplier \
            and ours.name in ("pnasnet5_large", "pnasnet5_mobile"):
        raise WeightsFormatError(f"{source.path}: these are {config.name} weights, the model is {ours.name}")


def load_weights(model: nn.Module, path: str | os.PathLike, *, prefer_moving_averages: bool = False,
                 strict: bool = True) -> LoadReport:
    """Load any supported weights form (see ``formats``) into ``model``, checking every name and
    shape. A 1000-class source (timm) loads into a 1001-class model with an untrained background
    row (``UNTRAINED_BACKGROUND_LOGIT``) or into a 1000-class model as it is."""
    with open_weights(path) as source:
        return load_from_source(model, source, prefer_moving_averages=prefer_moving_averages, strict=strict)


def load_from_source(model: nn.Module, source: WeightsSource, *, prefer_moving_averages: bool = False,
                     strict: bool = True) -> LoadReport:
    check_variant(model, source)
    variables: Any = source
    background_added = getattr(model, "num_classes", None) == 1001 and source.num_classes == 1000
    if background_added:
        variables = WithBackgroundRow(source)
    report = load_tf_slim_variables(model, variables, prefer_moving_averages=prefer_moving_averages,
                                    strict=strict, source_name=str(source.path))
    report.background_row_added = background_added
    return report
