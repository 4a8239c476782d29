"""Options several commands share: ``--model`` and ``--weights`` as ``pnasnet classify``, ``features``,
``serve`` and ``train`` read them; ``--backend``/``--precision``/``--calibration`` (classify, features,
serve); ``--engine`` and the Ray options (classify, features).

* A variant without ``--weights`` gets its published TF-Slim weights (``"tf-slim"``, as
  ``create_model(name, pretrained=True)``): downloaded once into the cache, verified on every use.
  Offline the download fails within seconds naming the URL and the cache path, before any image
  is read.
* ``--weights none``: random initialisation (``--seed``), for testing only (the outputs mean nothing).
* A model directory (``pnasnet train --out``) brings its own weights; ``--model auto`` needs ``--weights``.

``pnasnet info`` keeps random weights by default (the offline smoke test) and does not use this.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

NO_WEIGHTS = "none"

WEIGHTS_HELP = ("weights: a known source (tf-slim, tf-hub, timm, cadene: `pnasnet weights list`) or a local "
                "checkpoint/file; 'none' = random initialisation (--seed; for testing only: the outputs mean "
                "nothing). Default: the variant's published TF-Slim weights (downloaded once into the cache, "
                "verified on every use); a model directory's own weights")
SEED_HELP = "seed of the random initialisation of --weights none (default %(default)s)"
BOUNDED_HELP = ("TF-Slim's use_bounded_activation: ReLU6 everywhere, branch outputs clipped to [-6, 6] (for "
                "weights trained that way; the published ones were not). Default: what the weights file or "
                "model directory records, else off")

# Added to a failed download's message (which names the URL and the cache path).
_COMMAND_LINE_ADVICE = ("\nOn the command line: --weights PATH loads a local copy (that file, a checkpoint or a "
                        "folder); --weights none runs with random weights (for testing: the outputs mean nothing).")


@dataclass(frozen=True)
class WeightsChoice:
    """What a command loads: ``weights`` as ``create_model`` takes them (a source name, a local
    path, or None: random for a variant, its own for a model directory), how outputs describe
    them, and whether they are random (``--weights none``)."""

    weights: str | None
    described: str
    random: bool = False


def choose_weights(model: str, weights: str | None, *, seed: int = 0) -> WeightsChoice:
    """The weights a command loads for ``--model model --weights weights`` (None: not given).
    Raises ValueError for a combination that cannot work; downloads nothing."""
    from ..api import PRETRAINED, VARIANTS, is_model_dir, list_models, local_weights

    text = None if weights is None else str(weights)
    named_file = text is not None and local_weights(text) is not None
    if text is not None and text.lower() == NO_WEIGHTS and not named_file:
        if model == "auto":
            raise ValueError("--model auto takes its configuration from the weights: --weights none gives it "
                             "none; pass --weights PATH, or a variant (--model pnasnet5_mobile --weights none)")
        if is_model_dir(model):
            raise ValueError(f"--weights none: the model directory {model} has its own trained weights; leave "
                             "--weights out to use them, or pass a variant for random weights")
        return WeightsChoice(None, f"random initialisation (seed {seed})", random=True)
    if text is not None and text.lower() == "random" and not named_file:
        raise ValueError("--weights random: random initialisation is spelled --weights none")
    if text is not None:
        return WeightsChoice(text, text)
    if is_model_dir(model):
        return WeightsChoice(None, f"model directory {model}")
    if model == "auto":
        raise ValueError("--model auto takes its configuration from the weights: pass --weights PATH (a "
                         "checkpoint or weights file), or name a variant (see `pnasnet models`)")
    if model not in VARIANTS:
        raise ValueError(f"unknown model {model!r}: choose one of {', '.join(list_models())}, 'auto' (with "
                         "--weights), or a model directory made by `pnasnet train`")
    from ..weights.sources import sources_for

    if not any(source.name == PRETRAINED for source in sources_for(model)):
        raise ValueError(f"no published weights are known for {model}: pass --weights PATH (a local checkpoint "
                         "or weights file) or --weights none (random initialisation, for testing)")
    return WeightsChoice(PRETRAINED, PRETRAINED)


def add_bounded_activation_option(parser: argparse.ArgumentParser) -> None:
    """``--bounded-activation`` (``create_model(bounded_activation=True)``; absent: None, the weights' own)."""
    parser.add_argument("--bounded-activation", action="store_const", const=True, default=None, help=BOUNDED_HELP)


@contextlib.contextmanager
def download_advice() -> Iterator[None]:
    """A failed weights download (offline, unreachable, bad checksum) re-raised with the command-line
    alternatives added to its message; ``pnasnet.cli.main`` prints it as one ``pnasnet: error:``."""
    from ..weights.download import DownloadError

    try:
        yield
    except DownloadError as error:
        if error.args and isinstance(error.args[0], str) and _COMMAND_LINE_ADVICE not in error.args[0]:
            error.args = (error.args[0] + _COMMAND_LINE_ADVICE, *error.args[1:])
        raise


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--precision`` (classify, features, serve)."""
    from ..inference import BACKEND_CHOICES, PRECISIONS

    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="how the model runs: auto = the exact inference form (batch norms folded, "
                             "channels-last; about 2x plain) on the CPU, plain on a GPU (default); plain = the "
                             "model as built; eager/compile/onnxruntime/openvino: see pnasnet.inference.optimize "
                             "(onnxruntime/openvino need pip install 'pnasnet[onnx]' / 'pnasnet[openvino]')")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="float32 (exact, default); bfloat16 (reduced precision, only on request: about "
                             "1e-2 relative difference; fast only on CPUs with AMX); int8 (openvino, quantized "
                             "with calibration images, --calibration; pip install 'pnasnet[int8]')")


def add_calibration_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calibration", nargs="+", metavar="PATH",
                        help="--precision int8: images like the ones to be processed (files, folders, globs, "
                             "@LIST), decoded as the run decodes its inputs")
    parser.add_argument("--calibration-count", type=int, default=32, metavar="N",
                        help="calibration images used, spread over the list (default %(default)s)")


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """``--engine``, ``--address``, ``--concurrency``, ``--cpus-per-actor``, ``--gpus-per-actor`` (classify,
    features)."""
    from ..engines import ENGINES

    group = parser.add_argument_group("engine (--engine ray: Ray Data, on this machine or a cluster; "
                                      "needs pip install 'pnasnet[ray]')")
    group.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: this process and --workers decoders (default); ray: decode tasks and a pool "
                            "of model actors on Ray Data. With ray, inputs may also be URIs (s3://bucket/photos/, "
                            "gs://..., file://...) and features' --out is a folder or URI of Parquet parts")
    group.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else start a local Ray); "
                                         "'auto' = the cluster `ray start` runs on this machine, "
                                         "ray://HOST:10001 = a remote one")
    group.add_argument("--concurrency", metavar="N|MIN:MAX",
                       help="model actors: N (autoscaling 1..N) or MIN:MAX (default: one per GPU with "
                            "--gpus-per-actor; else one per CPU, leaving 1 CPU in 8 (at least one) to decoding)")
    group.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="N",
                       help="CPUs each model actor reserves; also its PyTorch threads unless --threads "
                            "(default %(default)s)")
    group.add_argument("--gpus-per-actor", type=float, metavar="N",
                       help="GPUs each model actor reserves: 1, or 0.5 for two actors per GPU, 0 for none "
                            "(default: 1 where the cluster has GPUs, unless --device cpu; else 0)")
