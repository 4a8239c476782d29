"""Fast inference: the inference form of the model and back ends behind one option.

    import pnasnet
    from pnasnet.inference import for_inference, optimize

    model = pnasnet.create_model("pnasnet5_large", weights="tf-slim")
    fast = optimize(model)                                   # eager, float32: exact, ~2x plain
    runnable = for_inference(model, "auto", image_size=331)  # what the commands run: OpenVINO float32 if
                                                             # installed (x86), else eager; plain on a GPU
    fast = optimize(model, precision="bfloat16")             # reduced precision, explicit
    fast = optimize(model, backend="openvino", image_size=331)
    fast = optimize(model, "openvino", "int8", image_size=331, calibration=images)  # explicit
    logits = fast.classify(images)                           # as model.classify
    feats = fast.features(images)                            # as model.features

``fold_batch_norms(model)`` is the inference form itself (a ``PNASNet``, batch norms folded into the
convolutions, channels-last); ``export_onnx`` writes the ONNX graph. Optional packages (ONNX Runtime,
OpenVINO, onnx/onnxscript) are imported only by the back ends that need them.

Layer: the inference form and back ends (and ONNX export). They may import api, weights, data,
model; nothing here imports tasks, bench or anything above.
"""

from .backends import (BACKEND_CHOICES, BACKENDS, PRECISIONS, InferenceModel, PrecisionUnavailableError,
                       auto_backend, auto_choice, available_backends, backend_of, backend_unavailable,
                       check_backend_choice, cpu_has_bf16, for_inference, keep_freed_memory, optimize,
                       precision_unavailable)
from .cpu import CpuSupport, cpu_support
from .fold import fold_batch_norms, fold_conv_bn, to_channels_last


def export_onnx(*args, **kwargs):
    """See ``pnasnet.inference.onnx_export.export_onnx``."""
    from .onnx_export import export_onnx as _export_onnx

    return _export_onnx(*args, **kwargs)


__all__ = ["BACKEND_CHOICES", "BACKENDS", "PRECISIONS", "CpuSupport", "InferenceModel", "PrecisionUnavailableError",
           "auto_backend", "auto_choice", "available_backends", "backend_of", "backend_unavailable", "check_backend_choice", "cpu_has_bf16",
           "cpu_support", "export_onnx", "fold_batch_norms", "fold_conv_bn", "for_inference", "keep_freed_memory",
           "optimize", "precision_unavailable", "to_channels_last"]
