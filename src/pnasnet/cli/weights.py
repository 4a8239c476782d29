"""Command line: ``pnasnet weights list | download | verify | convert | inspect`` (parsing and
printing only)."""

from __future__ import annotations

import argparse
import json


def _cmd_list(args: argparse.Namespace) -> int:
    from ..weights.download import cache_dir
    from ..weights.sources import SOURCES, cached_path

    print(f"cache: {cache_dir()}  (set PNASNET_HOME to move it)")
    for source in SOURCES:
        state = "cached" if cached_path(source).is_file() else "not downloaded"
        classes = source.num_classes if source.num_classes is not None else "no final layer"
        print(f"{source.name:8s} {', '.join(source.models):45s} {state:15s} classes: {classes}")
        print(f"         {source.description}")
        # Mirrors in the order they are tried; plain http is flagged (the file is still checked).
        for url in source.urls:
            note = "  (plain http, not encrypted)" if url.lower().startswith("http://") else ""
            print(f"         {url}{note}")
        if source.hub_file is not None:
            print(f"         (used from the Hugging Face cache when there: {source.hub_file.repo_id} "
                  f"at revision {source.hub_file.revision[:12]})")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from ..weights.sources import fetch, find_source

    path = fetch(find_source(args.model, args.name), progress=not args.quiet)
    print(path)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..weights.download import ChecksumError, ChecksumUnknownError, verify, verify_cache

    failed = False
    if args.paths:
        for path in args.paths:
            try:
                digest = verify(path)
                print(f"ok        {path}  sha256 {digest}")
            except ChecksumUnknownError as error:
                print(f"unknown   {path}: {error}")
            except (ChecksumError, FileNotFoundError) as error:
                print(f"FAILED    {path}: {error}")
                failed = True
        return 1 if failed else 0
    results = verify_cache()
    if not results:
        print("the cache holds no recorded files")
    for result in results:
        print(f"{result.status:9s} {result.path}")
        failed |= result.status != "ok"
    return 1 if failed else 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..tasks.convert import convert_weights

    metadata = convert_weights(args.source, args.out, model=args.model, num_classes=args.num_classes,
                               bounded_activation=args.bounded_activation)
    print(f"wrote {args.out}")
    print(json.dumps(metadata, indent=2))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ..tasks.convert import inspect_weights

    info = inspect_weights(args.source, model=args.model)
    listing = info.pop("variables_list")
    if args.json:
        print(json.dumps({**info, "variables_list": listing}, indent=2))
        return 0
    print(f"{info['path']}: {info['kind']}, {info['variables']} variables, {info['values']:,} values, "
          f"final layer: {info['num_classes'] or 'none'} classes")
    for key, value in sorted(info["metadata"].items()):
        print(f"  {key}: {value}")
    if args.list:
        for name, shape in listing:
            print(f"  {name}  {'x'.join(map(str, shape)) or 'scalar'}")
    for variant, fit in info["fits"].items():
        if fit["ok"]:
            print(f"fits {variant}" + (f" ({len(fit['ignored'])} extra ignored)" if fit["ignored"] else ""))
        else:
            problems = [f"{len(fit[k])} {k.replace('_', ' ')}" for k in ("missing", "unexpected", "wrong_shape")
                        if fit[k]]
            first = (fit["missing"] + fit["unexpected"] + fit["wrong_shape"])[:3]
            print(f"does not fit {variant}: {', '.join(problems)} (e.g. {'; '.join(first)})")
    return 0


def add_weights_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``pnasnet weights ...``."""
    weights = sub.add_parser("weights", help="pretrained weights: list, download, verify, convert, inspect")
    verbs = weights.add_subparsers(dest="verb", required=True)

    verbs.add_parser("list", help="known sources and what is in the cache").set_defaults(func=_cmd_list)

    download = verbs.add_parser("download", help="fetch a known source into the cache")
    download.add_argument("name", help="tf-slim, tf-hub, timm or cadene")
    download.add_argument("--model", default="pnasnet5_large", help="model the weights are for")
    download.add_argument("--quiet", action="store_true")
    download.set_defaults(func=_cmd_download)

    verify = verbs.add_parser("verify", help="check cached files (or PATHs) against their checksums")
    verify.add_argument("paths", nargs="*")
    verify.set_defaults(func=_cmd_verify)

    convert = verbs.add_parser("convert", help="any supported form in, pnasnet .safetensors out")
    convert.add_argument("source", help="a known source name or a local file/folder of any form")
    convert.add_argument("--out", required=True, help="the .safetensors file to write")
    convert.add_argument("--model", help="variant (default: told from the weights)")
    convert.add_argument("--num-classes", type=int, help="e.g. 1000 to keep a 1000-class head")
    from .options import add_bounded_activation_option

    add_bounded_activation_option(convert)  # TF checkpoints cannot record it: say it, and the file will
    convert.set_defaults(func=_cmd_convert)

    inspect = verbs.add_parser("inspect", help="variables, shapes and which variants they fit")
    inspect.add_argument("source")
    inspect.add_argument("--model", help="check against this variant only")
    inspect.add_argument("--list", action="store_true", help="print every variable and its shape")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=_cmd_inspect)
