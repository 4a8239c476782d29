"""Command line: argument parsing and printing only; the work is done by the library."""

from __future__ import annotations

import argparse
import json
import sys
import time


def _cmd_models(args: argparse.Namespace) -> int:
    from ..api import VARIANTS

    for name, variant in sorted(VARIANTS.items()):
        print(f"{name:32s} {variant.description}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from ..api import create_model

    model = create_model(args.model, weights=args.weights, bounded_activation=args.bounded_activation)
    size = args.image_size or model.expected_image_size[0]
    images = torch.rand(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.inference_mode():
        out = model(images)
    seconds = time.perf_counter() - start
    info = {
        "model": args.model,
        "weights": str(args.weights) if args.weights else "random initialisation",
        "parameters": sum(p.numel() for p in model.parameters()),
        "expected_image_size": list(model.expected_image_size),
        "min_image_size": model.min_image_size,
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "bounded_activation": model.bounded_activation,
        "endpoints": model.endpoint_names,
        "ran": {"input": list(images.shape), "output": list(out.shape), "seconds": round(seconds, 3)},
    }
    if model.num_classes:
        top = out.softmax(-1).max(-1)
        info["ran"]["top1_class"] = top.indices.tolist()
    from ..inference import auto_choice, cpu_support

    backend, why = auto_choice(model, "float32", size)
    # what classify / features / serve run by default on this machine and install, and why
    info["default_backend"] = {"backend": backend, "why": why, "cpu": cpu_support().describe()}
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pnasnet", description="PNASNet-5 in PyTorch, exact to TF-Slim.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the model variants").set_defaults(func=_cmd_models)
    info = sub.add_parser("info", help="build a model, run a random batch through it, print a summary")
    info.add_argument("model", nargs="?", default="pnasnet5_large")
    info.add_argument("--weights", help="TF-Slim checkpoint prefix, .index file or folder")
    from .options import add_bounded_activation_option

    add_bounded_activation_option(info)
    info.add_argument("--image-size", type=int, help="side of the random test images (default: the model's)")
    info.add_argument("--batch-size", type=int, default=1)
    info.set_defaults(func=_cmd_info)
    # Command groups live in their own modules; each adds its subcommands here.
    from .bench import add_bench_commands
    from .export import add_export_commands
    from .inference import add_inference_commands
    from .serve import add_serve_commands
    from .train import add_train_commands
    from .weights import add_weights_commands

    add_inference_commands(sub)
    add_weights_commands(sub)
    add_train_commands(sub)
    add_bench_commands(sub)
    add_serve_commands(sub)
    add_export_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.invoked_as = ["pnasnet", *(sys.argv[1:] if argv is None else argv)]  # e.g. for the model card
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # e.g. during a weights download (the next run resumes it)
        print("pnasnet: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, ImportError) as error:
        print(f"pnasnet: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
