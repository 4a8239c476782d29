"""One contender's worker process: builds it, then times batches on request (one JSON object per line
on stdin/stdout), with its own peak memory.

Started as a plain script (``python worker.py --worker NAME --spec JSON``): it imports nothing outside
the standard library at the top, so that the TensorFlow worker (``tf-slim``, built here) runs in another
environment without pnasnet; the other contenders and the ceilings are imported from
:mod:`pnasnet.bench` when asked for, in a Python that has it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types


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


def _images(batch: int, size: int, layout: str = "nchw"):
    import numpy as np

    rng = np.random.default_rng(1234)
    x = rng.random((batch, 3, size, size), dtype=np.float32)
    return x.transpose(0, 2, 3, 1).copy() if layout == "nhwc" else x


class HParams:
    """Stand-in for ``tf.contrib.training.HParams`` (only what TF-Slim's nasnet sources use)."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def set_hparam(self, name, value):
        if not hasattr(self, name):
            raise ValueError(f"unknown hparam {name!r}")
        setattr(self, name, value)

    def values(self):
        return dict(self.__dict__)

    def __repr__(self):
        return f"HParams({self.values()!r})"


def import_tf_slim(slim_dir: str):
    """``(tensorflow, tf.compat.v1, tf_slim, pnasnet, nasnet, nasnet_utils)``: TF-Slim's nasnet
    sources in ``slim_dir`` imported under TF 2 with ``tensorflow.contrib`` aliased to ``tf_slim``.
    Shared with tools/make_tf_slim_fixtures.py, which loads this file by its path."""
    import importlib

    import tensorflow
    import tf_slim

    tf1 = tensorflow.compat.v1
    tf1.disable_eager_execution()
    training = types.ModuleType("tensorflow.contrib.training")
    training.HParams = HParams
    contrib = types.ModuleType("tensorflow.contrib")
    contrib.__path__ = []
    contrib.framework = contrib.layers = contrib.slim = tf_slim  # arg_scope, l2_regularizer, flatten, ...
    contrib.training = training
    # The sources say "import tensorflow as tf" and use TF1 names (tf.variable_scope, tf.contrib...):
    # give them a module that forwards to tf.compat.v1 and carries .contrib.
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
        nasnet_utils = importlib.import_module("nets.nasnet.nasnet_utils")
        nasnet = importlib.import_module("nets.nasnet.nasnet")
        pnasnet = importlib.import_module("nets.nasnet.pnasnet")
    finally:
        sys.modules["tensorflow"] = real
    return tensorflow, tf1, tf_slim, pnasnet, nasnet, nasnet_utils


def _build_tf(spec: dict):
    tensorflow, tf1, slim, tf_pnasnet, _, _ = import_tf_slim(spec["slim_dir"])
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


def worker_main(name: str, spec: dict) -> int:
    """Serve timing requests on stdin/stdout (one JSON object per line)."""
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints of the libraries must not mix with the protocol

    def reply(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        if name == "ceilings":
            from pnasnet.bench.ceilings import measure_ceilings

            reply({"ok": True, "ceilings": measure_ceilings(spec["threads"])})
            return 0
        if name == "gflop":
            from pnasnet.bench.ceilings import count_gflop

            reply({"ok": True, "gflop": count_gflop(spec["model"], spec["size"])})
            return 0
        start = time.perf_counter()
        if name == "tf-slim":
            run, info = _build_tf(spec)
        else:
            from pnasnet.bench.contenders import build_contender

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


def main(argv: list[str] | None = None) -> int:
    """``worker.py --worker NAME --spec JSON``, as :class:`pnasnet.bench.run.Worker` starts it."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["--worker"] or argv[2:3] != ["--spec"]:
        raise SystemExit("usage: worker.py --worker NAME --spec JSON")
    return worker_main(argv[1], json.loads(argv[3]))


if __name__ == "__main__":
    sys.exit(main())
