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

The worker processes run :mod:`.worker` as a plain script (see there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .ceilings import cpu_info
from .contenders import ALL, DEFAULT, EXTRA, OURS, PEERS
from .machine_load import pid_jiffies, proc_busy_jiffies, wait_for_idle
from .report import print_table, summarize, write_results

WORKER_SCRIPT = Path(__file__).resolve().with_name("worker.py")


class Worker:
    def __init__(self, name: str, spec: dict, python: str, env: dict | None = None):
        self.name = name
        cmd = [python, str(WORKER_SCRIPT), "--worker", name, "--spec", json.dumps(spec)]
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
    script = """
import json, sys, time, os
spec = json.loads(sys.argv[1]); out = {}
import torch, pnasnet
from pnasnet.weights.ours import save_safetensors
torch.manual_seed(0)
model = pnasnet.create_model(spec["model"], weights=spec.get("weights"), progress=False)
path = os.path.join(spec["workdir"], "model.safetensors")
save_safetensors(model, path, {"variant": spec["model"], "source": str(spec.get("weights") or "random")})
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
        from pnasnet.bench.contenders import timm_model
        m = timm_model(spec)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (torch.rand(2, 3, spec["size"], spec["size"]),), spec["timm_onnx"],
                              input_names=["images"], output_names=["logits"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
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
                            t0, b0 = proc_busy_jiffies()
                            own0 = pid_jiffies(worker.proc.pid) + pid_jiffies(os.getpid())
                            reply = worker.request({"batch": batch, "min_iters": args.min_iters,
                                                    "min_time": args.slot_seconds})
                            t1, b1 = proc_busy_jiffies()
                            own1 = pid_jiffies(worker.proc.pid) + pid_jiffies(os.getpid())
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
    args = resolve_args(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    results = run_benchmark(args)
    results["foreign_limit"] = args.foreign_limit
    print_table(results)
    write_results(results, args.out, args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
