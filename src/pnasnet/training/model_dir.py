"""The model directory a training run writes, and what may already be in it.

``MODEL_DIR/``
    ``model.safetensors``  the classifier (no aux head) in this package's format; its metadata
                           records the architecture (with the training image size as the expected
                           size), the base model and weights, the labels, the transform
    ``labels.txt``         class names, one per line, in output order
    ``config.json``        how it was trained: settings, data, split, unreadable files, how to use it
    ``metrics.json``       per-epoch loss/accuracy, final confusion matrix, per-class precision/recall
    ``curves.png``         the learning curves

``pnasnet.create_model(MODEL_DIR)`` and ``pnasnet classify --model MODEL_DIR`` load it. Each file is
written to a temporary name and renamed; ``model.safetensors`` goes last, so its presence means the
directory is complete. While training in full mode, ``training-checkpoint.pt`` lives beside them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from ..api import LABELS_FILE, MODEL_FILE
from ..model import PNASNet
from ..atomic_files import fsync_dir, write_bytes_atomically
from ..weights.ours import save_safetensors
from .checkpoint import CHECKPOINT_FILE
from .report import EpochRecord, draw_learning_curves

__all__ = ["CONFIG_FILE", "CURVES_FILE", "METRICS_FILE", "OUTPUT_FILES", "prepare_model_dir", "write_model_dir"]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
OUTPUT_FILES = (MODEL_FILE, LABELS_FILE, CONFIG_FILE, METRICS_FILE, CURVES_FILE)


def prepare_model_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse to replace a finished model unless ``overwrite``; with it, remove the earlier
    outputs and checkpoint (other files in the folder are left alone)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if overwrite:
        for name in (*OUTPUT_FILES, CHECKPOINT_FILE):
            (out / name).unlink(missing_ok=True)
        return
    if (out / MODEL_FILE).exists() and not (out / CHECKPOINT_FILE).exists():
        raise ValueError(f"{out} already holds a trained model; choose another --out or pass --overwrite "
                         "(overwrite=True) to replace it")


_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")


def _json_bytes(data: dict) -> bytes:
    """Indented JSON with lists of numbers (confusion-matrix rows) kept on one line each."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    return (text + "\n").encode("utf-8")


def write_model_dir(out: Path, model: PNASNet, labels: Sequence[str], *, metadata: dict[str, str], config: dict,
                    metrics: dict, history: Sequence[EpochRecord], title: str = "") -> list[Path]:
    """Write the files listed in the module docstring (``model`` must be the inference copy)."""
    if len(labels) != model.num_classes:
        raise RuntimeError(f"internal error: {len(labels)} labels for {model.num_classes} classes")
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(out / LABELS_FILE, ("\n".join(labels) + "\n").encode("utf-8"))
    write_bytes_atomically(out / CONFIG_FILE, _json_bytes(config))
    write_bytes_atomically(out / METRICS_FILE, _json_bytes(metrics))
    draw_learning_curves(history, out / CURVES_FILE, title=title)
    save_safetensors(model, out / MODEL_FILE, metadata)
    return [out / name for name in OUTPUT_FILES]


def remove_checkpoint(out: Path) -> None:
    (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    fsync_dir(out)
