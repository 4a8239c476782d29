"""End to end ``pnasnet features`` (decode, transform, inference, write) against the model alone.

For each back end, the command runs twice in a fresh process over JPEG photographs (scikit-image's
samples, randomly cropped, rescaled and re-encoded at camera-like sizes, seeded): once over
``--images`` files and once over a fifth of them. The steady-state rate is the difference,
``(N - N/5) / (t_N - t_N/5)``, so weights loading, the OpenVINO conversion or its cache lookup and
process start-up (reported separately, as the small run's time) do not count. The model-only rate
is the same back end in a fresh process on random pixels at the command's batch size (malloc set
as the command sets it), median of several batches, measured right after. Nothing leaves the machine.

    python benchmarks/features_e2e.py --weights large.safetensors --backends auto eager
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of 480-1200 px sides cut from scikit-image's colour photographs."""
    from skimage import data

    sources = [np.asarray(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee", "rocket")]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        src = Image.fromarray(sources[i % len(sources)])
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        scale = rng.uniform(480, 1200) / max(cw, ch)
        crop = src.crop((x, y, x + cw, y + ch)).resize((int(cw * scale), int(ch * scale)), Image.BICUBIC)
        path = folder / f"photo_{i:04d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def run_command(photos: list[Path], out: Path, args) -> float:
    listing = out.with_suffix(".txt")
    listing.write_text("\n".join(map(str, photos)) + "\n")
    command = [sys.executable, "-m", "pnasnet", "features", f"@{listing}", "--out", str(out), "--model", args.model,
               "--weights", args.weights, "--backend", args.backend_now, "--batch-size", str(args.batch_size),
               "--threads", str(args.threads), "-q"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return seconds


def model_only(args) -> tuple[float, str]:
    import torch

    import pnasnet
    from pnasnet.inference import backend_of, for_inference, keep_freed_memory

    keep_freed_memory()  # as the command does for its batch runs
    torch.set_num_threads(args.threads)
    model = pnasnet.create_model(args.model, weights=args.weights, progress=False).eval()
    size = model.expected_image_size[0]
    runnable = for_inference(model, args.backend_now, image_size=size, threads=args.threads, in_place=True)
    x = torch.rand(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        runnable.features(x)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            runnable.features(x)
            times.append(time.perf_counter() - start)
    return args.batch_size / statistics.median(times), backend_of(runnable)


def model_only_in_a_fresh_process(args) -> tuple[float, str]:
    command = [sys.executable, __file__, "--model-only-for", args.backend_now, "--model", args.model,
               "--weights", args.weights, "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--repeats", str(args.repeats)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"model-only run failed:\n{result.stderr[-2000:]}")
    rate, ran = json.loads(result.stdout.strip().splitlines()[-1])
    return rate, ran


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pnasnet5_large")
    parser.add_argument("--weights", required=True, help="weights for both (a path, or tf-slim where it downloads)")
    parser.add_argument("--backends", nargs="+", default=["auto", "eager"])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16, help="the command's default")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the rows here too")
    parser.add_argument("--model-only-for", help=argparse.SUPPRESS)  # the fresh process's part
    args = parser.parse_args()
    if args.model_only_for:
        args.backend_now = args.model_only_for
        print(json.dumps(model_only(args)))
        return

    from pnasnet.bench.ceilings import cpu_info
    from pnasnet.inference import cpu_support

    rows = []
    with tempfile.TemporaryDirectory(prefix="pnasnet-e2e-") as tmp:
        tmp = Path(tmp)
        photos = make_photos(tmp, args.images)
        small = photos[: args.images // 5]
        for backend in args.backends:
            args.backend_now = backend
            run_command(small, tmp / f"warm-{backend}.npy", args)  # the OpenVINO conversion, if any, once
            t_small = run_command(small, tmp / f"small-{backend}.npy", args)
            t_full = run_command(photos, tmp / f"full-{backend}.npy", args)
            e2e = (len(photos) - len(small)) / (t_full - t_small)
            only, ran = model_only_in_a_fresh_process(args)
            rows.append({"backend": backend, "ran": ran, "end_to_end_img_s": round(e2e, 2),
                         "model_only_img_s": round(only, 2), "ratio": round(e2e / only, 3),
                         "fixed_cost_s": round(t_small - len(small) / e2e, 1),
                         "wall_s": {"small": round(t_small, 1), "full": round(t_full, 1)}})
            print(rows[-1], flush=True)
    info = cpu_info()
    print(f"\n{args.model}, {args.images} JPEGs, batch {args.batch_size}, {args.threads} threads; "
          f"CPU: {info.get('model', '?')}, {cpu_support().describe()}\n")
    print("| --backend | ran | end to end img/s | model only img/s | end to end / model | start-up s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['ran']} | {r['end_to_end_img_s']} | {r['model_only_img_s']} | "
              f"{r['ratio']:.2f} | {r['fixed_cost_s']} |")
    if args.json:
        recorded = {k: v for k, v in vars(args).items() if k not in ("backend_now", "json", "model_only_for")}
        recorded["weights"] = Path(args.weights).name if os.path.exists(args.weights) else args.weights  # not a path
        Path(args.json).write_text(json.dumps({"cpu": info, "args": recorded, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
