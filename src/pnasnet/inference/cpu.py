"""What this CPU and this PyTorch build can do, in one place.

Every decision that depends on the processor reads :func:`cpu_support`: which precisions the back
ends accept, whether ``--backend auto`` may use the fused oneDNN operators, how int8 is quantized,
and what the benchmark reports as its ceilings. The answer comes from the CPU's feature flags
(``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS), capped by what the process was told to use:

- ``PNASNET_CPU_ISA``: act as a CPU of that class (``avx2``, ``avx2_vnni``, ``avx512``,
  ``avx512_vnni``, ``avx512_bf16``, ``amx``): features above it count as absent. The test suite runs its
  precision and back-end tests a second time with ``PNASNET_CPU_ISA=avx2`` (plus oneDNN's and
  ATen's own caps, below) to prove the AVX2-only behaviour on a machine that has more.
- ``ONEDNN_MAX_CPU_ISA``: oneDNN's own cap (``AVX2``, ``AVX512_CORE``, ...). oneDNN then really does
  not use the instructions above it, so neither may our decisions assume them.
- ``ATEN_CPU_CAPABILITY`` (``avx2``, ``default``): PyTorch's cap on its own kernels; recorded as
  ``aten_capped`` (``torch.compile`` then runs without weight freezing, which breaks under it).
- ``PNASNET_HIDE_FUSED_OPS=1``: behave as a PyTorch build without the fused oneDNN convolution
  operators (macOS and some ARM builds have none).

Why these features matter (x86):

- bfloat16 convolutions in oneDNN need AVX-512 (F/BW/VL/DQ) or AVX-NE-CONVERT; PyTorch raises
  ``bf16 path needs the cpu support ...`` without them. They are only *native* (faster than
  float32) with AVX512-BF16 or AMX; plain AVX-512 emulates them.
- int8 convolutions without VNNI (or AMX) multiply u8 by s8 with ``vpmaddubsw``, which adds pairs of
  products into 16 bits and saturates; NNCF's overflow fix (7-bit weights) avoids that. With VNNI the
  products accumulate in 32 bits.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, replace

from ..env_flags import env_flag

ENV_ISA = "PNASNET_CPU_ISA"
ENV_HIDE_FUSED = "PNASNET_HIDE_FUSED_OPS"

# x86 classes from least to most capable, each with the features that define it.
_X86_LEVELS: dict[str, frozenset[str]] = {
    "baseline": frozenset(),
    "avx2": frozenset({"avx2"}),
    "avx2_vnni": frozenset({"avx2", "avx_vnni"}),
    "avx512": frozenset({"avx2", "avx512"}),
    "avx512_vnni": frozenset({"avx2", "avx512", "avx512_vnni"}),
    "avx512_bf16": frozenset({"avx2", "avx512", "avx512_vnni", "avx512_bf16"}),
    "amx": frozenset({"avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx"}),
}
# What a cap at a class still allows beyond its defining features: the 256-bit VNNI and bf16
# conversions that CPUs of the class may have (Zen 5, Sapphire Rapids and later).
_X86_ALSO_ALLOWED = {"avx512_bf16": frozenset({"avx_vnni", "avx_ne_convert"}),
                     "amx": frozenset({"avx_vnni", "avx_ne_convert"})}
# oneDNN's ONEDNN_MAX_CPU_ISA values (dnnl_cpu_isa_t names, case-insensitive) -> our classes.
_ONEDNN_LEVELS = {
    "sse41": "baseline", "avx": "baseline", "avx2": "avx2", "avx2_vnni": "avx2_vnni", "avx2_vnni_2": "avx2_vnni",
    "avx512_core": "avx512", "avx512_core_vnni": "avx512_vnni", "avx512_core_bf16": "avx512_bf16",
    "avx512_core_fp16": "avx512_bf16", "avx10_1_512": "avx512_bf16",
    "avx512_core_amx": "amx", "avx512_core_amx_fp16": "amx", "avx10_1_512_amx": "amx",
    "avx10_1_512_amx_fp16": "amx", "all": "amx", "default": "amx",
}


@dataclass(frozen=True)
class CpuSupport:
    """The CPU class as the back ends see it. Build one with :func:`cpu_support`; tests may build
    their own (``dataclasses.replace``) and install it with :func:`set_cpu_support`."""

    arch: str                     # "x86_64", "aarch64", "arm64" (macOS), ...
    avx2: bool = False            # AVX2 + FMA: the x86 baseline of PyTorch's fast kernels
    avx512: bool = False          # AVX-512 F, BW, VL and DQ (what oneDNN's bf16 path needs)
    avx512_vnni: bool = False     # 32-bit int8 dot products, 512-bit
    avx_vnni: bool = False        # the same on 256-bit registers (Alder Lake, Zen 5)
    avx512_bf16: bool = False     # bfloat16 dot products
    avx_ne_convert: bool = False  # bf16 conversions without AVX-512 (lets oneDNN run bf16 on AVX2)
    amx: bool = False             # AMX tiles (bf16 and int8 matrix units)
    arm_bf16: bool = False        # Armv8.6 BF16 (aarch64)
    arm_dotprod: bool = False     # Armv8.2 int8 dot product (aarch64)
    fused_ops: bool = False       # this torch build has oneDNN and its fused convolution operators
    aten_capped: bool = False     # ATEN_CPU_CAPABILITY holds ATen's kernels below what the CPU has
    capped_by: str = ""           # which override limited the features, if any

    # ----------------------------------------------------------------------------- derived
    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "amd64", "i386", "i686")

    @property
    def bf16_runs(self) -> bool:
        """Whether bfloat16 convolutions run at all here (oneDNN's requirement)."""
        if self.is_x86:
            return self.avx512 or self.avx_ne_convert or self.amx
        return self.arm_bf16

    @property
    def bf16_native(self) -> bool:
        """Whether bfloat16 is computed by bf16 instructions (not emulated, so it can beat float32)."""
        return self.avx512_bf16 or self.amx or self.arm_bf16

    @property
    def int8_accumulates_in_32_bits(self) -> bool:
        """Whether int8 dot products cannot saturate (VNNI, AMX, Arm dot product)."""
        if self.is_x86:
            return self.avx512_vnni or self.avx_vnni or self.amx
        return self.arm_dotprod

    @property
    def cpu_class(self) -> str:
        """A short name of the class: ``avx2``, ``avx512_vnni``, ``amx``, ``aarch64``, ..."""
        if not self.is_x86:
            return self.arch
        best = "baseline"
        for level, needs in _X86_LEVELS.items():
            if all(getattr(self, feature) for feature in needs):
                best = level
        return best

    def describe(self) -> str:
        """One line for messages and benchmark reports, e.g. ``x86_64 AVX-512 (VNNI, BF16; no AMX)``."""
        if self.is_x86:
            base = "AVX-512" if self.avx512 else "AVX2" if self.avx2 else "no AVX2"
            extras = (("VNNI", self.avx512_vnni or self.avx_vnni), ("BF16", self.avx512_bf16), ("AMX", self.amx))
            have = [name for name, ok in extras if ok]
            lack = [name for name, ok in extras if not ok]
            text = f"{self.arch} {base} ({', '.join(have) + ('; ' if have and lack else '')}"
            text += f"no {', '.join(lack)})" if lack else ")"
        else:
            text = f"{self.arch} ({'BF16' if self.arm_bf16 else 'no BF16'}, "
            text += f"{'int8 dot product' if self.arm_dotprod else 'no int8 dot product'})"
        if not self.fused_ops:
            text += ", no fused oneDNN operators"
        if self.aten_capped:
            text += ", ATen kernels capped by ATEN_CPU_CAPABILITY"
        if self.capped_by:
            text += f" [as capped by {self.capped_by}]"
        return text

    def as_dict(self) -> dict:
        """For benchmark and run records."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        fields.update(cpu_class=self.cpu_class, bf16_runs=self.bf16_runs, bf16_native=self.bf16_native,
                      int8_accumulates_in_32_bits=self.int8_accumulates_in_32_bits, description=self.describe())
        return fields


# --------------------------------------------------------------------------------------- detection
def _cpuinfo_field(*keys: str) -> str | None:
    """The first /proc/cpuinfo line with one of ``keys``, its value; None without that file or line."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux names them (x86 ``flags``, Arm ``Features``)."""
    if sys.platform == "darwin":
        return _darwin_flags()
    return set((_cpuinfo_field("flags", "Features") or "").split())


def cpu_model_name() -> str | None:
    """The CPU's model name as /proc/cpuinfo gives it (e.g. "AMD EPYC"), or None."""
    return _cpuinfo_field("model name")


def _darwin_flags() -> set[str]:
    """Apple silicon: the hw.optional.arm.FEAT_* switches, named as Linux names them."""
    names = {"hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_DotProd": "asimddp"}
    flags = set()
    for key, flag in names.items():
        try:
            out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.stdout.strip() == "1":
            flags.add(flag)
    return flags


def _torch_has_fused_ops() -> bool:
    try:
        import torch

        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except Exception:  # pragma: no cover - exotic builds
        return False


def _cap(support: CpuSupport, level: str, why: str) -> CpuSupport:
    allowed = _X86_LEVELS[level] | _X86_ALSO_ALLOWED.get(level, frozenset())
    changes = {feature: False for feature in ("avx2", "avx512", "avx512_vnni", "avx_vnni", "avx512_bf16",
                                              "avx_ne_convert", "amx")
               if feature not in allowed and getattr(support, feature)}
    if not changes:
        return support
    capped = f"{support.capped_by}, {why}" if support.capped_by else why
    return replace(support, capped_by=capped, **changes)


def detect_cpu_support(environ: dict | None = None) -> CpuSupport:
    """Read the CPU and the torch build now, applying the overrides in ``environ`` (default
    ``os.environ``). Raises ValueError for an override value that names no CPU class."""
    env = os.environ if environ is None else environ
    flags = cpu_flags()
    arch = platform.machine().lower() or "unknown"
    support = CpuSupport(
        arch=arch,
        avx2="avx2" in flags and "fma" in flags,
        avx512=all(f in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq")),
        avx512_vnni="avx512_vnni" in flags,
        avx_vnni="avx_vnni" in flags,
        avx512_bf16="avx512_bf16" in flags,
        avx_ne_convert="avx_ne_convert" in flags,
        amx="amx_bf16" in flags or "amx_int8" in flags,
        arm_bf16="bf16" in flags,
        arm_dotprod="asimddp" in flags,
        fused_ops=_torch_has_fused_ops(),
    )
    if support.is_x86:
        # ATen's own cap. torch 2.13's inductor with frozen weights computes wrong values (1e35 where
        # 4.4 is right) when ATen runs AVX2 kernels on an AVX-512 CPU; the compile back end reads
        # this flag and does not freeze then.
        aten = (env.get("ATEN_CPU_CAPABILITY") or "").strip().lower()
        if (aten in ("default", "avx2") and support.avx512) or (aten == "default" and support.avx2):
            support = replace(support, aten_capped=True)
        onednn = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").strip().lower()
        if onednn:
            if onednn not in _ONEDNN_LEVELS:
                raise ValueError(f"ONEDNN_MAX_CPU_ISA={onednn.upper()} is not an ISA oneDNN knows "
                                 f"(e.g. AVX2, AVX512_CORE, AVX512_CORE_BF16, ALL)")
            support = _cap(support, _ONEDNN_LEVELS[onednn], f"ONEDNN_MAX_CPU_ISA={onednn.upper()}")
        ours = (env.get(ENV_ISA) or "").strip().lower()
        if ours:
            if ours not in _X86_LEVELS:
                raise ValueError(f"{ENV_ISA}={ours} names no CPU class; choose one of {', '.join(_X86_LEVELS)}")
            support = _cap(support, ours, f"{ENV_ISA}={ours}")
    if env_flag(ENV_HIDE_FUSED, False, env) and support.fused_ops:
        capped = f"{support.capped_by}, {ENV_HIDE_FUSED}=1" if support.capped_by else f"{ENV_HIDE_FUSED}=1"
        support = replace(support, fused_ops=False, capped_by=capped)
    return support


_installed: CpuSupport | None = None


@functools.lru_cache(maxsize=1)
def _detected() -> CpuSupport:
    return detect_cpu_support()


def cpu_support() -> CpuSupport:
    """This process's CPU class (detected once; see the module docstring for the overrides)."""
    return _installed if _installed is not None else _detected()


def set_cpu_support(support: CpuSupport | None) -> None:
    """Act as if the CPU were ``support`` (tests); ``None`` goes back to the detected one."""
    global _installed
    _installed = support
