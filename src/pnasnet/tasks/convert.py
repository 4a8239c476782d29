"""``pnasnet weights convert`` and ``inspect``: any supported form in, this package's form out (a
workflow over the variant registry of :mod:`pnasnet.api` and the readers and writer of :mod:`pnasnet.weights`)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from ..api import VARIANTS, resolve_weights
from ..model import PNASNet, PNASNetConfig
from ..weights.formats import open_weights
from ..weights.loading import load_from_source
from ..weights.ours import save_safetensors
from ..weights.tf_slim_names import load_tf_slim_variables


def source_sha256(path: Path) -> str:
    """SHA-256 of a file; for a folder or checkpoint prefix, of the list of its files' digests."""
    from ..weights.download import sha256_file

    if path.is_file():
        return sha256_file(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else \
        sorted(path.parent.glob(path.name + ".*"))
    listing = "".join(f"{p.relative_to(path if path.is_dir() else path.parent).as_posix()}\t{sha256_file(p)}\n"
                      for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def convert_weights(weights: str | os.PathLike, out: str | os.PathLike, *, model: str | None = None,
                    num_classes: int | None = None, config: PNASNetConfig | None = None,
                    bounded_activation: bool | None = None) -> dict[str, str]:
    """Load ``weights`` (a registry name or any local form) with full checking and write them as
    this package's ``.safetensors`` with metadata. Returns the metadata written. ``model`` names
    the variant (told from the weights by default); ``config`` checks against a configuration of
    your own instead (a reduced one, say). ``bounded_activation``: whether the weights were trained
    with TF-Slim's ``use_bounded_activation`` (ReLU6). A TF checkpoint cannot say (it is a graph
    option, not a variable), so say it here for such weights; it is recorded in the written file,
    and every later load builds the bounded network from it. None: what the source records (off
    for TF files)."""
    path = resolve_weights(model or "pnasnet5_large", weights)
    with open_weights(path) as source:
        if config is None and model:
            name, config, default_classes = model, VARIANTS[model].config, VARIANTS[model].num_classes
        else:
            config = config or source.infer_config()
            default_classes = source.num_classes or 0
            known = config.name in VARIANTS  # Large or Mobile: name the variant, classifier or not
            name = config.name + ("" if default_classes or not known else "_feature_vector")
            default_classes = 1001 if known and default_classes else default_classes
        if bounded_activation is not None:
            config = dataclasses.replace(config, use_bounded_activation=bool(bounded_activation))
        if num_classes is None:
            num_classes = 0 if not default_classes else (source.num_classes or 0)
            if num_classes == 1000:
                num_classes = 1001  # keep the 1001-logit contract; background row added untrained
        network = PNASNet(config, num_classes=num_classes)
        report = load_from_source(network, source)
        metadata = {"variant": name, "source": str(weights), "source_kind": source.kind,
                    "source_sha256": source_sha256(path),
                    "background_row": "untrained" if report.background_row_added else
                    ("trained" if num_classes == 1001 else "none")}
    save_safetensors(network, out, metadata)
    return metadata


def inspect_weights(weights: str | os.PathLike, *, model: str | None = None) -> dict[str, Any]:
    """What a weights source holds and what it lacks for each variant (names and shapes only)."""
    path = resolve_weights(model or "pnasnet5_large", weights)
    with open_weights(path) as source:
        names = source.names()
        info: dict[str, Any] = {
            "path": str(path), "kind": source.kind, "variables": len(names),
            "values": int(sum(int(torch.Size(source.shape(n)).numel()) for n in names)),
            "num_classes": source.num_classes, "metadata": source.metadata,
            "variables_list": [(n, list(source.shape(n))) for n in sorted(names)], "fits": {}}
        try:
            inferred = source.infer_config()
            info["configuration"] = dataclasses.asdict(inferred)
        except ValueError as error:
            inferred, info["configuration"] = None, str(error)
        candidates = {name: (VARIANTS[name].config, VARIANTS[name].num_classes)
                      for name in ([model] if model else VARIANTS)}
        if inferred is not None and inferred.name not in VARIANTS and not model:
            candidates[f"its own configuration ({inferred.name})"] = (inferred, source.num_classes or 0)
        for name, (config, default_classes) in candidates.items():
            with torch.device("meta"):
                classes = default_classes and (source.num_classes or default_classes)
                network = PNASNet(config, num_classes=classes)
            report = load_tf_slim_variables(network, source, strict=False, check_only=True,
                                            source_name=str(path))
            info["fits"][name] = {"ok": report.ok, "missing": report.missing,
                                  "unexpected": report.unexpected, "wrong_shape": report.mismatched,
                                  "ignored": report.ignored}
    return info
