"""Command line: the `bench` command (argument parsing and printing only).

    pnasnet bench                                   # our paths + whatever peers are installed, b1 and b8
    pnasnet bench --batch-sizes 1 2 4 8 16 --threads 1 2 --contenders pnasnet-eager timm-channels-last
    pnasnet bench --agreement --weights CKPT        # bf16 / back-end agreement on real photographs
"""

from __future__ import annotations

import argparse


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.agreement:
        import json
        from pathlib import Path

        from ..bench.agreement import agreement_markdown, run_agreement

        model = args.model
        size = args.image_size or (331 if "large" in model else 224)
        paths = [("eager", "float32"), ("onnxruntime", "float32"), ("openvino", "float32"),
                 ("eager", "bfloat16"), ("openvino", "bfloat16"), ("openvino", "int8")]
        result = run_agreement([(f"{model} {args.weights or 'random'}", model, args.weights, size)], paths)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = args.tag or f"agreement-{model}-{size}"
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / f"{stem}.md").write_text(agreement_markdown(result))
        print(agreement_markdown(result))
        return 0
    from ..bench.report import print_table, write_results
    from ..bench.run import resolve_args, run_benchmark

    args = resolve_args(args)
    results = run_benchmark(args)
    results["foreign_limit"] = args.foreign_limit
    print_table(results)
    write_results(results, args.out, args.tag)
    return 0


def add_bench_commands(sub: argparse._SubParsersAction) -> None:
    """Register this group's subcommands on the top-level parser."""
    from ..bench.run import build_parser

    parser = sub.add_parser(
        "bench", help="measure inference speed of our paths beside the peers (timm, TF-Slim, ONNX Runtime, OpenVINO)",
        description="Interleaved inference benchmark: images/s, latency, GFLOP/s against the machine's "
                    "measured ceiling, peak memory. Writes JSON and Markdown. See benchmarks/README.md.")
    build_parser(parser)
    parser.add_argument("--agreement", action="store_true",
                        help="instead of timing: agreement of every back end and precision with the plain "
                             "model on scikit-image's photographs (needs scikit-image)")
    parser.set_defaults(func=_cmd_bench)
