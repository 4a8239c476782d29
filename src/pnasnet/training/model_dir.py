"""The model directory a training run writes, and what may already be in it.

``MODEL_DIR/``
    ``model.safetensors``  the classifier (no aux head) in this package's format; its metadata
                           records the architecture (with the training image size as the expected
                           size), the base model and weights, the labels, the transform
    ``labels.txt``         class names, one per line, in output order
    ``config.json``        how it was trained: settings, data, split, unreadable files, how to use it
    ``metrics.json``       per-epoch loss/accuracy, the epoch kept, the kept model's confusion matrix
                           and per-class precision/recall
    ``curves.png``         the learning curves (matplotlib; left out when it is not installed)
    ``README.md``          the model card (:mod:`pnasnet.training.model_card`)

``pnasnet.create_model(MODEL_DIR)`` and ``pnasnet classify --model MODEL_DIR`` load it. Each file is
written to a temporary name and renamed; ``model.safetensors`` goes last, so its presence means the
directory is complete. While training in full mode, ``training-checkpoint.pt`` lives beside them
(and with ``keep="best"`` the best epoch's weights, ``training-best-epoch-<E>.pt``).
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
from .checkpoint import CHECKPOINT_FILE, remove_best_weights
from .model_card import model_card
from .report import EpochRecord, draw_learning_curves

__all__ = ["CARD_FILE", "CONFIG_FILE", "CURVES_FILE", "METRICS_FILE", "OUTPUT_FILES", "prepare_model_dir",
           "write_model_dir"]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
CARD_FILE = "README.md"
OUTPUT_FILES = (MODEL_FILE, LABELS_FILE, CONFIG_FILE, METRICS_FILE, CURVES_FILE, CARD_FILE)


def prepare_model_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse to replace a finished model unless ``overwrite``; with it, remove the earlier
    outputs and checkpoint (other files in the folder are left alone)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if overwrite:
        for name in (*OUTPUT_FILES, CHECKPOINT_FILE):
            (out / name).unlink(missing_ok=True)
        if out.is_dir():
            remove_best_weights(out)
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
    """Write the files listed in the module docstring (``model`` must be the inference copy);
    returns those written (no ``curves.png`` without matplotlib, and a stale one is removed)."""
    if len(labels) != model.num_classes:
        raise RuntimeError(f"internal error: {len(labels)} labels for {model.num_classes} classes")
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(out / LABELS_FILE, ("\n".join(labels) + "\n").encode("utf-8"))
    write_bytes_atomically(out / CONFIG_FILE, _json_bytes(config))
    write_bytes_atomically(out / METRICS_FILE, _json_bytes(metrics))
    curves = draw_learning_curves(history, out / CURVES_FILE, title=title, kept=metrics.get("kept", {}).get("epoch"))
    if curves is None:
        (out / CURVES_FILE).unlink(missing_ok=True)  # an earlier run's would not match these numbers
    write_bytes_atomically(out / CARD_FILE, model_card(out, config, metrics, curves=curves is not None).encode("utf-8"))
    save_safetensors(model, out / MODEL_FILE, metadata)
    return [out / name for name in OUTPUT_FILES if name != CURVES_FILE or curves is not None]


def remove_checkpoint(out: Path) -> None:
    """The checkpoint first, then the best-epoch weights it refers to."""
    (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    remove_best_weights(out)
    fsync_dir(out)
