"""The benchmark's results as a table on stdout, Markdown and JSON files.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .contenders import BF16, DESCRIPTIONS, LARGE_GFLOP_331


def _precision_of(name: str) -> str:
    return "bfloat16" if name in BF16 else "int8" if name.endswith("int8") else "float32"


def summarize(results: dict) -> None:
    gflop = results.get("gflop_per_image") or LARGE_GFLOP_331
    for key, entry in results["contenders"].items():
        ceil = results["ceilings"].get(entry["threads"]) or results["ceilings"].get(str(entry["threads"])) or {}
        precision = _precision_of(entry["name"])
        # The machine's limit for this precision: the faster of its matrix products and 1x1
        # convolutions (96% of PNASNet's work is 1x1 convolutions; on some CPUs, e.g. a Zen 5, oneDNN's
        # 1x1 convolution reaches twice MKL's float32 matrix product).
        rates = [ceil.get(f"{kind}_{precision}") for kind in ("matmul", "conv1x1")]
        ceiling = max((r for r in rates if r), default=None)
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
    if m.get("cpu_support"):
        lines.append(f"- CPU class as the back ends saw it: {m['cpu_support']['description']}")
    lines.append("- Software: " + ", ".join(f"{k} {v}" for k, v in results.get("software", {}).items()))
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


def write_results(results: dict, out: str, tag: str | None) -> tuple[Path, Path]:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    stem = tag or f"{results['model']}-{results['image_size']}"
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    md_path.write_text(to_markdown(results))
    print(f"wrote {json_path} and {md_path}")
    return json_path, md_path
