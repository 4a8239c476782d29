"""Feature extraction throughput: the single-process command against Ray Data with 1 and 2 model
actors, on the same images, on this machine.

    python benchmarks/ray_scaling.py                      # Mobile (160 images) and Large (24 images)
    python benchmarks/ray_scaling.py --models mobile --images 128 --out results.json

What is timed:
* ``local``: ``pnasnet.tasks.extract_features`` (the ``--engine local`` command's work: decoding
  workers + batched model + chunked Parquet), model already loaded, with PyTorch's default threads
  (one per core) and with one thread. (On a machine shared with other jobs, two OpenMP threads on
  two cores stall whenever another process takes a core: compare the one-thread rows there.)
* ``ray, N actor(s)``: ``pnasnet.engines.extract_features_ray`` (one Parquet part per batch, so
  rows are seen as they come) on a Ray started once beforehand
  (``ray.init(num_cpus=<cores>)``), model already loaded on the driver; includes shipping the model
  to the actors and their start, the decode tasks, the writes and the final listing of the output.
* ``ray start-up``: ``ray.init`` and ``ray.shutdown`` of a local Ray, paid once per command.
* ``cli``: the whole ``pnasnet features ... --engine local|ray`` process, imports and Ray start-up
  included (``--cli``).

Each configuration runs a one-batch job and the full job: ``marginal_images_per_s`` =
(images - batch) / (full - one batch) is the rate a long job approaches, ``fixed_s`` = full -
images / marginal what a job pays whatever its size (Ray: shipping the model, starting the actors,
their first forward pass, filling the pipeline; the local run's model is warmed up beforehand, as
a long job amortises that too).

Images are JPEGs of the scikit-image photographs, cropped and resized to 300-500 px (decoded and
preprocessed like any input). Weights are random (seeded): throughput does not depend on them.
Each measurement is the best of ``--repeat`` runs; the machine's load average is recorded, since
on a shared machine other jobs take cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import pnasnet
from pnasnet.engines import extract_features_ray
from pnasnet.tasks import expand_inputs, extract_features

MODELS = {"mobile": ("pnasnet5_mobile", 16), "large": ("pnasnet5_large", 4)}  # name, batch size


def write_images(folder: Path, count: int) -> list[str]:
    from skimage import data

    photos = [getattr(data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket")]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1)), int(w * rng.uniform(0.6, 1))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        side = int(rng.integers(300, 501))
        Image.fromarray(photo[top: top + ch, left: left + cw]).resize((side, side * ch // cw)).save(
            folder / f"img_{i:04d}.jpg", quality=90)
    return expand_inputs([folder])


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def wait_for_quiet(threshold: float, max_wait: float) -> None:
    """Wait (at most ``max_wait`` s) until the 1-minute load average is below ``threshold``: on a
    shared machine other jobs' bursts otherwise decide the numbers."""
    deadline = time.monotonic() + max_wait
    while load_average() >= threshold and time.monotonic() < deadline:
        time.sleep(5)


def timed(fn, count: int, repeat: int) -> float:
    """Best wall time of ``repeat`` runs of ``fn(count)``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        summary = fn(count)
        best = min(best, time.perf_counter() - start)
        assert summary.written == count, summary
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobile,large", help="comma-separated: mobile, large")
    parser.add_argument("--images", type=int, help="images per model (default 64 Mobile, 16 Large)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cli", action="store_true", help="also time the whole CLI process (Mobile only)")
    parser.add_argument("--quiet-load", type=float, default=0.0,
                        help="before each measurement, wait until the load average is below this (0: don't)")
    parser.add_argument("--max-wait", type=float, default=120.0, help="seconds to wait for --quiet-load at most")
    parser.add_argument("--out", default=str(Path(__file__).with_name("ray_scaling_results.json")))
    args = parser.parse_args()
    import ray

    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="pnasnet-ray-bench-"))
    results: dict = {"machine": {"cpus": cores, "python": platform.python_version(), "torch": torch.__version__,
                                 "ray": ray.__version__, "processor": platform.processor() or platform.machine()},
                     "load_average_start": load_average(), "runs": []}
    try:
        start = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        results["ray_init_s"] = round(time.perf_counter() - start, 2)
        for key in args.models.split(","):
            name, batch = MODELS[key]
            count = args.images or (160 if key == "mobile" else 24)
            paths = write_images(work / f"images_{key}", count)
            torch.manual_seed(0)
            model = pnasnet.create_model(name)
            size = model.expected_image_size[0]

            with torch.inference_mode():  # the first forward pass sets up kernels; each Ray actor pays it too
                model.features(torch.rand(batch, 3, size, size))

            def local(n, threads=None):
                out = work / f"{key}_local_{time.monotonic_ns()}.parquet"
                before = torch.get_num_threads()
                torch.set_num_threads(threads or before)
                try:
                    return extract_features(model, paths[:n], out, image_size=size, batch_size=batch)
                finally:
                    torch.set_num_threads(before)

            configs = [(f"local, {cores} torch threads (+1 decode worker)", local, {"threads": cores}),
                       ("local, 1 torch thread (+1 decode worker)", lambda n: local(n, 1), {"threads": 1})]
            for actors, threads in ((1, 1), (1, cores), (2, 1)):
                if actors > cores:
                    continue

                def on_ray(n, actors=actors, threads=threads):
                    out = work / f"{key}_ray_{time.monotonic_ns()}"
                    return extract_features_ray(model, paths[:n], out, image_size=size, batch_size=batch,
                                                concurrency=f"{actors}:{actors}", threads=threads, quiet=True)
                configs.append((f"ray, {actors} actor(s) x {threads} thread(s)", on_ray,
                                {"actors": actors, "threads_per_actor": threads}))
            for label, fn, extra in configs:
                if args.quiet_load:
                    wait_for_quiet(args.quiet_load, args.max_wait)
                load = load_average()
                small = timed(fn, batch, args.repeat)
                seconds = timed(fn, count, args.repeat)
                marginal = (count - batch) / (seconds - small) if seconds > small else float("nan")
                row = {"model": name, "images": count, "image_size": size, "batch_size": batch, "config": label,
                       "seconds": round(seconds, 2), "images_per_s": round(count / seconds, 2),
                       "one_batch_s": round(small, 2), "marginal_images_per_s": round(marginal, 2),
                       "fixed_s": round(seconds - count / marginal, 2),
                       "load_average_before": load, "load_average_after": load_average(), **extra}
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
        start = time.perf_counter()
        ray.shutdown()
        results["ray_shutdown_s"] = round(time.perf_counter() - start, 2)

        if args.cli:
            paths_dir = work / "images_mobile"
            if not paths_dir.exists():
                write_images(paths_dir, args.images or 160)
            for engine in ("local", "ray"):
                out = work / f"cli_{engine}" if engine == "ray" else work / "cli_local.parquet"
                command = [sys.executable, "-m", "pnasnet", "features", str(paths_dir), "--out", str(out),
                           "--model", "pnasnet5_mobile", "--weights", "none", "--batch-size", "16", "-q",
                           "--engine", engine]
                if args.quiet_load:
                    wait_for_quiet(args.quiet_load, args.max_wait)
                load = load_average()
                start = time.perf_counter()
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                row = {"model": "pnasnet5_mobile", "images": len(expand_inputs([paths_dir])),
                       "config": f"cli --engine {engine} (whole process)",
                       "seconds": round(time.perf_counter() - start, 2), "load_average_before": load}
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    results["load_average_end"] = load_average()
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
