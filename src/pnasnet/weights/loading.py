"""Load weights from a file or folder into a model, whatever form they come in."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .tf_checkpoint import TFCheckpoint
from .tf_slim_names import LoadReport, load_tf_slim_variables


def load_weights(model: nn.Module, path: str | os.PathLike, *, prefer_moving_averages: bool = False,
                 strict: bool = True) -> LoadReport:
    """Load a TF-Slim checkpoint (prefix, ``.index`` file or folder) into ``model``."""
    path = Path(path)
    with TFCheckpoint(path) as checkpoint:
        return load_tf_slim_variables(model, checkpoint, prefer_moving_averages=prefer_moving_averages,
                                      strict=strict, source_name=str(path))
