"""Fast inference behind one option: ``optimize(model, backend=..., precision=...)``.

=============  ===========================================================  =====================
backend        what runs                                                    precision
=============  ===========================================================  =====================
``eager``      the inference form (BN folded, channels-last) through a      float32, bfloat16
               lean forward pass (shared ReLUs, oneDNN-fused ReLU/add);
               PyTorch only, no compile step
``compile``    the same under ``torch.compile`` (inductor, frozen weights);  float32, bfloat16
               compiles on the first call (about a minute for Large)
``onnxruntime``the ONNX export (fixed image size, any batch) in ONNX          float32
               Runtime's CPU provider; ``pip install "pnasnet[onnx]"``
``openvino``   the ONNX export in OpenVINO's CPU plugin;                    float32, bfloat16,
               ``pip install "pnasnet[openvino]"`` (int8: ``[int8]``)       int8
=============  ===========================================================  =====================

``float32`` is the exact path: logits agree with the plain model to about 1e-6 relative (stated
tolerance 1e-4). ``bfloat16`` and ``int8`` are explicit options that change the function: bfloat16
measured 1.7-1.9x float32 on a Zen 5 (AVX512-BF16) and slower than float32 on an Emerald Rapids
Xeon without AMX exposed (its bf16 instructions run at half the float32 rate); int8 (OpenVINO
with NNCF post-training quantization, calibrated on ``calibration=`` images) measured about twice
float32 on a VNNI CPU, with agreement that must be checked on your data (``benchmarks/RESULTS.md``).
Each back end's package is imported only when that back end is asked for.

The result has the model's call shape: ``classify(images) -> [N, num_classes]`` and
``features(images) -> [N, num_features]``, float32 tensors, for float images ``[N, 3, H, W]`` in [0, 1]
(checked as the plain model checks them). ONNX Runtime and OpenVINO run at one image size, fixed when
they are built (``image_size=``, default the model's own).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from ..model.network import PNASNet, check_images
from .cpu import CpuSupport, cpu_support
from .fold import fold_batch_norms, to_channels_last
from .fused import FusedForward, plain_body

BACKENDS = ("eager", "compile", "onnxruntime", "openvino")
# What the classify / features / serve commands and tasks accept: "auto" picks the fastest exact path
# for the model's device, "plain" runs the model as it is (the training form, in eval mode).
BACKEND_CHOICES = ("auto", "plain") + BACKENDS
# What "auto" runs when a reduced precision is asked for (asking for one is the explicit choice of its path).
_AUTO_REDUCED = {"bfloat16": "eager", "int8": "openvino"}
PRECISIONS = ("float32", "bfloat16", "int8")
_SUPPORTED = {"eager": ("float32", "bfloat16"), "compile": ("float32", "bfloat16"), "onnxruntime": ("float32",),
              "openvino": ("float32", "bfloat16", "int8")}
_PACKAGES = {"onnxruntime": ("onnxruntime", "onnx", "onnxscript"), "openvino": ("openvino", "onnx", "onnxscript")}
_EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------- discovery
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16, AMX or Arm BF16); elsewhere bf16 is
    emulated (AVX-512) and slower than float32, or not available at all (AVX2)."""
    return cpu_support().bf16_native


class PrecisionUnavailableError(ValueError):
    """A precision this CPU (or this back end on this CPU) cannot compute; says why and what to use."""


def precision_unavailable(backend: str, precision: str, support: CpuSupport | None = None) -> str | None:
    """None if ``backend`` can run ``precision`` on this CPU class, else why not and the alternatives.

    - bfloat16 in PyTorch (eager, compile) needs oneDNN's bf16 convolutions: AVX-512 (BW/VL/DQ),
      AVX-NE-CONVERT or AMX on x86, BF16 on Arm. Without them PyTorch fails inside oneDNN.
    - bfloat16 in OpenVINO needs native bf16 (AVX512-BF16 or AMX): elsewhere OpenVINO silently runs
      float32, so the run would be labelled bfloat16 while computing float32.
    - int8 runs everywhere OpenVINO runs; without VNNI it is quantized with NNCF's overflow fix
      (see :mod:`pnasnet.inference.int8`).
    """
    support = support or cpu_support()
    if precision != "bfloat16":
        return None
    backend = _AUTO_REDUCED[precision] if backend == "auto" else backend
    alternatives = ("--precision float32 (exact, the default), or --precision int8 --calibration ... "
                    "(OpenVINO; about 2x float32 with VNNI)")
    if backend == "openvino" and not support.bf16_native:
        eager = "--backend eager (bfloat16 emulated by oneDNN, slower than float32), or " if support.bf16_runs else ""
        return (f"OpenVINO computes bfloat16 only on CPUs with AVX512-BF16 or AMX (elsewhere it computes "
                f"float32 under the bfloat16 label); this CPU: {support.describe()}. Use {eager}{alternatives}")
    if backend in ("eager", "compile") and not support.bf16_runs:
        needs = ("AVX-512 (BW, VL, DQ), AVX-NE-CONVERT or AMX" if support.is_x86 else "the Arm BF16 extension")
        return (f"bfloat16 needs a CPU with {needs}: PyTorch's oneDNN bfloat16 convolutions exist only there, "
                f"and are faster than float32 only with AVX512-BF16 or AMX; this CPU: {support.describe()}. "
                f"Use {alternatives}")
    return None


def backend_unavailable(backend: str) -> str | None:
    """None if ``backend`` can run here, else why not (which package to install)."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"
    import importlib.util

    missing = [p for p in _PACKAGES.get(backend, ()) if importlib.util.find_spec(p) is None]
    if missing:
        return (f"backend {backend!r} needs {', '.join(missing)}: "
                f"pip install \"pnasnet[{_EXTRAS[backend]}]\"")
    return None


def available_backends() -> dict[str, str | None]:
    """Every back end with None (usable) or the reason it is not."""
    return {name: backend_unavailable(name) for name in BACKENDS}


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the system
    (no ``mmap`` for large blocks, no trimming). PyTorch's CPU allocator has no cache: at batch 8
    on PNASNet-5 Large every forward pass otherwise maps and faults in about 1 GB of fresh pages
    (~250,000 page faults). Process-wide and irreversible, so it is a separate, explicit call (the
    command line makes it for its batch runs); returns False where it is not glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------------------- the models
class InferenceModel(nn.Module):
    """Common face of every back end: ``classify`` / ``features`` / ``forward`` and the model's
    attributes (``config``, ``num_classes``, ``num_features``, ``expected_image_size``,
    ``min_image_size``, ``labels`` where the model had them). Inference only: ``train()`` raises."""

    backend: str = ""
    precision: str = "float32"
    chosen_by: str = ""  # "auto: why" when backend="auto" chose this back end

    def __init__(self, model: PNASNet, image_size: int | None):
        super().__init__()
        self.config = model.config
        self.num_classes = model.num_classes
        self.num_features = model.num_features
        self.expected_image_size = model.expected_image_size
        self.min_image_size = model.min_image_size
        self.check_input_range = model.check_input_range
        self.image_size = image_size  # None: any size (eager / compile)
        for attr in ("labels", "weights_source", "weights_report"):
            if hasattr(model, attr):
                object.__setattr__(self, attr, getattr(model, attr))
        super().train(False)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(f"the {self.backend} inference model cannot train; fine-tune the original model")
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """The plain model's input checks (for back ends that do not run its code), plus the one
        image size a fixed-size export takes."""
        check_images(images, min_size=self.min_image_size, name=self.config.name,
                     check_range=self.check_input_range)
        if self.image_size is not None and tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"this {self.backend} model was built for {self.image_size}x{self.image_size} images, "
                             f"got {images.shape[-2]}x{images.shape[-1]}; build it with image_size= that size")
        return images

    def _run(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features, logits or None) as float32 on the CPU."""
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Feature vector [N, num_features] (ReLU of the last cell, mean over H and W), float32."""
        return self._run(images, want_logits=False)[0]

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [N, num_classes] (index 0 = background for 1001 classes), float32."""
        if not self.num_classes:
            raise RuntimeError("this is a feature-vector model (num_classes=0): use features()")
        return self._run(images, want_logits=True)[1]

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, logits)`` from one pass (as the plain model's method of that name)."""
        if not self.num_classes:
            raise RuntimeError("this is a feature-vector model (num_classes=0): use features()")
        return self._run(images, want_logits=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(images) if self.num_classes else self.features(images)

    def extra_repr(self) -> str:
        size = f", image_size={self.image_size}" if self.image_size else ""
        return f"backend={self.backend!r}, precision={self.precision!r}, model={self.config.name!r}{size}"


class EagerModel(InferenceModel):
    backend = "eager"

    def __init__(self, model: PNASNet, precision: str = "float32", fused: bool = True, in_place: bool = False):
        super().__init__(model, None)
        self.precision = precision
        net = fold_batch_norms(model, channels_last=True, in_place=in_place)
        if precision == "bfloat16":
            # The cells in bfloat16; the input scaling, the stem convolution (0.3% of the work) and
            # the final layer stay float32, and the pooling accumulates in float32.
            net = net.to(torch.bfloat16)
            net.conv0.float()
            if net.final_layer.FC is not None:
                net.final_layer.FC.float()
        net.check_input_range = model.check_input_range
        self.net = net
        device = next(net.parameters()).device
        self.runner = (FusedForward(net, use_mkldnn=None if device.type == "cpu" else False, release_when_packed=True)
                       if fused else None)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        self.net.check_input_range = self.check_input_range
        images = to_channels_last(images)
        if self.runner is not None:
            return self.runner.pooled(images)
        return self.net.features(images)

    def _run(self, images, want_logits):
        with torch.inference_mode():
            pooled = self.pooled(images).float()
            logits = self.net.final_layer(pooled) if want_logits else None
        return pooled, logits


class CompiledModel(EagerModel):
    """``torch.compile`` (inductor) of the eager inference form with frozen weights. Compiles on the
    first call for that batch size and image size; a smaller batch (a run's last one) is padded to the
    compiled batch size instead of compiling again."""

    backend = "compile"

    def __init__(self, model: PNASNet, precision: str = "float32", fused: bool = False,
                 mode: str | None = None, in_place: bool = False):
        super().__init__(model, precision, fused=fused, in_place=in_place)
        runner, net = self.runner, self.net

        def body(x: torch.Tensor) -> torch.Tensor:
            return runner.body(x) if runner is not None else plain_body(net, x)

        # Frozen weights let inductor pack them for oneDNN once; but with ATen's kernels capped below
        # the CPU (ATEN_CPU_CAPABILITY) torch 2.13 computes garbage with them, so not then.
        freezing = not cpu_support().aten_capped
        self._compiled = torch.compile(body, dynamic=False, mode=mode, options={"freezing": freezing})
        self._batch_sizes: set[int] = set()

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        net = self.net
        net.check_input_range = self.check_input_range
        x = net._prepare(to_channels_last(images))  # checks and rescaling outside the graph
        n = x.shape[0]
        larger = [b for b in self._batch_sizes if b > n]
        if n not in self._batch_sizes and larger:
            pad = min(larger) - n
            x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])], 0).contiguous(memory_format=torch.channels_last)
        else:
            self._batch_sizes.add(n)
        return self._compiled(x)[:n]


def _export(model: PNASNet, image_size: int, onnx_path: str | os.PathLike | None) -> tuple[Path, bool]:
    from .onnx_export import export_onnx

    if onnx_path is not None and Path(onnx_path).is_file():
        return Path(onnx_path), False
    if onnx_path is None:
        fd, name = tempfile.mkstemp(prefix="pnasnet-", suffix=".onnx")
        os.close(fd)
        return export_onnx(model, name, image_size=image_size), True
    return export_onnx(model, onnx_path, image_size=image_size), False


class _GraphModel(InferenceModel):
    """A back end that runs the ONNX graph: outputs ``features`` and (if any) ``logits``."""

    def __init__(self, model: PNASNet, image_size: int | None):
        size = int(image_size or model.expected_image_size[0])
        if size < model.min_image_size:
            raise ValueError(f"image size {size} is below the {model.config.name} minimum of {model.min_image_size}")
        super().__init__(model, size)

    def _inputs(self, images: torch.Tensor):
        images = self.check_images(images)
        return images.detach().to("cpu", torch.float32).contiguous().numpy()

    def _run(self, images, want_logits):
        outputs = self._infer(self._inputs(images))
        feats = torch.from_numpy(outputs[0])
        logits = torch.from_numpy(outputs[1]) if want_logits and len(outputs) > 1 else None
        return feats, logits


class OnnxRuntimeModel(_GraphModel):
    backend = "onnxruntime"

    def __init__(self, model: PNASNet, image_size: int | None = None, threads: int | None = None,
                 onnx_path: str | os.PathLike | None = None):
        import onnxruntime as ort

        super().__init__(model, image_size)
        path, temporary = _export(model, self.image_size, onnx_path)
        try:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = threads or torch.get_num_threads()
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        finally:
            if temporary:
                Path(path).unlink(missing_ok=True)
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _infer(self, array):
        return self.session.run(self._outputs, {"images": array})


class OpenVINOModel(_GraphModel):
    backend = "openvino"

    def __init__(self, model: PNASNet, image_size: int | None = None, precision: str = "float32",
                 threads: int | None = None, onnx_path: str | os.PathLike | None = None,
                 hint: str = "LATENCY", calibration: torch.Tensor | None = None):
        import openvino as ov

        super().__init__(model, image_size)
        self.precision = precision
        if precision == "int8":
            from .int8 import check_calibration

            calibration = check_calibration(calibration, self.image_size)
        path, temporary = _export(model, self.image_size, onnx_path)
        try:
            core = ov.Core()
            graph = core.read_model(str(path))
            if precision == "int8":
                from .int8 import overflow_fix, quantize_openvino_model

                self.int8_overflow_fix = overflow_fix()  # recorded: how this CPU class was quantized
                graph = quantize_openvino_model(graph, calibration, self.int8_overflow_fix)
            # int8: what NNCF left unquantized runs in float32, not in bfloat16 where the CPU has it
            config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32",
                      "PERFORMANCE_HINT": hint}
            # PyTorch's thread count by default, as ONNX Runtime's: what --threads and the server's
            # per-worker setting set (OpenVINO alone would take every core)
            config["INFERENCE_NUM_THREADS"] = int(threads or torch.get_num_threads())
            self.compiled = core.compile_model(graph, "CPU", config)
        finally:
            if temporary:
                Path(path).unlink(missing_ok=True)
        self.request = self.compiled.create_infer_request()
        self._outputs = list(self.compiled.outputs)
        self._lock = threading.Lock()  # one infer request: callers from several threads take turns

    def _infer(self, array):
        with self._lock:
            results = self.request.infer({0: array})
            return [results[o] for o in self._outputs]  # copies (share_outputs=False)


# --------------------------------------------------------------------------------------- the option
def optimize(model: PNASNet, backend: str = "eager", precision: str = "float32", *,
             image_size: int | None = None, threads: int | None = None,
             onnx_path: str | os.PathLike | None = None, in_place: bool = False,
             calibration: torch.Tensor | None = None) -> InferenceModel:
    """The fast inference form of ``model`` on ``backend`` at ``precision``.

    Args:
        model: a ``PNASNet`` (as ``pnasnet.create_model`` returns it); left unchanged.
        backend: "eager" (default: PyTorch only, no compile, the fastest exact path measured here),
            "compile", "onnxruntime" or "openvino".
        precision: "float32" (exact: equal to the plain model within float rounding), "bfloat16"
            (reduced precision, an explicit choice; eager, compile and openvino) or "int8" (openvino
            only, post-training quantization with NNCF calibrated on ``calibration``; see
            :mod:`pnasnet.inference.int8`).
        image_size: the one image size of an "onnxruntime" / "openvino" model (default: the model's
            own, 331 Large, 224 Mobile); eager and compile run at any size.
        threads: CPU threads for onnxruntime / openvino (default: PyTorch's thread count); for eager
            and compile use ``torch.set_num_threads``.
        onnx_path: where onnxruntime / openvino keep the exported graph (reused if it exists; a
            temporary file by default; OpenVINO also reads its own IR, ``.xml``). It must have been
            exported from the same weights and size.
        in_place: hold the weights once: eager / compile turn ``model`` itself into the inference
            form instead of a copy; onnxruntime / openvino drop ``model``'s weights once the runtime
            has its own. ``model`` cannot be used on its own afterwards.
        calibration: int8 only: float images [N, 3, S, S] in [0, 1] at the model's image size, like
            the ones it will see (a few dozen).
    """
    if not isinstance(model, PNASNet):
        raise TypeError(f"expected a PNASNet (pnasnet.create_model), got {type(model).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    device = next(model.parameters()).device
    check_backend_choice(backend, precision, device=device)
    if precision == "bfloat16" and device.type == "cpu" and not cpu_has_bf16():
        warnings.warn(f"this CPU has no native bfloat16 (AVX512-BF16/AMX; {cpu_support().describe()}): "
                      "bfloat16 is emulated and slower than float32", RuntimeWarning, stacklevel=2)
    if model.training:
        raise RuntimeError("optimize() builds an inference model: call model.eval() first")
    if backend in ("onnxruntime", "openvino") and device.type != "cpu":
        raise ValueError(f"backend {backend!r} runs on the CPU: move the model to the CPU first")
    if backend == "eager":
        return EagerModel(model, precision, in_place=in_place)
    if backend == "compile":
        return CompiledModel(model, precision, in_place=in_place)
    if backend == "onnxruntime":
        runnable = OnnxRuntimeModel(model, image_size, threads, onnx_path)
    else:
        runnable = OpenVINOModel(model, image_size, precision, threads, onnx_path, calibration=calibration)
    if in_place:  # the runtime holds its own copy of the weights now
        release_weights(model)
    return runnable


AUTO_OPENVINO_ENV = "PNASNET_AUTO_OPENVINO"


def auto_openvino_allowed() -> bool:
    """False when ``PNASNET_AUTO_OPENVINO`` is off/0/false/no: auto then never picks OpenVINO (no
    conversion on the first run, no graph cache), and runs the eager form as without OpenVINO."""
    return os.environ.get(AUTO_OPENVINO_ENV, "on").strip().lower() not in ("0", "off", "false", "no")


def auto_choice(model: nn.Module, precision: str = "float32", image_size: int | None = None) -> tuple[str, str]:
    """``(backend, why)``: what ``backend="auto"`` runs for ``model`` on this machine and install.

    - float32 on an x86 CPU with OpenVINO installed (``pnasnet[openvino]``), at a fixed image size
      (``image_size`` given, as every command gives it): ``openvino``. Its float32 form of our export
      was the fastest exact path at batch 1 and 8 on each x86 CPU class measured (Xeon with AVX-512,
      Zen 3 with AVX2, Zen 5 with AVX-512; ``benchmarks/RESULTS.md``). The converted graph is cached
      on disk (:mod:`.graph_cache`), so only the first run per weights pays its export.
      ``PNASNET_AUTO_OPENVINO=off`` turns this choice off.
    - otherwise ``eager`` on a CPU whose torch build has the fused oneDNN operators (any image size,
      no extra package), and ``plain`` elsewhere (builds without them, e.g. macOS and some Arm
      builds, and other devices, where the inference form has not been measured).
    - bfloat16 runs ``eager``, int8 ``openvino`` (asking for one is the explicit choice of its path).
    """
    if precision in _AUTO_REDUCED:
        return _AUTO_REDUCED[precision], f"{precision} runs on {_AUTO_REDUCED[precision]}"
    device = next(model.parameters()).device
    if device.type != "cpu":
        return "plain", f"the model is on {device.type}"
    support = cpu_support()
    openvino_fits = support.is_x86 and image_size is not None
    if openvino_fits and not auto_openvino_allowed():
        why = f"{AUTO_OPENVINO_ENV} is off"
    elif openvino_fits and backend_unavailable("openvino") is None:
        return "openvino", "OpenVINO is installed: the fastest exact path measured on x86 CPUs"
    elif openvino_fits:
        why = "OpenVINO is not installed (pip install \"pnasnet[openvino]\" for the faster path)"
    else:
        why = "the exact inference form"
    if support.fused_ops:
        return "eager", why
    return "plain", "this torch build has no fused oneDNN operators"


def auto_backend(model: nn.Module, precision: str = "float32", image_size: int | None = None) -> str:
    """The back end ``backend="auto"`` runs (see :func:`auto_choice`, which also says why)."""
    return auto_choice(model, precision, image_size)[0]


def release_weights(model: nn.Module) -> None:
    """Drop ``model``'s parameter and buffer storage (its structure and attributes stay): once a
    graph runtime holds its own copy of the weights, the PyTorch copy would only double the memory."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.data = torch.empty(0, dtype=tensor.dtype)


def _auto_openvino(model: PNASNet, image_size: int, threads: int | None, in_place: bool) -> InferenceModel | None:
    """The float32 OpenVINO model from the graph cache (:mod:`.graph_cache`), or None with a
    warning if OpenVINO could not take it: ``auto`` then runs the eager form."""
    import shutil

    from .graph_cache import openvino_graph

    try:
        path, temporary = openvino_graph(model, image_size)
        try:
            return optimize(model, "openvino", image_size=image_size, threads=threads, onnx_path=path,
                            in_place=in_place)
        finally:
            if temporary is not None:
                shutil.rmtree(temporary, ignore_errors=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the optional runtime: fall back, say why
        warnings.warn(f"backend auto: OpenVINO could not run {model.config.name} ({type(exc).__name__}: {exc}); "
                      "running the eager form instead", RuntimeWarning, stacklevel=3)
        return None


def backend_of(model: nn.Module) -> str:
    """What runs ``model``, as outputs record it: "openvino float32", "eager bfloat16", "plain float32"."""
    if isinstance(model, InferenceModel):
        return f"{model.backend} {model.precision}"
    return "plain float32"


def check_backend_choice(backend: str, precision: str = "float32", device: torch.device | str | None = None) -> None:
    """Raise ValueError (unknown name, unsupported pair, a precision this CPU cannot compute:
    :class:`PrecisionUnavailableError`) or ImportError (package missing) now, before a long job
    starts, for what :func:`for_inference` would be asked. ``device``: where the model will run
    (default: the CPU); the CPU's abilities are checked only for the CPU."""
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if backend == "plain" and precision != "float32":
        raise ValueError(f"the plain model runs in float32 only; {precision} needs backend "
                         f"{', '.join(b for b in BACKENDS if precision in _SUPPORTED[b])} (or auto)")
    if backend in _SUPPORTED and precision not in _SUPPORTED[backend]:
        raise ValueError(f"backend {backend!r} supports precision {', '.join(_SUPPORTED[backend])} only")
    on_cpu = device is None or torch.device(device).type == "cpu"
    if on_cpu or backend in ("onnxruntime", "openvino"):
        why = precision_unavailable(backend, precision)
        if why:
            raise PrecisionUnavailableError(why)
    reason = backend_unavailable(backend) if backend in BACKENDS else None
    if reason is None and precision == "int8":
        from .int8 import int8_unavailable

        reason = int8_unavailable()
    if reason:
        raise ImportError(reason)


def for_inference(model: nn.Module, backend: str = "auto", precision: str = "float32", *,
                  image_size: int | None = None, threads: int | None = None,
                  in_place: bool = False, calibration: torch.Tensor | None = None) -> nn.Module:
    """``model`` ready to run inference on ``backend`` (one of :data:`BACKEND_CHOICES`): the model
    itself for "plain" (and for an already optimized model), else :func:`optimize`; "auto" runs what
    :func:`auto_choice` picks (OpenVINO float32 needs ``image_size``; if OpenVINO fails to take the
    model, auto warns and runs the eager form) and records why in the result's ``chosen_by``. This
    is what ``classify_paths``, ``extract_features`` and ``pnasnet serve`` call with their
    ``backend`` option. ``in_place``: as in :func:`optimize` (``model`` is then unusable alone).
    """
    if isinstance(model, InferenceModel):
        return model
    check_backend_choice(backend, precision, device=next(model.parameters()).device)
    why = None
    if backend == "auto":
        backend, why = auto_choice(model, precision, image_size)
        log.info("backend auto: %s %s (%s)", backend, precision, why)
    if backend == "plain":
        return model
    was_training = model.training
    model.eval()  # the inference form takes the running statistics, as eval mode does
    try:
        runnable = None
        if why is not None and backend == "openvino" and precision == "float32":
            runnable = _auto_openvino(model, int(image_size), threads, in_place)
            if runnable is None:
                backend, why = ("eager" if cpu_support().fused_ops else "plain"), "OpenVINO failed"
        if backend == "plain":
            return model
        if runnable is None:
            runnable = optimize(model, backend, precision, image_size=image_size, threads=threads,
                                in_place=in_place, calibration=calibration)
        if why is not None:
            runnable.chosen_by = f"auto: {why}"
        return runnable
    finally:
        if was_training and not in_place:
            model.train()
