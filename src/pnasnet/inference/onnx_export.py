"""ONNX export of a PNASNet with a dynamic batch dimension, at a fixed or a dynamic image size.

TF "SAME" padding depends on the image size; the model computes it from the input's shape on every
call, so a fixed-size export traces it as constants for the export size: the graph is exact at that
size only (the batch size stays free). A dynamic-size export (``dynamic_size=True``) first gives the
padding modules a form without Python branches (:func:`graph_same_padding`), so the pad amounts
become graph operations on the input's shape (``Shape`` -> ``Div``/``Mul``/``Sub`` -> ``Pad``) and
the graph is exact at every size from :func:`dynamic_min_size` up. The exported graph takes
``images`` ``[N, 3, H, W]`` float32 in [0, 1] (the [-1, 1] rescaling is inside the graph) and returns
``features`` ``[N, F]`` and, unless the model is a feature-vector model, ``logits``
``[N, num_classes]``. Batch norms are folded first (``fold_batch_norms``), so the graph has no
BatchNormalization nodes.

Uses ``torch.onnx.export`` with the ``torch.export``-based exporter (``dynamo=True``, the default
since PyTorch 2.9), which needs the ``onnx`` and ``onnxscript`` packages (``pip install
"pnasnet[onnx]"``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..model.network import PNASNet
from ..model.ops import Conv2dSame, MaxPool2dSame
from .fold import fold_batch_norms

DEFAULT_OPSET = 18
MAX_DYNAMIC_SIZE = 4096  # largest side (and batch) a dynamic export states


def _symbolic_same_pads(size, kernel: int, stride: int):
    """TF "SAME" (before, after) padding of one dimension as arithmetic only, so that a symbolic
    ``size`` (torch.export) stays symbolic: no ``max`` and no branch. Valid for kernel >= stride,
    where the total padding is never negative (every SAME layer of PNASNet-5). Stride 1 with an odd
    kernel pads (k-1)/2 on both sides at any size (constants); other strides compute it."""
    if stride == 1 and kernel % 2 == 1:
        return (kernel - 1) // 2, (kernel - 1) // 2
    total = ((size + stride - 1) // stride - 1) * stride + kernel - size
    before = total // 2
    return before, total - before


def _graph_conv_forward(self: Conv2dSame, x: torch.Tensor) -> torch.Tensor:
    top, bottom = _symbolic_same_pads(x.shape[-2], self.kernel_size[0], self.stride[0])
    left, right = _symbolic_same_pads(x.shape[-1], self.kernel_size[1], self.stride[1])
    if self.stride == (1, 1) and self.kernel_size[0] % 2 == 1 and self.kernel_size[1] % 2 == 1:
        return F.conv2d(x, self.weight, self.bias, 1, (top, left), self.dilation, self.groups)  # constant pads
    return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride, 0, self.dilation,
                    self.groups)


def _graph_pool_forward(self: MaxPool2dSame, x: torch.Tensor) -> torch.Tensor:
    k, s = self.kernel_size, self.stride
    top, bottom = _symbolic_same_pads(x.shape[-2], k, s)
    left, right = _symbolic_same_pads(x.shape[-1], k, s)
    if s == 1 and k % 2 == 1:
        return F.max_pool2d(x, k, 1, top)  # PyTorch's implicit padding is -inf, as TF's
    return F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), k, s, 0)


def graph_same_padding(module: nn.Module) -> nn.Module:
    """Give every TF-SAME convolution and max pool in ``module`` (in place: use it on a copy) a
    forward that pads explicitly by amounts computed from the input's shape without branches, so
    that ``torch.export`` with a dynamic height and width keeps them as graph operations instead of
    specialising them to one size. The function is the same (explicit zero / -inf padding, then an
    unpadded convolution / pool)."""
    for m in module.modules():
        if isinstance(m, Conv2dSame) and all(k >= s for k, s in zip(m.kernel_size, m.stride)):
            m.forward = types.MethodType(_graph_conv_forward, m)
        elif isinstance(m, MaxPool2dSame) and m.kernel_size >= m.stride:
            m.forward = types.MethodType(_graph_pool_forward, m)
    return module


def dynamic_min_size(model: PNASNet) -> int:
    """Smallest side of a dynamic-size export: the model's minimum, raised until the last cell's
    map is at least 2x2 (``torch.export`` specialises 1x1 maps, so a graph valid for every size
    starts there: 35 px for PNASNet-5)."""
    n = model.min_image_size
    while True:
        side = (n - 3) // 2 + 1  # conv0: 3x3, stride 2, VALID
        for _ in range(2 + len(model.config.reduction_indices())):  # stem cells and reduction cells
            side = -(-side // 2)
        if side >= 2:
            return n
        n += 1


def dynamic_shapes(model: PNASNet, dynamic_size: bool) -> dict:
    """``dynamic_shapes`` for ``torch.export`` of ``images``: the batch, and height / width when asked."""
    dims = {0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_SIZE)}
    if dynamic_size:
        low = dynamic_min_size(model)
        dims[2] = torch.export.Dim("height", min=low, max=MAX_DYNAMIC_SIZE)
        dims[3] = torch.export.Dim("width", min=low, max=MAX_DYNAMIC_SIZE)
    return {"images": dims}


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


def export_module(model: PNASNet, dynamic_size: bool = False) -> ExportWrapper:
    """The folded copy of ``model`` as ``images -> (features[, logits])`` with its input checks off,
    ready to be traced (``torch.onnx.export``, ``torch.export``); with ``dynamic_size`` its TF SAME
    pads are computed from the input's shape (:func:`graph_same_padding`)."""
    inference = fold_batch_norms(model, channels_last=False)
    if dynamic_size:
        graph_same_padding(inference)
    inference.check_input_range = False
    return ExportWrapper(inference).eval()


@contextlib.contextmanager
def _quiet_exporter_log():
    """Silence the exporter's own log lines below ERROR (e.g. "torchvision is not installed. Skipping
    torchvision::nms", four lines on every export without torchvision): they are not about PNASNet."""
    logger = logging.getLogger("torch.onnx")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def export_onnx(model: PNASNet, path: str | os.PathLike, *, image_size: int | None = None,
                opset: int = DEFAULT_OPSET, dynamic_size: bool = False) -> Path:
    """Write ``model`` (its folded copy; ``model`` is left unchanged) as an ONNX file (weights
    inside it) for ``image_size`` x ``image_size`` images (default: the model's own size) and any
    batch size; with ``dynamic_size`` for any height and width from :func:`dynamic_min_size` up
    (``image_size`` is then only the traced example). Returns the path."""
    _require("onnx")
    _require("onnxscript")
    size = int(image_size or model.expected_image_size[0])
    if size < model.min_image_size:
        raise ValueError(f"image size {size} is below the {model.config.name} minimum of {model.min_image_size}")
    if dynamic_size:
        size = max(size, dynamic_min_size(model))
    wrapper = export_module(model, dynamic_size)
    example = torch.rand(2, 3, size, size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad(), _quiet_exporter_log():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (example,), None, input_names=["images"], output_names=output_names(model),
            dynamic_shapes=dynamic_shapes(model, dynamic_size), opset_version=opset, dynamo=True,
            external_data=False, verbose=False)
    program.save(str(path), external_data=False)
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
