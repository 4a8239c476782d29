"""ONNX export of a PNASNet at a fixed image size, with a dynamic batch dimension.

TF "SAME" padding depends on the image size; the model computes it from the input's shape on every
call, so an export traces it as constants for the export size: the graph is exact at that size only
(the batch size stays free). The exported graph takes ``images`` ``[N, 3, S, S]`` float32 in [0, 1]
(the [-1, 1] rescaling is inside the graph) and returns ``features`` ``[N, F]`` and, unless the
model is a feature-vector model, ``logits`` ``[N, num_classes]``. Batch norms are folded first
(``fold_batch_norms``), so the graph has no BatchNormalization nodes.

Uses ``torch.onnx.export`` with the ``torch.export``-based exporter (``dynamo=True``, the default
since PyTorch 2.9), which needs the ``onnx`` and ``onnxscript`` packages (``pip install
"pnasnet[onnx]"``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..model.network import PNASNet
from .fold import fold_batch_norms

DEFAULT_OPSET = 18


class ExportWrapper(nn.Module):
    """``images -> (features, logits)`` (or ``features`` alone) with the input range check off
    (it reads the data, which a static graph cannot do; ``pnasnet.inference`` checks inputs before
    they reach the graph)."""

    def __init__(self, model: PNASNet):
        super().__init__()
        self.model = model
        self.with_logits = bool(model.num_classes)

    def forward(self, images: torch.Tensor):
        model = self.model
        pooled, _ = model._logits_and_aux(images)
        if self.with_logits:
            return pooled, model.final_layer(pooled)
        return pooled


def output_names(model: PNASNet) -> list[str]:
    return ["features", "logits"] if model.num_classes else ["features"]


def _require(module: str, extra: str = "onnx"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"the ONNX export needs the {module!r} package: pip install \"pnasnet[{extra}]\"") from error


def export_onnx(model: PNASNet, path: str | os.PathLike, *, image_size: int | None = None,
                opset: int = DEFAULT_OPSET, fold: bool = True) -> Path:
    """Write ``model`` as an ONNX file (weights inside it) for ``image_size`` x ``image_size`` images
    (default: the model's own size) and any batch size. Returns the path."""
    _require("onnx")
    _require("onnxscript")
    size = int(image_size or model.expected_image_size[0])
    if size < model.min_image_size:
        raise ValueError(f"image size {size} is below the {model.config.name} minimum of {model.min_image_size}")
    inference = fold_batch_norms(model, channels_last=False) if fold else model
    saved_check = inference.check_input_range
    inference.check_input_range = False
    wrapper = ExportWrapper(inference).eval()
    example = torch.rand(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (example,), None, input_names=["images"], output_names=output_names(model),
                dynamic_shapes={"images": {0: batch}}, opset_version=opset, dynamo=True,
                external_data=False, verbose=False)
        program.save(str(path), external_data=False)
    finally:
        inference.check_input_range = saved_check
    return path


def onnx_model_info(path: str | os.PathLike) -> dict:
    """Inputs/outputs of an exported file with their shapes (a dynamic dimension as its name)."""
    onnx = _require("onnx")
    proto = onnx.load(str(path), load_external_data=False)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {"inputs": {v.name: dims(v) for v in proto.graph.input},
            "outputs": {v.name: dims(v) for v in proto.graph.output},
            "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            "ops": sorted({n.op_type for n in proto.graph.node})}
