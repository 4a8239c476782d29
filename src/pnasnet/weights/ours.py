"""This package's own weights file: ``.safetensors`` (memory-mapped, no code on load) holding the
model's state dict under its own parameter names, with metadata saying what it is:

``format`` = "pnasnet", ``format_version``, ``variant`` (a ``create_model`` name), ``num_classes``,
``label_set`` ("imagenet-1001": 0 = background; "imagenet-1000"; or "custom"), ``config`` (the
architecture's configuration as JSON, so custom ones rebuild), ``source`` (what it
was converted from), ``source_sha256`` (checksum of the original), ``background_row``
("trained" / "untrained": added to a 1000-class source), ``pnasnet_version``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from torch import nn

from ..atomic_files import atomic_path

FORMAT_VERSION = "1"


def label_set_for(num_classes: int) -> str:
    return {1001: "imagenet-1001", 1000: "imagenet-1000", 0: "none"}.get(num_classes, "custom")


def save_safetensors(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write ``model``'s weights (BN step counters left out) atomically: a temporary file in the same
    folder, then a rename, so a crash never leaves a half-written file under ``path``."""
    from safetensors.torch import save_file

    from ..version import __version__

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    config = getattr(model, "config", None)
    info = {"format": "pnasnet", "format_version": FORMAT_VERSION, "pnasnet_version": __version__,
            "num_classes": str(getattr(model, "num_classes", "")),
            "label_set": label_set_for(int(getattr(model, "num_classes", -1)))}
    if config is not None:
        info["config"] = json.dumps(dataclasses.asdict(config), sort_keys=True)
    info.update({k: str(v) for k, v in metadata.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=info)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
