"""What the machine can do and what the model asks of it: the CPU (model, ISA, the class the back ends
act on), the float32 / bfloat16 / int8 matrix-product and 1x1-convolution ceilings, and the model's
GFLOP per image. The last two run in a worker process (:mod:`.worker`).
"""

from __future__ import annotations

import os
import platform
import time


def cpu_info() -> dict:
    from ..inference.cpu import cpu_flags, cpu_model_name, cpu_support

    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    if cpu_model_name():
        info["model"] = cpu_model_name()
    info["isa"] = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx")) or f in ("avx2", "fma", "avx_vnni"))
    info["cpu_support"] = cpu_support().as_dict()  # the class the back ends acted on (after any override)
    return info


def measure_ceilings(threads: int, seconds: float = 1.5) -> dict:
    """Best GFLOP/s of large matrix products and of 1x1 convolutions (channels-last), float32 and
    bfloat16; int8 1x1 convolutions in OpenVINO (every CPU class, where it is installed) and int8
    matrix products where the CPU has 32-bit int8 sums; on ``threads`` threads."""
    import torch
    import torch.nn.functional as F

    from ..inference.cpu import cpu_support

    torch.set_num_threads(threads)
    out = {}

    def best(fn, flop):
        fn()
        rates, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds or len(rates) < 3:
            t = time.perf_counter()
            fn()
            rates.append(flop / (time.perf_counter() - t) / 1e9)
        return max(rates)

    with torch.inference_mode():
        for dtype, label in ((torch.float32, "float32"), (torch.bfloat16, "bfloat16")):
            n = 2048
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            out[f"matmul_{label}"] = round(best(lambda: a @ b, 2 * n ** 3), 1)
            rates = []
            for batch, cin, cout, side in ((8, 1080, 216, 42), (8, 2160, 432, 21), (1, 1080, 216, 42)):
                x = torch.randn(batch, cin, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
                w = torch.randn(cout, cin, 1, 1, dtype=dtype).contiguous(memory_format=torch.channels_last)
                rates.append(best(lambda: F.conv2d(x, w), 2 * batch * cin * cout * side * side))
            out[f"conv1x1_{label}"] = round(max(rates), 1)
        # int8 1x1 convolutions in OpenVINO, the runtime of our int8 path, on every CPU class (its
        # oneDNN picks the VNNI / AMX kernel, or AVX2's 16-bit pair sums), with the kernel's name.
        out.update(openvino_int8_conv1x1(threads, best))
        # int8 x int8 -> int32 products, in GOP/s. Only where int8 sums are 32-bit (VNNI, AMX, Arm
        # dot product): elsewhere torch._int_mm falls back to a slow generic kernel, and its rate
        # (not a limit of the machine) made int8 paths look like 100x their ceiling.
        if not cpu_support().int8_accumulates_in_32_bits:
            return out
        try:
            a8, b8 = torch.randint(-100, 100, (2048, 2048), dtype=torch.int8), \
                torch.randint(-100, 100, (2048, 2048), dtype=torch.int8)
            out["matmul_int8"] = round(best(lambda: torch._int_mm(a8, b8), 2 * 2048 ** 3), 1)
        except (RuntimeError, AttributeError):
            pass
    return out


def _int8_conv_chain(batch: int, channels: int, side: int, depth: int):
    """An OpenVINO model of ``depth`` int8 1x1 convolutions (``channels`` -> ``channels``) in a row:
    u8 activations (FakeQuantize, which OpenVINO fuses into each convolution's output) times i8
    weights, as NNCF's quantized graphs are. A chain, so that the float32 input's quantization is
    paid once rather than per convolution."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([batch, channels, side, side], np.float32, name="x")

    def scalar(v):
        return ops.constant(np.array(v, np.float32))

    y = ops.fake_quantize(x, scalar(0.0), scalar(4.0), scalar(0.0), scalar(4.0), 256)
    for _ in range(depth):
        w = ops.constant(rng.integers(-127, 128, (channels, channels, 1, 1)).astype(np.int8))
        scale = ops.constant(np.full((channels, 1, 1, 1), 1e-3, np.float32))
        y = ops.convolution(y, ops.multiply(ops.convert(w, np.float32), scale), [1, 1], [0, 0], [0, 0], [1, 1])
        y = ops.fake_quantize(y, scalar(0.0), scalar(4.0), scalar(0.0), scalar(4.0), 256)
    return ov.Model([y], [x])


def openvino_int8_conv1x1(threads: int, best) -> dict:
    """``{"conv1x1_int8": GOP/s, "conv1x1_int8_kernel": name}`` of OpenVINO's int8 1x1 convolutions
    on PNASNet-like shapes (best of several), or ``{}`` without OpenVINO. ``best(fn, ops)`` times."""
    try:
        import numpy as np
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    rates, kernels, depth = [], set(), 6
    for batch, channels, side in ((8, 432, 42), (8, 864, 21), (1, 864, 21)):
        compiled = core.compile_model(_int8_conv_chain(batch, channels, side, depth), "CPU",
                                      {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                                       "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True})
        request = compiled.create_infer_request()
        x = np.random.default_rng(1).random((batch, channels, side, side), dtype=np.float32) * 4
        request.infer({0: x})
        kernels |= {p.exec_type for p in request.profiling_info if p.node_type == "Convolution"}
        rates.append(best(lambda: request.infer({0: x}), depth * 2 * batch * channels * channels * side * side))
    return {"conv1x1_int8": round(max(rates), 1), "conv1x1_int8_kernel": ", ".join(sorted(kernels))}


def count_gflop(model_name: str, size: int) -> float:
    """Multiply-adds x 2 of one image through the plain model (convolutions and the final layer)."""
    import torch
    from torch import nn

    import pnasnet

    model = pnasnet.create_model(model_name)
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total[0] += 2 * k * output.numel()
        elif isinstance(module, nn.Linear):
            total[0] += 2 * module.in_features * output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.inference_mode():
        model.classify(torch.rand(1, 3, size, size))
    for h in handles:
        h.remove()
    return total[0] / 1e9
