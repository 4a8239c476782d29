"""``--model`` and ``--weights`` as ``pnasnet classify``, ``features``, ``serve`` and ``train`` read them.

* A variant without ``--weights`` gets its published TF-Slim weights (``"tf-slim"``, as
  ``create_model(name, pretrained=True)``): downloaded once into the cache, verified on every use.
  Offline the download fails within seconds naming the URL and the cache path, before any image
  is read.
* ``--weights none``: random initialisation (``--seed``), for testing only (the outputs mean nothing).
* A model directory (``pnasnet train --out``) brings its own weights; ``--model auto`` needs ``--weights``.

``pnasnet info`` keeps random weights by default (the offline smoke test) and does not use this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NO_WEIGHTS = "none"

WEIGHTS_HELP = ("weights: a known source (tf-slim, tf-hub, timm, cadene: `pnasnet weights list`) or a local "
                "checkpoint/file; 'none' = random initialisation (--seed; for testing only: the outputs mean "
                "nothing). Default: the variant's published TF-Slim weights (downloaded once into the cache, "
                "verified on every use); a model directory's own weights")
SEED_HELP = "seed of the random initialisation of --weights none (default %(default)s)"

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
    from .api import PRETRAINED, VARIANTS, is_model_dir, list_models

    text = None if weights is None else str(weights)
    named_file = text is not None and (Path(text).expanduser().exists() or Path(text + ".index").exists())
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
    from .weights.sources import sources_for

    if not any(source.name == PRETRAINED for source in sources_for(model)):
        raise ValueError(f"no published weights are known for {model}: pass --weights PATH (a local checkpoint "
                         "or weights file) or --weights none (random initialisation, for testing)")
    return WeightsChoice(PRETRAINED, PRETRAINED)


@contextlib.contextmanager
def download_advice() -> Iterator[None]:
    """A failed weights download (offline, unreachable, bad checksum) re-raised with the command-line
    alternatives added to its message; ``pnasnet.cli.main`` prints it as one ``pnasnet: error:``."""
    from .weights.download import DownloadError

    try:
        yield
    except DownloadError as error:
        if error.args and isinstance(error.args[0], str) and _COMMAND_LINE_ADVICE not in error.args[0]:
            error.args = (error.args[0] + _COMMAND_LINE_ADVICE, *error.args[1:])
        raise
