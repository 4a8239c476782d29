"""``pnasnet export MODEL --format F --out PATH``: the model as one file to ship (ONNX, torch.export
``.pt2``, OpenVINO IR, LiteRT ``.tflite``), checked right after it is written in its own runtime
against the PyTorch model on scikit-image's photographs (see :mod:`pnasnet.inference.export`)."""

from __future__ import annotations

import argparse
import json
import sys

from .options import SEED_HELP, WEIGHTS_HELP, add_bounded_activation_option


def add_export_commands(sub) -> None:
    from ..inference.export import FORMATS
    from ..inference.onnx_export import DEFAULT_OPSET

    p = sub.add_parser("export", help="write the model as an ONNX, torch.export (.pt2), OpenVINO IR or LiteRT "
                                      "(.tflite) file, checked in its runtime on photographs")
    p.add_argument("model", help="variant (see `pnasnet models`), 'auto' (configuration from --weights) or a model "
                                 "directory made by `pnasnet train`")
    p.add_argument("--weights", help=WEIGHTS_HELP)
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    add_bounded_activation_option(p)
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="onnx (pip install 'pnasnet[onnx]'), torch-export (.pt2, PyTorch only), openvino (.xml + "
                        ".bin; 'pnasnet[openvino]', int8: 'pnasnet[int8]'), tflite (LiteRT; 'pnasnet[tflite]')")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="the file to write: .onnx, .pt2, .xml (the .bin beside it) or .tflite")
    p.add_argument("--image-size", type=int, metavar="S",
                   help="image side of a fixed-size export (default: the model's: a model directory's own, "
                        "331 Large, 224 Mobile)")
    p.add_argument("--dynamic-size", action="store_true",
                   help="any height and width (onnx, torch-export, openvino float32): TF's SAME padding is "
                        "computed in the graph")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s)")
    p.add_argument("--calibration", nargs="+", metavar="PATH",
                   help="openvino: quantize to int8, calibrated on these images (files, folders, globs, @LIST) "
                        "like the ones the model will see")
    p.add_argument("--calibration-count", type=int, default=32, metavar="N",
                   help="calibration images used, spread over the list (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no notes on stderr")
    p.set_defaults(func=_cmd_export)


def _verification_images(size: int, quiet: bool):
    """scikit-image's photographs at ``size``, or None (the library's synthetic images) without it."""
    try:
        from ..bench.photos import photographs

        images, names = photographs(size)
    except ImportError:
        if not quiet:
            print("pnasnet: note: scikit-image is not installed: the export is checked on synthetic images "
                  "instead of photographs (pip install scikit-image)", file=sys.stderr)
        return None, None
    return images, f"photographs ({', '.join(names)})"


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from ..api import create_model
    from ..inference.export import export, require_export
    from .options import choose_weights, download_advice

    require_export(args.format, "int8" if args.calibration else "float32")  # before any weights are loaded
    choice = choose_weights(args.model, args.weights, seed=args.seed)
    if choice.random:
        torch.manual_seed(args.seed)
        if not args.quiet:
            print(f"pnasnet: note: --weights none: exporting {choice.described}: the outputs mean nothing",
                  file=sys.stderr)
    with download_advice():
        model = create_model(args.model, weights=choice.weights, progress=not args.quiet,
                             bounded_activation=args.bounded_activation)
    recorded = getattr(model, "preprocessing", None) or {}
    size = int(args.image_size or recorded.get("image_size") or model.expected_image_size[0])
    calibration = None
    if args.calibration:
        from ..tasks.inference import load_calibration_images

        calibration = load_calibration_images(args.calibration, size, count=args.calibration_count,
                                              transform=recorded.get("transform", "tf-slim"))
    images, described = _verification_images(size, args.quiet)
    report = export(model, args.format, args.out, image_size=size, dynamic_size=args.dynamic_size,
                    calibration=calibration, opset=args.opset, verify_images=images, verified_on=described)
    if args.json:
        print(json.dumps({"format": report.format, "files": [str(f) for f in report.files],
                          "size_bytes": report.size_bytes, "image_size": report.image_size,
                          "dynamic_size": report.dynamic_size, "precision": report.precision, "opset": report.opset,
                          "verified_on": report.verified_on, "verified_sizes": report.verified_sizes,
                          "max_rel_err": report.max_rel_err, "centered_cosine_min": report.centered_cosine_min,
                          "weights": choice.described}, indent=1))
    else:
        print(report.summary())
    return 0
