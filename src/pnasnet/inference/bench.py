"""The inference benchmark: our paths beside the peers, interleaved, in one run.

Each contender runs in its own worker process (so its peak memory is its own and one runtime's
threads never share a process with another's); the driver asks the workers in turn to time a few
batches, round after round, so a slow minute on a shared machine hits every contender alike. It
also measures the CPU time that other processes took during each slot and re-runs a slot that was
disturbed. Results: a table on stdout, JSON and Markdown files.

Contenders (each skipped, with the reason, when what it needs is absent):

- ``pnasnet-plain``: ``create_model(...).classify`` as it is (NCHW, batch norms, the training-ready
  forward); ``pnasnet-eager`` / ``-eager-bf16``: ``pnasnet.inference.optimize(model)``;
  ``pnasnet-compile``: ``backend="compile"``; ``pnasnet-onnxruntime``, ``pnasnet-openvino`` /
  ``-openvino-bf16``: our ONNX export in those runtimes.
- ``timm-*``: timm's ``pnasnet5large`` (needs ``timm``, which needs a torchvision matching torch)
  with the same weights: eager NCHW, channels-last, ``torch.compile``, bfloat16 autocast, and timm's
  ONNX export in ONNX Runtime and OpenVINO (float32, bfloat16).
- ``tf-slim``: TF-Slim's graph in TensorFlow 1-style (``--tf-python`` a Python with TensorFlow 2.12
  and tf-slim, ``--slim-dir`` a folder with TF-Slim's ``pnasnet.py``, ``nasnet.py``,
  ``nasnet_utils.py``), restoring the same TF checkpoint.
- the machine's float32 / bfloat16 matrix-product and 1x1-convolution ceilings.

This file imports nothing outside the standard library at the top, so that the TensorFlow worker can
run it as a plain script in another environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

LARGE_GFLOP_331 = 49.9  # the figure; the benchmark also counts it from the model

OURS = ["pnasnet-plain", "pnasnet-eager", "pnasnet-compile", "pnasnet-onnxruntime", "pnasnet-openvino",
        "pnasnet-eager-bf16", "pnasnet-openvino-bf16"]
PEERS = ["timm-eager", "timm-channels-last", "timm-compile", "timm-bf16-autocast", "timm-onnxruntime",
         "timm-openvino", "timm-openvino-bf16", "tf-slim"]
EXTRA = ["pnasnet-folded", "pnasnet-compile-bf16", "pnasnet-openvino-int8"]
ALL = OURS + PEERS + EXTRA
DEFAULT = OURS + PEERS
BF16 = {"pnasnet-eager-bf16", "pnasnet-openvino-bf16", "pnasnet-compile-bf16", "timm-bf16-autocast",
        "timm-openvino-bf16"}
DESCRIPTIONS = {
    "pnasnet-plain": "pnasnet, plain model (NCHW, BN, training-ready forward)",
    "pnasnet-folded": "pnasnet, BN folded + channels-last, plain forward",
    "pnasnet-eager": "pnasnet optimize(): eager float32 (exact)",
    "pnasnet-compile": "pnasnet optimize(backend='compile') float32",
    "pnasnet-onnxruntime": "pnasnet ONNX export in ONNX Runtime",
    "pnasnet-openvino": "pnasnet ONNX export in OpenVINO float32",
    "pnasnet-eager-bf16": "pnasnet optimize(precision='bfloat16'): eager",
    "pnasnet-openvino-bf16": "pnasnet ONNX export in OpenVINO bfloat16",
    "pnasnet-compile-bf16": "pnasnet optimize(backend='compile', precision='bfloat16')",
    "pnasnet-openvino-int8": "pnasnet ONNX export in OpenVINO, int8 (NNCF, calibrated on photographs)",
    "timm-eager": "timm pnasnet5large eager (NCHW)",
    "timm-channels-last": "timm channels-last",
    "timm-compile": "timm channels-last + torch.compile",
    "timm-bf16-autocast": "timm channels-last + bfloat16 autocast",
    "timm-onnxruntime": "timm's ONNX export in ONNX Runtime",
    "timm-openvino": "timm's ONNX export in OpenVINO float32",
    "timm-openvino-bf16": "timm's ONNX export in OpenVINO bfloat16",
    "tf-slim": "TF-Slim graph in TensorFlow",
}


# ===================================================================================== utilities
def _proc_busy_jiffies() -> tuple[int, int]:
    """(total, busy) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values), sum(values) - idle


def _pid_jiffies(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (all threads)
    except (OSError, IndexError, ValueError):
        return 0


def machine_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over ``seconds``."""
    t0, b0 = _proc_busy_jiffies()
    time.sleep(seconds)
    t1, b1 = _proc_busy_jiffies()
    return (b1 - b0) / max(t1 - t0, 1)


def wait_for_idle(limit: float, max_wait: float, say=print) -> dict:
    """Poll until the machine is less than ``limit`` busy (or ``max_wait`` seconds passed)."""
    start = time.time()
    samples = []
    while True:
        busy = machine_busy(3.0)
        samples.append(round(busy, 3))
        if busy <= limit or time.time() - start >= max_wait:
            break
        say(f"machine {busy:.0%} busy; waiting for it to settle ({time.time() - start:.0f}s)")
    return {"busy_before_start": samples[-1], "waited_s": round(time.time() - start, 1),
            "loadavg": os.getloadavg()}


def _proc_status_mb(field: str) -> float | None:
    """A ``kB`` line of /proc/self/status (VmHWM: peak resident memory, VmRSS: now) in MB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    now = _proc_status_mb("VmRSS")
    return float("nan") if now is None else now


def _malloc_trim() -> None:
    """Return freed heap memory to the system (glibc), so RSS shows what is in use."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def cpu_info() -> dict:
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("model name"):
                info["model"] = line.split(":", 1)[1].strip()
                break
        flags = set()
        for line in text.splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        info["isa"] = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma", "avx_vnni"))
    except OSError:
        pass
    from .cpu import cpu_support

    support = cpu_support()  # the class the back ends acted on (after any override)
    info["cpu_class"], info["cpu_support"] = support.cpu_class, support.describe()
    return info


# ===================================================================================== workers
def _images(batch: int, size: int, layout: str = "nchw"):
    import numpy as np

    rng = np.random.default_rng(1234)
    x = rng.random((batch, 3, size, size), dtype=np.float32)
    return x.transpose(0, 2, 3, 1).copy() if layout == "nhwc" else x


def _ours_model(spec: dict):
    import torch

    import pnasnet

    torch.manual_seed(0)
    weights = spec.get("safetensors") or spec.get("weights")
    return pnasnet.create_model(spec["model"], weights=weights, progress=False)


def _timm_model(spec: dict):
    """timm's pnasnet5large with our weights (1001 classes; same tensors by the ports' names)."""
    import timm

    from pnasnet.weights.ports import port_names

    if "large" not in spec["model"]:
        raise RuntimeError("timm has PNASNet-5 Large only (pnasnet5large)")

    ours = _ours_model(spec)
    model = timm.create_model("pnasnet5large", pretrained=False, num_classes=ours.num_classes)
    table = port_names(ours)
    state = ours.state_dict()
    mapped = {table[k]: v for k, v in state.items() if k in table}
    head = {"final_layer.FC.weight": "last_linear.weight", "final_layer.FC.bias": "last_linear.bias"}
    for k, name in head.items():
        if k in state and k not in table:
            mapped[name] = state[k]
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"timm: {len(missing)} tensors not mapped, e.g. {missing[:3]}")
    del ours
    return model.eval()


def _torch_runner(fn, layout_cl: bool = False, dtype=None):
    import torch

    def run(x):
        t = torch.from_numpy(x)
        if layout_cl:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return fn(t)

    return run


def build_contender(name: str, spec: dict):
    """Build contender ``name`` in this process; returns (run(images_numpy) -> None, info dict)."""
    threads = spec["threads"]
    info: dict = {}
    if name == "tf-slim":
        return _build_tf(spec)
    import torch

    torch.set_num_threads(threads)
    if name.startswith("pnasnet-"):
        from pnasnet.inference import fold_batch_norms, optimize
        from pnasnet.inference.backends import to_channels_last

        model = _ours_model(spec)
        model.check_input_range = False  # all contenders get the same unchecked images
        if name == "pnasnet-plain":
            return _torch_runner(model.classify), info
        if name == "pnasnet-folded":
            folded = fold_batch_norms(model)
            return _torch_runner(lambda t: folded.classify(to_channels_last(t))), info
        # What `pnasnet classify/features` do: convert the model in place, and keep freed memory
        # once the first batch is done (here: after the warm-up call, see worker_main).
        info["keep_freed_memory_after_warmup"] = spec.get("keep_freed_memory", True)
        backend = {"eager": "eager", "compile": "compile", "onnxruntime": "onnxruntime",
                   "openvino": "openvino"}[name.split("-")[1]]
        precision = "bfloat16" if name.endswith("bf16") else "int8" if name.endswith("int8") else "float32"
        calibration = None
        if precision == "int8":
            calibration = calibration_photographs(spec["size"])
        fast = optimize(model, backend, precision, image_size=spec["size"], threads=threads,
                        onnx_path=spec.get("ours_onnx") if backend in ("onnxruntime", "openvino") else None,
                        calibration=calibration, in_place=backend in ("eager", "compile"))
        fast.check_input_range = False
        del model
        return _torch_runner(fast.classify), info
    if name.startswith("timm-"):
        model = _timm_model(spec)
        kind = name[len("timm-"):]
        if kind == "eager":
            return _torch_runner(model), info
        if kind in ("channels-last", "compile", "bf16-autocast"):
            model = model.to(memory_format=torch.channels_last)
            if kind == "compile":
                return _torch_runner(torch.compile(model), layout_cl=True), info
            if kind == "bf16-autocast":
                def fn(t):
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return model(t)
                return _torch_runner(fn, layout_cl=True), info
            return _torch_runner(model, layout_cl=True), info
        path = spec.get("timm_onnx")
        if not path:
            raise RuntimeError("timm's ONNX export is missing (the preparation step failed)")
        del model
        return _graph_runner(kind, path, threads)
    raise ValueError(f"unknown contender {name}")


def _graph_runner(kind: str, path: str, threads: int):
    if kind == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return (lambda x: session.run(None, {name: x})), {}
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "bf16" if kind.endswith("bf16") else "f32",
              "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    return (lambda x: request.infer({0: x})), {}


def _import_tf_slim(slim_dir: str):
    """TF-Slim's nasnet sources with ``tensorflow.contrib`` aliased to ``tf_slim`` (as in
    tools/make_tf_slim_fixtures.py)."""
    import importlib

    import tensorflow
    import tf_slim

    tf1 = tensorflow.compat.v1
    tf1.disable_eager_execution()

    class HParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

        def set_hparam(self, name, value):
            setattr(self, name, value)

        def values(self):
            return dict(self.__dict__)

    training = types.ModuleType("tensorflow.contrib.training")
    training.HParams = HParams
    contrib = types.ModuleType("tensorflow.contrib")
    contrib.__path__ = []
    contrib.framework = contrib.layers = contrib.slim = tf_slim
    contrib.training = training
    proxy = types.ModuleType("tensorflow")
    proxy.__path__ = []
    proxy.contrib = contrib
    proxy.__getattr__ = lambda name: getattr(tf1, name)
    nets = types.ModuleType("nets")
    nets.__path__ = []
    nasnet_pkg = types.ModuleType("nets.nasnet")
    nasnet_pkg.__path__ = [os.path.abspath(slim_dir)]
    nets.nasnet = nasnet_pkg
    real = sys.modules["tensorflow"]
    sys.modules.update({"tensorflow.contrib": contrib, "tensorflow.contrib.framework": tf_slim,
                        "tensorflow.contrib.layers": tf_slim, "tensorflow.contrib.slim": tf_slim,
                        "tensorflow.contrib.training": training, "nets": nets, "nets.nasnet": nasnet_pkg})
    sys.modules["tensorflow"] = proxy
    try:
        importlib.import_module("nets.nasnet.nasnet_utils")
        importlib.import_module("nets.nasnet.nasnet")
        pnasnet = importlib.import_module("nets.nasnet.pnasnet")
    finally:
        sys.modules["tensorflow"] = real
    return tensorflow, tf1, tf_slim, pnasnet


def _build_tf(spec: dict):
    tensorflow, tf1, slim, tf_pnasnet = _import_tf_slim(spec["slim_dir"])
    large = "large" in spec["model"]
    builder = tf_pnasnet.build_pnasnet_large if large else tf_pnasnet.build_pnasnet_mobile
    scope = tf_pnasnet.pnasnet_large_arg_scope if large else tf_pnasnet.pnasnet_mobile_arg_scope
    size, threads = spec["size"], spec["threads"]
    graph = tf1.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf1.float32, [None, size, size, 3], name="images")
        with slim.arg_scope(scope()):
            logits, _ = builder((images - 0.5) * 2.0, 1001, is_training=False)
        saver = tf1.train.Saver() if spec.get("tf_checkpoint") else None
        init = tf1.global_variables_initializer()
    config = tf1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
    session = tf1.Session(graph=graph, config=config)
    session.run(init)
    if saver is not None:
        saver.restore(session, spec["tf_checkpoint"])
    info = {"tensorflow": tensorflow.__version__,
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)")}
    return (lambda x: session.run(logits, {images: x})), info


def _ceilings(threads: int, seconds: float = 1.5) -> dict:
    """Best GFLOP/s of large matrix products and of 1x1 convolutions (channels-last), float32 and
    bfloat16, on ``threads`` threads."""
    import torch
    import torch.nn.functional as F

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
        try:  # int8 x int8 -> int32 products (VNNI where the CPU has it), in GOP/s
            a8, b8 = torch.randint(-100, 100, (2048, 2048), dtype=torch.int8), \
                torch.randint(-100, 100, (2048, 2048), dtype=torch.int8)
            out["matmul_int8"] = round(best(lambda: torch._int_mm(a8, b8), 2 * 2048 ** 3), 1)
        except (RuntimeError, AttributeError):
            pass
    return out


def _count_gflop(model_name: str, size: int) -> float:
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


def worker_main(name: str, spec: dict) -> int:
    """Serve timing requests on stdin/stdout (one JSON object per line)."""
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints of the libraries must not mix with the protocol

    def reply(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        if name == "ceilings":
            reply({"ok": True, "ceilings": _ceilings(spec["threads"])})
            return 0
        if name == "gflop":
            reply({"ok": True, "gflop": _count_gflop(spec["model"], spec["size"])})
            return 0
        start = time.perf_counter()
        run, info = build_contender(name, spec)
        build_s = time.perf_counter() - start
        import gc

        gc.collect()
        _malloc_trim()
        reply({"ok": True, "build_s": round(build_s, 2), "rss_mb": round(_rss_mb(), 1), "info": info})
    except Exception as error:  # reported as the reason the contender is skipped
        reply({"ok": False, "error": f"{type(error).__name__}: {error}"[:500]})
        return 1
    inputs: dict[int, object] = {}
    layout = "nhwc" if name == "tf-slim" else "nchw"
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("cmd") == "quit":
            break
        batch = int(request["batch"])
        try:
            first_s = None
            if batch not in inputs:
                inputs[batch] = _images(batch, spec["size"], layout)
                t = time.perf_counter()
                run(inputs[batch])  # warm-up (and compilation, weight packing) for this batch size
                first_s = round(time.perf_counter() - t, 3)
                if info.get("keep_freed_memory_after_warmup"):
                    from pnasnet.inference import keep_freed_memory

                    info["keep_freed_memory"] = keep_freed_memory()
                import gc

                gc.collect()
                _malloc_trim()
                _reset_peak_rss()  # the peak of the timed calls: steady-state inference memory
            times, start = [], time.perf_counter()
            while len(times) < int(request["min_iters"]) or time.perf_counter() - start < float(request["min_time"]):
                t = time.perf_counter()
                run(inputs[batch])
                times.append(time.perf_counter() - t)
            reply({"ok": True, "times": times, "first_s": first_s, "peak_rss_mb": round(_peak_rss_mb(), 1)})
        except Exception as error:
            reply({"ok": False, "error": f"{type(error).__name__}: {error}"[:500]})
    return 0


# ===================================================================================== driver
class Worker:
    def __init__(self, name: str, spec: dict, python: str, env: dict | None = None):
        self.name = name
        cmd = [python, str(Path(__file__).resolve()), "--worker", name, "--spec", json.dumps(spec)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL if not spec.get("verbose") else None,
                                     text=True, env=env)

    def request(self, obj: dict | None = None) -> dict:
        if obj is not None:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            return {"ok": False, "error": f"worker exited (code {self.proc.poll()})"}
        return json.loads(line)

    def close(self):
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()


def _run_one_shot(kind: str, spec: dict, python: str) -> dict:
    worker = Worker(kind, spec, python)
    try:
        return worker.request()
    finally:
        worker.close()


def _prepare(args, spec: dict, say) -> dict:
    """Files every worker shares: our .safetensors (and its load time), the ONNX exports."""
    script = f"""
import json, sys, time, os
spec = json.loads(sys.argv[1]); out = {{}}
import torch, pnasnet
from pnasnet.weights.ours import save_safetensors
torch.manual_seed(0)
model = pnasnet.create_model(spec["model"], weights=spec.get("weights"), progress=False)
path = os.path.join(spec["workdir"], "model.safetensors")
save_safetensors(model, path, {{"variant": spec["model"], "source": str(spec.get("weights") or "random")}})
out["safetensors"] = path
if spec.get("ours_onnx"):
    from pnasnet.inference.onnx_export import export_onnx
    t = time.perf_counter()
    try:
        export_onnx(model, spec["ours_onnx"], image_size=spec["size"]); out["ours_onnx_s"] = round(time.perf_counter() - t, 1)
    except Exception as e:
        out["ours_onnx_error"] = repr(e)[:300]
if spec.get("timm_onnx"):
    t = time.perf_counter()
    try:
        sys.path.insert(0, os.path.dirname(spec["bench_file"]))
        import importlib.util
        s = importlib.util.spec_from_file_location("_bench", spec["bench_file"]); b = importlib.util.module_from_spec(s); s.loader.exec_module(b)
        m = b._timm_model(spec)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (torch.rand(2, 3, spec["size"], spec["size"]),), spec["timm_onnx"],
                              input_names=["images"], output_names=["logits"],
                              dynamic_shapes={{"x": {{0: torch.export.Dim("batch", min=1, max=4096)}}}},
                              dynamo=True, external_data=False)
        out["timm_onnx_s"] = round(time.perf_counter() - t, 1)
    except Exception as e:
        out["timm_onnx_error"] = repr(e)[:300]
print("RESULT " + json.dumps(out))
"""
    result = subprocess.run([args.python, "-c", script, json.dumps(spec)], capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"preparation failed: {result.stderr[-2000:]}")
    prepared = json.loads(lines[-1][len("RESULT "):])
    for key in ("ours_onnx_error", "timm_onnx_error"):
        if key in prepared:
            say(f"warning: {key}: {prepared[key]}")
    return prepared


def measure_load_time(python: str, model: str, path: str, repeats: int = 3) -> dict:
    """Seconds of ``create_model(model, weights=path)`` in a fresh process (torch already imported)."""
    script = """
import sys, time, json
import torch, pnasnet
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter(); m = pnasnet.create_model(sys.argv[1], weights=sys.argv[2], progress=False)
    times.append(time.perf_counter() - t); del m
print("RESULT " + json.dumps(times))
"""
    result = subprocess.run([python, "-c", script, model, path, str(repeats)], capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"error": result.stderr[-500:]}
    times = json.loads(lines[-1][len("RESULT "):])
    return {"first_s": round(times[0], 3), "best_s": round(min(times), 3), "file_mb": round(os.path.getsize(path) / 2**20, 1)}


def _contender_available(name: str, args) -> str | None:
    """None, or why ``name`` cannot run in this set-up (checked in the benchmark's Python)."""
    import importlib.util

    def have(*modules):
        return all(importlib.util.find_spec(m) is not None for m in modules)

    if name == "tf-slim":
        if not args.tf_python or not args.slim_dir:
            return "needs --tf-python (TensorFlow 2.12 + tf-slim) and --slim-dir (TF-Slim nasnet sources)"
        return None
    if args.python != sys.executable:
        return None  # checked by the worker itself
    if name.startswith("timm-") and not have("timm"):
        return "timm is not installed (it needs a torchvision matching torch; see benchmarks/README.md)"
    if name.endswith("onnxruntime") and not have("onnxruntime", "onnx", "onnxscript"):
        return "needs onnxruntime, onnx, onnxscript"
    if "openvino" in name and not have("openvino", "onnx", "onnxscript"):
        return "needs openvino, onnx, onnxscript"
    if name.endswith("int8") and not have("nncf"):
        return "needs nncf (pip install 'pnasnet[int8]')"
    return None


def run_benchmark(args, say=print) -> dict:
    """Run the benchmark ``args`` describe; the weights and ONNX exports it prepares (~1 GB for
    Large) live in a temporary folder removed at the end unless ``args.keep_workdir``."""
    workdir = tempfile.mkdtemp(prefix="pnasnet-bench-")
    try:
        return _run_benchmark(args, workdir, say)
    finally:
        if getattr(args, "keep_workdir", False):
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run_benchmark(args, workdir: str, say) -> dict:
    spec_base = {"model": args.model, "weights": args.weights, "size": args.image_size,
                 "slim_dir": args.slim_dir, "tf_checkpoint": args.tf_checkpoint, "verbose": args.verbose}
    contenders = [c for c in args.contenders]
    skipped = {}
    for name in list(contenders):
        reason = _contender_available(name, args)
        if reason:
            skipped[name] = reason
            contenders.remove(name)
    spec_base["workdir"] = workdir
    if any(c.startswith(("pnasnet-onnxruntime", "pnasnet-openvino")) for c in contenders):
        spec_base["ours_onnx"] = os.path.join(workdir, "pnasnet.onnx")
    if any(c.startswith("timm-o") for c in contenders):
        spec_base["timm_onnx"] = os.path.join(workdir, "timm.onnx")
    spec_base["bench_file"] = str(Path(__file__).resolve())
    say(f"preparing weights and ONNX exports in {workdir} ...")
    prepared = _prepare(args, dict(spec_base, threads=max(args.threads)), say)
    spec_base.update({k: v for k, v in prepared.items() if k in ("safetensors", "ours_onnx", "timm_onnx")})
    if "ours_onnx_error" in prepared:
        spec_base.pop("ours_onnx", None)
    if "timm_onnx_error" in prepared:
        spec_base.pop("timm_onnx", None)
    load = measure_load_time(args.python, args.model, prepared["safetensors"])
    say(f"model load from .safetensors: {load}")
    gflop = _run_one_shot("gflop", dict(spec_base, threads=max(args.threads)), args.python).get("gflop")
    say(f"GFLOP per image at {args.image_size} px: {gflop:.2f}" if gflop else "GFLOP count failed")

    results = {"contenders": {}, "skipped": skipped, "load": load, "gflop_per_image": gflop,
               "export_s": {k: prepared[k] for k in ("ours_onnx_s", "timm_onnx_s") if k in prepared},
               "model": args.model, "image_size": args.image_size, "batch_sizes": args.batch_sizes,
               "threads": args.threads, "rounds": args.rounds, "machine": cpu_info(), "started": time.time()}
    results["software"] = _software(args.python)
    settle = wait_for_idle(args.idle_limit, args.max_wait, say) if args.max_wait > 0 else {}
    results["load_at_start"] = settle
    ceilings = {}
    for threads in args.threads:
        got = _run_one_shot("ceilings", dict(spec_base, threads=threads), args.python)
        ceilings[threads] = got.get("ceilings", {"error": got.get("error")})
        say(f"ceilings, {threads} thread(s): {ceilings[threads]}")
    results["ceilings"] = ceilings

    foreign_all = []
    for threads in args.threads:
        workers = {}
        for name in contenders:
            spec = dict(spec_base, threads=threads)
            python = args.tf_python if name == "tf-slim" else args.python
            env = dict(os.environ)
            if name == "tf-slim":
                env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            worker = Worker(name, spec, python, env)
            hello = worker.request()
            key = f"{name}@{threads}"
            if not hello.get("ok"):
                skipped[name] = hello.get("error", "failed to start")
                say(f"  {name}: skipped ({skipped[name]})")
                worker.close()
                continue
            say(f"  {name} ({threads} thr): built in {hello['build_s']} s")
            workers[name] = worker
            results["contenders"][key] = {"name": name, "threads": threads, "build_s": hello["build_s"],
                                          "info": hello.get("info", {}), "batches": {}}
        try:
            for batch in args.batch_sizes:
                for round_no in range(args.rounds):
                    for name, worker in list(workers.items()):
                        key = f"{name}@{threads}"
                        entry = results["contenders"][key]["batches"].setdefault(
                            str(batch), {"times": [], "foreign": [], "retries": 0})
                        for attempt in range(args.retries + 1):
                            t0, b0 = _proc_busy_jiffies()
                            own0 = _pid_jiffies(worker.proc.pid) + _pid_jiffies(os.getpid())
                            reply = worker.request({"batch": batch, "min_iters": args.min_iters,
                                                    "min_time": args.slot_seconds})
                            t1, b1 = _proc_busy_jiffies()
                            own1 = _pid_jiffies(worker.proc.pid) + _pid_jiffies(os.getpid())
                            if not reply.get("ok"):
                                entry["error"] = reply.get("error")
                                break
                            foreign = max(0.0, ((b1 - b0) - (own1 - own0)) / max(t1 - t0, 1))
                            if reply.get("first_s") is not None:
                                entry["first_s"] = reply["first_s"]
                            if foreign <= args.foreign_limit or attempt == args.retries:
                                entry["times"].extend(reply["times"])
                                entry["foreign"].append(round(foreign, 3))
                                entry["peak_rss_mb"] = max(entry.get("peak_rss_mb", 0), reply["peak_rss_mb"])
                                foreign_all.append(foreign)
                                break
                            entry["retries"] += 1
                        if entry.get("error"):
                            say(f"  {name} b{batch}: {entry['error']}")
                            workers.pop(name).close()
                    say(f"  batch {batch}, {threads} thread(s): round {round_no + 1}/{args.rounds} done")
        finally:
            for worker in workers.values():
                worker.close()
    results["foreign_load"] = {"mean": round(statistics.fmean(foreign_all), 3) if foreign_all else None,
                               "max": round(max(foreign_all), 3) if foreign_all else None}
    results["loadavg_at_end"] = os.getloadavg()
    results["finished"] = time.time()
    summarize(results)
    return results


def _software(python: str) -> dict:
    script = """
import json, importlib
out = {}
for m in ("torch", "torchvision", "timm", "onnxruntime", "openvino", "onnx", "onnxscript", "numpy", "pnasnet"):
    try:
        out[m] = importlib.import_module(m).__version__
    except Exception:
        pass
print(json.dumps(out))
"""
    try:
        return json.loads(subprocess.run([python, "-c", script], capture_output=True, text=True).stdout.strip().splitlines()[-1])
    except Exception:
        return {}


def _precision_of(name: str) -> str:
    return "bfloat16" if name in BF16 else "int8" if name.endswith("int8") else "float32"


def summarize(results: dict) -> None:
    gflop = results.get("gflop_per_image") or LARGE_GFLOP_331
    for key, entry in results["contenders"].items():
        ceil = results["ceilings"].get(entry["threads"]) or results["ceilings"].get(str(entry["threads"])) or {}
        precision = _precision_of(entry["name"])
        ceiling = ceil.get(f"matmul_{precision}")
        for batch, b in entry["batches"].items():
            if not b["times"]:
                continue
            n = int(batch)
            median = statistics.median(b["times"])
            best = min(b["times"])
            b["latency_ms"] = round(median * 1000, 1)
            b["images_per_s"] = round(n / median, 2)
            b["best_images_per_s"] = round(n / best, 2)
            b["gflop_per_s"] = round(n / median * gflop, 1)
            b["fraction_of_ceiling"] = round(n / median * gflop / ceiling, 3) if ceiling else None
            b["precision"] = precision


def to_markdown(results: dict) -> str:
    lines = []
    m = results["machine"]
    lines.append(f"# PNASNet inference benchmark: {results['model']} at {results['image_size']} px\n")
    lines.append(f"- Machine: {m.get('model', '?')}, {m.get('cpus')} CPUs, ISA {', '.join(m.get('isa', []))}")
    lines.append(f"- Software: " + ", ".join(f"{k} {v}" for k, v in results.get("software", {}).items()))
    start = results.get("load_at_start", {})
    lines.append(f"- Machine load: {start.get('busy_before_start', '?')} busy before the start "
                 f"(loadavg {', '.join(f'{x:.2f}' for x in start.get('loadavg', []))}); other processes took "
                 f"{results['foreign_load']['mean']} of the CPUs on average during the timed slots "
                 f"(max {results['foreign_load']['max']}); slots above {results.get('foreign_limit', '?')} were re-run")
    for threads, c in results["ceilings"].items():
        lines.append(f"- Ceilings, {threads} thread(s), GFLOP/s: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    lines.append(f"- Work: {results['gflop_per_image']:.2f} GFLOP per image (counted); model load from our "
                 f".safetensors: {results['load'].get('best_s')} s (first {results['load'].get('first_s')} s, "
                 f"{results['load'].get('file_mb')} MB)")
    if results.get("export_s"):
        lines.append(f"- ONNX export time, s: {results['export_s']}")
    lines.append(f"- {results['rounds']} interleaved rounds; images/s from the median batch latency\n")
    batches = [str(b) for b in results["batch_sizes"]]
    for threads in results["threads"]:
        lines.append(f"## {threads} thread(s)\n")
        head = "| contender | prec | build s |"
        sep = "|---|---|---|"
        for b in batches:
            head += f" b{b} img/s | b{b} ms | b{b} GFLOP/s | b{b} % ceil | b{b} peak RSS MB |"
            sep += "---|---|---|---|---|"
        lines.append(head)
        lines.append(sep)
        for key, entry in results["contenders"].items():
            if entry["threads"] != threads:
                continue
            prec = {"bfloat16": "bf16", "int8": "int8", "float32": "fp32"}[_precision_of(entry["name"])]
            row = f"| {entry['name']} | {prec} | {entry['build_s']} |"
            for b in batches:
                e = entry["batches"].get(b, {})
                if "images_per_s" not in e:
                    row += " - | - | - | - | - |"
                    continue
                frac = f"{100 * e['fraction_of_ceiling']:.0f}%" if e.get("fraction_of_ceiling") else "-"
                row += (f" {e['images_per_s']} | {e['latency_ms']} | {e['gflop_per_s']} | {frac} | "
                        f"{e.get('peak_rss_mb', '-')} |")
            lines.append(row)
        lines.append("")
    if results.get("skipped"):
        lines.append("## Skipped\n")
        for name, why in results["skipped"].items():
            lines.append(f"- {name}: {why}")
        lines.append("")
    lines.append("## Contenders\n")
    for name in {e["name"] for e in results["contenders"].values()}:
        lines.append(f"- `{name}`: {DESCRIPTIONS.get(name, name)}")
    return "\n".join(lines) + "\n"


def print_table(results: dict, say=print) -> None:
    for threads in results["threads"]:
        say(f"\n{results['model']} {results['image_size']} px, {threads} thread(s): images/s (latency ms, % of ceiling, peak RSS MB)")
        for key, entry in results["contenders"].items():
            if entry["threads"] != threads:
                continue
            cells = []
            for b in results["batch_sizes"]:
                e = entry["batches"].get(str(b), {})
                if "images_per_s" in e:
                    frac = f"{100 * e['fraction_of_ceiling']:.0f}%" if e.get("fraction_of_ceiling") else "-"
                    cells.append(f"b{b} {e['images_per_s']:6.2f} ({e['latency_ms']:.0f}, {frac}, {e.get('peak_rss_mb', 0):.0f})")
                else:
                    cells.append(f"b{b} {'-':>6}")
            say(f"  {entry['name']:24s} " + "  ".join(cells))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pnasnet5_large")
    parser.add_argument("--weights", help="weights for every contender (a TF-Slim checkpoint also feeds tf-slim); "
                        "default random")
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's (331 Large)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1])
    parser.add_argument("--contenders", nargs="+", default=None, metavar="NAME",
                        help=f"default: {' '.join(DEFAULT)}; also: {' '.join(EXTRA)}; 'ours' or 'peers' for a group")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-iters", type=int, default=1, help="timed calls per contender per round, at least")
    parser.add_argument("--slot-seconds", type=float, default=1.5,
                        help="each contender's turn in a round lasts at least this long (several calls)")
    parser.add_argument("--python", default=sys.executable, help="Python that runs the PyTorch/ONNX/OpenVINO workers")
    parser.add_argument("--tf-python", help="Python with TensorFlow 2.12 and tf-slim (for tf-slim)")
    parser.add_argument("--slim-dir", help="folder with TF-Slim's pnasnet.py, nasnet.py, nasnet_utils.py")
    parser.add_argument("--tf-checkpoint", help="TF checkpoint for tf-slim (default: --weights if it is one)")
    parser.add_argument("--idle-limit", type=float, default=0.10, help="wait until the machine is at most this busy")
    parser.add_argument("--max-wait", type=float, default=600, help="seconds to wait for that (0: don't)")
    parser.add_argument("--foreign-limit", type=float, default=0.15,
                        help="re-run a slot in which other processes took more than this fraction of the CPUs")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results", help="folder for results.json and results.md")
    parser.add_argument("--tag", default=None, help="file name stem (default: MODEL-SIZE)")
    parser.add_argument("--verbose", action="store_true", help="show the workers' output")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the temporary folder with the weights and ONNX exports (default: removed)")
    return parser


def resolve_args(args) -> argparse.Namespace:
    if args.contenders is None:
        args.contenders = list(DEFAULT)
    names = []
    for c in args.contenders:
        names.extend(OURS if c == "ours" else PEERS if c == "peers" else [c])
    unknown = [c for c in names if c not in ALL]
    if unknown:
        raise ValueError(f"unknown contender(s) {unknown}; choose from {ALL}")
    args.contenders = list(dict.fromkeys(names))
    if args.image_size is None:
        args.image_size = 331 if "large" in args.model else 224
    if args.tf_checkpoint is None and args.weights and (str(args.weights).endswith(".ckpt") or
                                                        Path(str(args.weights) + ".index").exists()):
        args.tf_checkpoint = args.weights
    args.batch_sizes = sorted(set(args.batch_sizes))
    return args


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1], json.loads(argv[3]))
    args = resolve_args(build_parser().parse_args(argv))
    results = run_benchmark(args)
    results["foreign_limit"] = args.foreign_limit
    print_table(results)
    write_results(results, args.out, args.tag)
    return 0


def write_results(results: dict, out: str, tag: str | None) -> tuple[Path, Path]:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    stem = tag or f"{results['model']}-{results['image_size']}"
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    md_path.write_text(to_markdown(results))
    print(f"wrote {json_path} and {md_path}")
    return json_path, md_path


# ===================================================================================== agreement
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "cat", "camera", "moon", "coins", "clock")


# int8 calibration images: other scikit-image samples than the compared ones
CALIBRATION_PHOTOS = ("brick", "grass", "gravel", "eagle", "page", "text", "colorwheel", "logo")


def calibration_photographs(size: int):
    """:data:`CALIBRATION_PHOTOS` and their mirror images, as :func:`photographs` gives them."""
    import torch

    images, _ = photographs(size, CALIBRATION_PHOTOS)
    return torch.cat([images, images.flip(-1)])


def photographs(size: int, names=PHOTOS):
    """scikit-image's sample photographs, centre square, resized to ``size`` (bicubic), [N,3,S,S] in
    [0, 1]; grey ones repeated to RGB."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    images, found = [], []
    for name in names:
        try:
            array = np.asarray(getattr(data, name)())
        except Exception:  # some need a download: skipped
            continue
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        array = array[..., :3]
        h, w = array.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = Image.fromarray(array[top:top + side, left:left + side]).resize((size, size), Image.BICUBIC)
        images.append(np.asarray(image, dtype=np.float32) / 255.0)
        found.append(name)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), found


def agreement_metrics(test, reference) -> dict:
    """Agreement of ``test`` with ``reference`` ([N, K] float): plain relative errors, and the
    same on the image-dependent part (each row minus the batch mean), which is what matters when
    every image shares a large common component."""
    import torch

    a, b = test.double(), reference.double()
    ac, bc = a - a.mean(0), b - b.mean(0)
    cos = torch.nn.functional.cosine_similarity(ac, bc, dim=1)
    return {"max_rel_err": float((a - b).abs().max() / b.abs().max()),
            "rel_l2": float((a - b).norm() / b.norm()),
            "centered_rel_l2": float((ac - bc).norm() / bc.norm()),
            "centered_cosine_min": float(cos.min()), "centered_cosine_mean": float(cos.mean()),
            "image_dependent_fraction": float(bc.norm() / b.norm())}


def run_agreement(cases: list[tuple[str, str, str, int]], paths: list[tuple[str, str]], say=print) -> dict:
    """For each (label, model name, weights, size) case: every (backend, precision) path against
    the plain float32 model on the photographs."""
    import torch

    import pnasnet
    from pnasnet.inference import backend_unavailable, optimize

    out = {"photos": None, "cases": {}}
    for label, name, weights, size in cases:
        images, names = photographs(size)
        out["photos"] = names
        model = pnasnet.create_model(name, weights=weights, progress=False)
        with torch.inference_mode():
            ref_logits = model.classify(images) if model.num_classes else None
            ref_feats = model.features(images)
        case = {"model": name, "weights": str(weights), "size": size, "paths": {}}
        for backend, precision in paths:
            key = f"{backend}/{precision}"
            reason = backend_unavailable(backend)
            if reason is None and precision == "int8":
                from .int8 import int8_unavailable

                reason = int8_unavailable()
            if reason:
                case["paths"][key] = {"skipped": reason}
                continue
            if precision == "int8":
                feats, logits = _int8_two_fold(model, backend, size, images)
            else:
                fast = optimize(model, backend, precision, image_size=size)
                feats = fast.features(images)
                logits = fast.classify(images) if ref_logits is not None else None
                del fast
            entry = {"features": agreement_metrics(feats, ref_feats)}
            if ref_logits is not None:
                entry["logits"] = agreement_metrics(logits, ref_logits)
                entry["top1_agree"] = float((logits.argmax(1) == ref_logits.argmax(1)).double().mean())
            case["paths"][key] = entry
            say(f"{label} {key}: features cos(centered) min {entry['features']['centered_cosine_min']:.5f}"
                + (f", logits centered rel L2 {entry['logits']['centered_rel_l2']:.4f}, max rel err "
                   f"{entry['logits']['max_rel_err']:.2e}, top-1 agree {entry['top1_agree']:.2f}" if "logits" in entry else ""))
        out["cases"][label] = case
    return out


def _int8_two_fold(model, backend: str, size: int, images):
    """int8 outputs for every photograph from a model calibrated on the *other* half of them (and
    their mirror images): in-domain calibration, never on the image compared."""
    import torch

    from pnasnet.inference import optimize

    halves = [torch.arange(0, len(images), 2), torch.arange(1, len(images), 2)]
    feats, logits = None, None
    for calibrate, compare in ((halves[0], halves[1]), (halves[1], halves[0])):
        calibration = torch.cat([images[calibrate], images[calibrate].flip(-1)])
        fast = optimize(model, backend, "int8", image_size=size, calibration=calibration)
        f = fast.features(images[compare])
        feats = f.new_zeros(len(images), f.shape[1]) if feats is None else feats
        feats[compare] = f
        if model.num_classes:
            g = fast.classify(images[compare])
            logits = g.new_zeros(len(images), g.shape[1]) if logits is None else logits
            logits[compare] = g
        del fast
    return feats, logits


def agreement_markdown(result: dict) -> str:
    lines = ["# Agreement with the plain float32 model\n",
             f"Photographs (scikit-image): {', '.join(result['photos'] or [])}. 'centered' = each vector minus "
             "the batch mean (the image-dependent part).\n",
             "| case | path | logits max rel err | logits rel L2 | logits centered rel L2 | features centered cosine min / mean | top-1 agree |",
             "|---|---|---|---|---|---|---|"]
    for label, case in result["cases"].items():
        for key, e in case["paths"].items():
            if "skipped" in e:
                lines.append(f"| {label} | {key} | skipped: {e['skipped']} | | | | |")
                continue
            lg = e.get("logits", {})
            f = e["features"]
            lines.append(f"| {label} ({case['size']} px) | {key} | {lg.get('max_rel_err', float('nan')):.2e} | "
                         f"{lg.get('rel_l2', float('nan')):.4f} | {lg.get('centered_rel_l2', float('nan')):.4f} | "
                         f"{f['centered_cosine_min']:.5f} / {f['centered_cosine_mean']:.5f} | {e.get('top1_agree', '-')} |")
    return "\n".join(lines) + "\n"


# Last, so that a worker started as a script has every function above defined.
if __name__ == "__main__":
    sys.exit(main())
