"""Bounded loopback load test of ``pnasnet serve``: throughput and latency percentiles with dynamic
batching (max batch sizes 1, 4, 8) against one request at a time.

For each configuration a fresh server starts on 127.0.0.1 (a free port, its own process group,
stopped with SIGTERM and then SIGKILL of the group), receives a few warm-up requests, then exactly
``--requests`` classify requests from ``--concurrency`` concurrent clients (one image each), and
is stopped. The mean batch size comes from the server's own /metrics. Nothing leaves the machine.

    python benchmarks/serve_load.py                       # PNASNet-5 Mobile, random weights, 224 px
    python benchmarks/serve_load.py --model pnasnet5_large --requests 64 --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_server import ServerProcess, metric_value  # noqa: E402  (the tests' server runner)


def test_image(side: int = 400) -> bytes:
    """A deterministic photo-sized JPEG (smooth gradients plus noise, so it compresses like one)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    pixels = np.stack([x, y, (x + y) / 2], -1) * 200 + rng.normal(0, 20, (side, side, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


async def _load(url: str, body: bytes, requests: int, concurrency: int) -> tuple[float, list[float], list[int]]:
    """``(wall seconds, latencies, status codes)`` of ``requests`` POSTs, ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)
    latencies, codes = [], []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        async def one():
            async with gate:
                start = time.perf_counter()
                response = await http.post("/v1/classify", content=body, headers={"Content-Type": "image/jpeg"})
                latencies.append(time.perf_counter() - start)
                codes.append(response.status_code)

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        return time.perf_counter() - start, latencies, codes


def _batch_totals(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics").text
    return metric_value(text, "pnasnet_batch_size_sum"), metric_value(text, "pnasnet_batch_size_count")


def run_configuration(args, max_batch: int, concurrency: int, body: bytes, log_dir: Path) -> dict:
    server_args = ["--model", args.model, "--max-batch-size", max_batch, "--max-wait-ms", args.max_wait_ms,
                   "--max-queue", max(64, 2 * concurrency), "--timeout", 600, "--log-level", "warning"]
    if args.weights:
        server_args += ["--weights", args.weights]
    if args.image_size:
        server_args += ["--image-size", args.image_size]
    if args.threads:
        server_args += ["--threads", args.threads]
    log = log_dir / f"server_b{max_batch}_c{concurrency}.log"
    with ServerProcess(server_args, log, start_timeout=300) as server:
        asyncio.run(_load(server.url, body, max(2, max_batch), max(2, max_batch)))  # warm-up
        before = _batch_totals(server.url)
        wall, latencies, codes = asyncio.run(_load(server.url, body, args.requests, concurrency))
        after = _batch_totals(server.url)
    batch_sum, batch_count = (a - b for a, b in zip(after, before))
    ms = sorted(1000 * s for s in latencies)

    def pct(q):
        return ms[min(len(ms) - 1, int(round(q / 100 * (len(ms) - 1))))]

    return {"max_batch_size": max_batch, "concurrency": concurrency, "requests": args.requests,
            "errors": sum(code != 200 for code in codes), "seconds": round(wall, 2),
            "requests_per_s": round(args.requests / wall, 2), "p50_ms": round(pct(50), 1),
            "p90_ms": round(pct(90), 1), "p99_ms": round(pct(99), 1), "mean_ms": round(statistics.mean(ms), 1),
            "mean_batch": round(batch_sum / batch_count, 2) if batch_count else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pnasnet5_mobile")
    parser.add_argument("--weights", default="none",
                        help="default: none = random weights (speed does not depend on them)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--threads", type=int, help="torch threads in the inference worker")
    parser.add_argument("--requests", type=int, default=200, help="requests per configuration (default 200)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients with batching (default 16)")
    parser.add_argument("--batch-sizes", default="1,4,8", help="max batch sizes to compare (default 1,4,8)")
    parser.add_argument("--max-wait-ms", type=float, default=10)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    body = test_image()
    load_before = os.getloadavg()[0]
    configurations = [(1, 1)] + [(int(b), args.concurrency) for b in args.batch_sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pnasnet-serve-load-") as logs:
        for max_batch, concurrency in configurations:
            row = run_configuration(args, max_batch, concurrency, body, Path(logs))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    print(f"\n{args.model}, {args.image_size or 'default'} px, {args.requests} requests of one {len(body)}-byte JPEG "
          f"per configuration, loopback; {platform.machine()}, {os.cpu_count()} CPUs, worker threads "
          f"{args.threads or 'default'}; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
          "(other work on the machine slows every configuration alike)")
    print(f"{'configuration':<34} {'req/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'batch':>6} {'errors':>6}")
    for r in rows:
        name = ("one request at a time" if r["concurrency"] == 1 else
                f"max batch {r['max_batch_size']}, {r['concurrency']} clients")
        print(f"{name:<34} {r['requests_per_s']:>7.2f} {r['p50_ms']:>8.1f} {r['p90_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['mean_batch'] or 0:>6.2f} {r['errors']:>6}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows}, indent=2) + "\n")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
