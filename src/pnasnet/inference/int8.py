"""int8 post-training quantization of the OpenVINO graph, calibrated on real images (NNCF).

Only an explicit option (``optimize(model, "openvino", "int8", calibration=images)``): int8 changes
the function by more than float rounding. NNCF's post-training quantization inserts fake-quantize
operations on the convolutions' inputs and weights (weights per output channel), with activation
ranges taken from the calibration images, then corrects each convolution's bias so that its mean
output matches float32 ("fast bias correction"). OpenVINO's CPU plugin then runs those convolutions
with int8 dot products (VNNI where the CPU has it; without VNNI the weights are quantized to 7 bits
so that 16-bit sums cannot saturate: :func:`overflow_fix`). Everything NNCF leaves unquantized
stays float32.

Calibrate on images like the ones the model will see (a few dozen suffice; more take longer:
statistics need one float32 pass per image): ranges from other kinds of images clip activations.
"""

from __future__ import annotations

import importlib.util

import torch

from .cpu import CpuSupport, cpu_support

__all__ = ["INT8_PACKAGES", "int8_unavailable", "overflow_fix", "quantize_openvino_model", "check_calibration"]

INT8_PACKAGES = ("nncf",)


def int8_unavailable() -> str | None:
    missing = [p for p in INT8_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        return f"precision 'int8' needs {', '.join(missing)}: pip install \"pnasnet[int8]\""
    return None


def check_calibration(calibration, image_size: int) -> torch.Tensor:
    """The calibration images as float32 [N, 3, S, S] in [0, 1], or a clear error."""
    if calibration is None:
        raise ValueError("precision 'int8' needs calibration images: calibration= a float tensor [N, 3, H, W] "
                         "in [0, 1] of images like the ones to be classified (a few dozen)")
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 4 or calibration.shape[1] != 3:
        got = tuple(calibration.shape) if isinstance(calibration, torch.Tensor) else type(calibration).__name__
        raise ValueError(f"calibration must be a float tensor [N, 3, H, W] of images in [0, 1], got {got}")
    if tuple(calibration.shape[-2:]) != (image_size, image_size):
        raise ValueError(f"calibration images are {calibration.shape[-2]}x{calibration.shape[-1]}; the int8 model "
                         f"is built for {image_size}x{image_size}")
    if not calibration.is_floating_point() or calibration.shape[0] < 1:
        raise ValueError("calibration must hold at least one float image")
    return calibration.detach().to("cpu", torch.float32).contiguous()


def overflow_fix(support: CpuSupport | None = None) -> str:
    """NNCF's overflow fix for this CPU class: ``"first_layer_only"`` (NNCF's default) where int8
    products accumulate in 32 bits (VNNI, AMX, Arm dot product), ``"enable"`` (every layer) elsewhere.

    Without VNNI, x86 int8 convolutions use ``vpmaddubsw``: it multiplies u8 activations by s8
    weights and adds each *pair* of products into a signed 16-bit lane, which saturates at 32767
    (two products of 255 x 127 reach 64770). NNCF's fix quantizes weights to 7 bits (and widens the
    scale to match), so a pair stays below 2^15. Measured on the fixtures without it on an AVX2-only
    Zen 3: centered feature cosine 0.64 against the float32 model; with it the AVX2 figure matches
    the VNNI one (see the README's precision table).
    """
    support = support or cpu_support()
    return "first_layer_only" if support.int8_accumulates_in_32_bits else "enable"


def quantize_openvino_model(graph, calibration: torch.Tensor, fix: str | None = None):
    """The int8 form of the OpenVINO model ``graph`` (``openvino.Model``), calibrated on
    ``calibration`` (as :func:`check_calibration` returns it), one image per statistics pass, with
    NNCF's overflow fix ``fix`` (default: what this CPU class needs, :func:`overflow_fix`)."""
    import logging

    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its progress bar stays: calibration takes a while
    samples = [calibration[i:i + 1].numpy() for i in range(calibration.shape[0])]
    # Activation ranges from histograms (minimising the quantization error) rather than the
    # default min/max: PNASNet's cell outputs are heavy-tailed (max/std 10-17), and min/max ranges
    # spend most of the 256 levels on a few outliers. Measured on the fixtures (photographs, 2-fold,
    # never calibrated on the compared ones): centered feature cosine mean 0.84 -> 0.96 (large_tiny),
    # 0.96 -> 0.98 (mobile_tiny). MIXED: symmetric weights, asymmetric activations.
    advanced = AdvancedQuantizationParameters(
        activations_range_estimator_params=RangeEstimatorParametersSet.HISTOGRAM,
        overflow_fix=OverflowFix(fix or overflow_fix()))
    return nncf.quantize(graph, nncf.Dataset(samples), subset_size=len(samples),
                         preset=nncf.QuantizationPreset.MIXED, fast_bias_correction=True,
                         advanced_parameters=advanced)
