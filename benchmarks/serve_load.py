"""Bounded loopback load test of ``pnasnet serve``: requests/s and latency percentiles for 1, 4 and
16 concurrent clients on each engine (LitServe; Ray Serve with 1 and 2 replicas), with the
model-only images/s at the same batch size beside them, measured just before each row (the gap is the serving overhead: HTTP,
decoding, batching, moving requests between processes).

For each engine one server starts on 127.0.0.1 (a free port, its own session, stopped with SIGTERM
and then SIGKILL of whatever is left), receives a few warm-up requests, then for each concurrency
exactly ``--requests`` classify requests (one JPEG each), and is stopped. The mean batch size comes
from the server's own /metrics (on Ray, summed over the replicas). The model-only figure runs the
same model form in this process (random pixels, no decoding) with the same threads as a worker, just
before each row while the server idles, so both see the same load from other work on the machine
(with two Ray replicas, the ceiling is twice the model-only figure).
Nothing leaves the machine.

    python benchmarks/serve_load.py                       # PNASNet-5 Mobile, random weights, 224 px
    python benchmarks/serve_load.py --engines litserve,ray:2 --concurrency 16 --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from pnasnet.bench.ceilings import cpu_info

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


def _batch_totals(url: str, replicas: int) -> tuple[float, float]:
    """Batch-size sum and count over the server; on Ray, over each replica's /metrics (a scrape
    is answered by one replica, named by ``pnasnet_replica{pid=...}``)."""
    seen: dict[str, tuple[float, float]] = {}
    for _ in range(40):
        text = httpx.get(url + "/metrics", timeout=60).text
        pid = re.search(r'^pnasnet_replica\{pid="(\d+)"\}', text, re.M)
        seen[pid.group(1) if pid else "-"] = (metric_value(text, "pnasnet_batch_size_sum"),
                                              metric_value(text, "pnasnet_batch_size_count"))
        if len(seen) >= replicas:
            break
    return sum(v[0] for v in seen.values()), sum(v[1] for v in seen.values())


class ModelOnly:
    """Images/s of the served model form (same back end, ``threads`` threads) at a batch size,
    measured right before each row so that both see the same load from other work."""

    def __init__(self, args, threads: int):
        import torch

        from pnasnet.serve.settings import ServeSettings, load_model, prepare_served_model

        torch.set_num_threads(threads)
        settings = ServeSettings(model=args.model, weights=None if args.weights == "none" else args.weights,
                                 image_size=args.image_size)
        self.model = prepare_served_model(load_model(settings), settings)
        self.size = args.image_size or self.model.expected_image_size[0]

    def __call__(self, batch: int, seconds: float = 2.0) -> float:
        import torch

        x = torch.rand(batch, 3, self.size, self.size)
        with torch.inference_mode():
            self.model.classify(x)  # warm-up
            reps, start = 0, time.perf_counter()
            while reps < 2 or time.perf_counter() - start < seconds:
                self.model.classify(x)
                reps += 1
        return round(batch * reps / (time.perf_counter() - start), 2)


def run_engine(args, engine: str, concurrencies: list[int], body: bytes, log_dir: Path,
               model_only: ModelOnly) -> list[dict]:
    name, _, replicas_text = engine.partition(":")
    replicas = int(replicas_text or 1)
    threads = args.threads
    server_args = ["--model", args.model, "--weights", args.weights, "--max-batch-size", args.max_batch_size,
                   "--max-wait-ms", args.max_wait_ms, "--max-queue", max(64, 2 * max(concurrencies)),
                   "--timeout", 600, "--log-level", "warning"]
    if args.image_size:
        server_args += ["--image-size", args.image_size]
    if name == "ray":
        server_args += ["--engine", "ray", "--replicas", replicas, "--cpus-per-replica", threads, "--threads", threads]
    else:
        server_args += ["--threads", threads]
    rows = []
    with ServerProcess(server_args, log_dir / f"server_{name}_{replicas}.log", start_timeout=300) as server:
        asyncio.run(_load(server.url, body, 2 * args.max_batch_size, args.max_batch_size))  # warm-up
        for concurrency in concurrencies:
            ceiling = model_only(min(concurrency, args.max_batch_size))  # the server idles meanwhile
            load = os.getloadavg()[0]
            before = _batch_totals(server.url, replicas)
            wall, latencies, codes = asyncio.run(_load(server.url, body, args.requests, concurrency))
            after = _batch_totals(server.url, replicas)
            batch_sum, batch_count = (a - b for a, b in zip(after, before))
            ms = sorted(1000 * s for s in latencies)

            def pct(q):
                return ms[min(len(ms) - 1, int(round(q / 100 * (len(ms) - 1))))]

            row = {"engine": name, "replicas": replicas, "concurrency": concurrency, "requests": args.requests,
                   "errors": sum(code != 200 for code in codes), "seconds": round(wall, 2),
                   "requests_per_s": round(args.requests / wall, 2), "p50_ms": round(pct(50), 1),
                   "p99_ms": round(pct(99), 1), "mean_ms": round(statistics.mean(ms), 1),
                   "mean_batch": round(batch_sum / batch_count, 2) if batch_count > 0 else None,
                   "model_only_batch": min(concurrency, args.max_batch_size), "model_only_images_per_s": ceiling,
                   "load_average": round(load, 2)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pnasnet5_mobile")
    parser.add_argument("--weights", default="none",
                        help="default: none = random weights (speed does not depend on them)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the LitServe worker and of each Ray replica (each replica reserves as "
                             "many CPUs), and of the model-only figure (default 1: on a busy machine two OpenMP "
                             "threads stall whenever another job takes a core)")
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency (default 48)")
    parser.add_argument("--concurrency", default="1,4,16", help="concurrent clients (default 1,4,16)")
    parser.add_argument("--engines", default="litserve,ray:1,ray:2",
                        help="engines, ray:R = Ray Serve with R replicas (default litserve,ray:1,ray:2)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    body = test_image()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    load_before = os.getloadavg()[0]
    model_only = ModelOnly(args, args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pnasnet-serve-load-") as logs:
        for engine in args.engines.split(","):
            rows += run_engine(args, engine, concurrencies, body, Path(logs), model_only)

    cpu = cpu_info().get("model") or platform.processor()
    print(f"\n{args.model}, {args.image_size or 'default'} px, {args.requests} requests of one {len(body)}-byte JPEG "
          f"per row, loopback, max batch {args.max_batch_size} within {args.max_wait_ms:g} ms; {cpu}, "
          f"{os.cpu_count()} CPUs, {args.threads} model thread(s) per worker / replica; load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after (other work on the machine slows every row alike)")
    print(f"{'engine':<14} {'clients':>7} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} "
          f"{'model-only img/s (same batch)':>30} {'errors':>6} {'load':>5}")
    for r in rows:
        name = r["engine"] if r["engine"] == "litserve" else f"ray x{r['replicas']}"
        print(f"{name:<14} {r['concurrency']:>7} {r['requests_per_s']:>7.2f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['mean_batch'] or 0:>6.2f} {r['model_only_images_per_s']:>30.2f} {r['errors']:>6} "
              f"{r['load_average']:>5.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "cpu": cpu, "rows": rows}, indent=2) + "\n")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
