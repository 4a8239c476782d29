"""Weights: file-format readers and the mapping from each format's names to the model's; the sources
(mirrors, checksums), download (:mod:`.download`, :mod:`.transfer`) and cache (:mod:`.cache`).
It may import data, model and the top-level helpers; never api or anything above."""

from .loading import load_weights
from .tf_checkpoint import CheckpointError, TFCheckpoint, read_tf_checkpoint
from .tf_slim_names import (LoadReport, WeightsMismatchError, export_tf_slim_variables,
                            load_tf_slim_variables, tf_slim_variables)

__all__ = ["CheckpointError", "LoadReport", "TFCheckpoint", "WeightsMismatchError",
           "export_tf_slim_variables", "load_tf_slim_variables", "load_weights",
           "read_tf_checkpoint", "tf_slim_variables"]
