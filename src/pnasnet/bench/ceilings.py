"""What the machine can do and what the model asks of it: the CPU (model, ISA, the class the back ends
act on), the float32 / bfloat16 / int8 matrix-product and 1x1-convolution ceilings, and the model's
GFLOP per image. The last two run in a worker process (:mod:`.worker`).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def cpu_info() -> dict:
    from ..inference.cpu import cpu_flags, cpu_support

    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                info["model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["isa"] = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx")) or f in ("avx2", "fma", "avx_vnni"))
    info["cpu_support"] = cpu_support().as_dict()  # the class the back ends acted on (after any override)
    return info


def measure_ceilings(threads: int, seconds: float = 1.5) -> dict:
    """Best GFLOP/s of large matrix products and of 1x1 convolutions (channels-last), float32 and
    bfloat16, and int8 products where the CPU has 32-bit int8 sums, on ``threads`` threads."""
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
