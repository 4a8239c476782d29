"""``create_model``: one place that turns a variant name (and optionally weights) into a model."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from .model import LARGE, MOBILE, PNASNet, PNASNetConfig
from .model.ops import DEFAULT_BN_DECAY


@dataclass(frozen=True)
class Variant:
    config: PNASNetConfig
    num_classes: int
    description: str


VARIANTS: dict[str, Variant] = {
    "pnasnet5_large": Variant(LARGE, 1001, "PNASNet-5 Large, 331 px, 1001 ImageNet logits (0 = background)"),
    "pnasnet5_large_feature_vector": Variant(LARGE, 0, "PNASNet-5 Large, 331 px, 4320-d feature vector, no final layer"),
    "pnasnet5_mobile": Variant(MOBILE, 1001, "PNASNet-5 Mobile, 224 px, 1001 ImageNet logits (0 = background)"),
    "pnasnet5_mobile_feature_vector": Variant(MOBILE, 0, "PNASNet-5 Mobile, 224 px, 1080-d feature vector, no final layer"),
}


def list_models() -> list[str]:
    """Names ``create_model`` accepts."""
    return sorted(VARIANTS)


def _classes_for(variant: Variant, source_classes: int | None, requested: int | None, where: str) -> int:
    """Number of classes of the model to build for weights with ``source_classes``."""
    if requested is not None:
        return requested
    if variant.num_classes == 0:
        return 0  # feature vector: any final layer in the source is ignored
    if source_classes is None:
        raise ValueError(f"{where} has no final layer (a feature-vector source); use the "
                         "*_feature_vector model or pass num_classes=0")
    # A 1000-class source keeps the 1001-logit contract (background row added, untrained) unless
    # num_classes=1000 asks for its own head; any other count is a custom head, taken as it is.
    return variant.num_classes if source_classes == 1000 else source_classes


# What ``pretrained=True`` loads, and what the commands load without ``--weights``: the published
# TF-Slim weights of the variant (the registry in ``weights.sources`` maps it per variant).
PRETRAINED = "tf-slim"


def local_weights(weights: str | os.PathLike) -> Path | None:
    """``weights`` as an existing local path (a file, a folder or a checkpoint prefix), else None."""
    path = Path(weights).expanduser()
    return path if path.exists() or Path(str(path) + ".index").exists() else None


def source_name(weights: str | os.PathLike) -> str | None:
    """``weights`` as a registry source name ("tf-slim", "pnasnet5_mobile:tf-slim"), or None when it
    is (or can only be) a local path: an existing file or folder, or anything with a dot or a slash."""
    if local_weights(weights) is not None:
        return None
    text = str(weights)
    return text if "/" not in text and os.sep not in text and "." not in text else None


def resolve_weights(name: str, weights: str | os.PathLike, *, progress: bool = True) -> Path:
    """A local path as it is, or a registry source name fetched into the cache."""
    source = source_name(weights)
    if source is not None:
        from .weights.sources import fetch, find_source

        return fetch(find_source(name, source), progress=progress)
    path = local_weights(weights)
    if path is not None:
        return path
    raise FileNotFoundError(f"{weights}: no such file, folder or checkpoint prefix")


def is_model_dir(name: str) -> bool:
    """Whether ``name`` (a ``create_model`` name) is a model directory or file of this package
    rather than a variant or "auto"."""
    return name not in VARIANTS and name != "auto" and Path(name).expanduser().exists()


def _pretrained_weights(name: str, weights, pretrained: bool):
    """``weights`` as ``create_model`` loads them, given ``pretrained``."""
    if isinstance(weights, bool):
        raise TypeError(f"weights={weights} is not a weights source; for the published weights write "
                        f"pretrained=True (or weights={PRETRAINED!r}), for random ones leave weights out")
    if not pretrained:
        return weights
    if weights is not None and str(weights) != PRETRAINED:
        raise ValueError(f"pretrained=True loads weights={PRETRAINED!r} (the published TF-Slim weights); it "
                         f"cannot be combined with weights={str(weights)!r}: pass one or the other")
    if name == "auto":
        raise ValueError("model 'auto' takes its configuration from the weights: pass weights= "
                         "(pretrained=True names no variant to take the published weights of)")
    if is_model_dir(name):
        return weights  # a model directory is loaded with its own (trained) weights
    return PRETRAINED


def create_model(name: str = "pnasnet5_large", weights: str | os.PathLike | None = None, *,
                 pretrained: bool = False, num_classes: int | None = None, aux_head: bool = False,
                 batch_norm_decay: float = DEFAULT_BN_DECAY, drop_path_keep_prob: float | None = None,
                 dropout_keep_prob: float | None = None, bounded_activation: bool | None = None,
                 prefer_moving_averages: bool = False, progress: bool = True) -> PNASNet:
    """Build a PNASNet-5 variant, in eval (inference) mode; call ``.train()`` to fine-tune.

    Args:
        name: one of ``list_models()`` (``*_feature_vector`` variants have no final layer),
            "auto" to build whatever configuration the weights were made for (a converted custom
            or reduced model, a fine-tuned head), or a model directory (``pnasnet train --out``).
        weights: None for random initialisation (unless ``pretrained``); a known source
            ("tf-slim", "tf-hub", "timm", "cadene"; downloaded once into the cache and verified); or
            a local file or folder of any supported form: TF-Slim checkpoint (prefix, ``.index`` or
            folder), release tarball, TF1 hub module (folder or tarball), Cadene/timm
            ``.pth``/``.safetensors``, or this package's ``.safetensors``.
        pretrained: True loads the published TF-Slim weights of the variant, as timm's
            ``pretrained=True`` does: exactly ``weights="tf-slim"`` (the same download, cache and
            checks). Combined with ``weights=``, only ``weights="tf-slim"`` is accepted (anything
            else raises ValueError); with "auto" it is an error (no variant to take the weights
            of); a model directory keeps its own weights. False (default): ``weights`` decides,
            and without them the weights are random.
        num_classes: classes of the final layer (0 = feature vector). By default the variant's
            1001; a 1000-class source (timm) then gets an untrained background row 0, while
            ``num_classes=1000`` keeps its 1000-class head; a custom head is taken as it is.
        aux_head, batch_norm_decay, drop_path_keep_prob, dropout_keep_prob: see ``PNASNet``.
        bounded_activation: TF-Slim's ``use_bounded_activation`` (ReLU6, clipped branch outputs;
            see ``PNASNet``). None: what this package's weights file records, else False.
        prefer_moving_averages: load ``ExponentialMovingAverage`` shadows where the checkpoint has them.
    """
    weights = _pretrained_weights(name, weights, pretrained)
    if is_model_dir(name):
        return load_model_dir(name, weights=weights, num_classes=num_classes, aux_head=aux_head,
                              batch_norm_decay=batch_norm_decay, drop_path_keep_prob=drop_path_keep_prob,
                              dropout_keep_prob=dropout_keep_prob, bounded_activation=bounded_activation)
    if name not in VARIANTS and name != "auto":
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}, "
                         "or 'auto' to take the configuration from the weights")
    options = dict(aux_head=aux_head, batch_norm_decay=batch_norm_decay,
                   drop_path_keep_prob=drop_path_keep_prob, dropout_keep_prob=dropout_keep_prob,
                   bounded_activation=bounded_activation)
    if weights is None:
        if name == "auto":
            raise ValueError("model 'auto' takes its configuration from the weights: pass weights=")
        variant = VARIANTS[name]
        classes = variant.num_classes if num_classes is None else num_classes
        return PNASNet(variant.config, num_classes=classes, **options).eval()

    from .weights.formats import open_weights
    from .weights.loading import load_from_source

    path = resolve_weights("pnasnet5_large" if name == "auto" else name, weights, progress=progress)
    with open_weights(path) as source:
        if name == "auto":
            config = source.infer_config()
            classes = source.num_classes or 0 if num_classes is None else num_classes
        else:
            config = VARIANTS[name].config
            if "config" in source.metadata:  # this package's file: keep the activation it was made with
                config = replace(config, use_bounded_activation=source.infer_config().use_bounded_activation)
            classes = _classes_for(VARIANTS[name], source.num_classes, num_classes, str(path))
        # Random initialisation of Large takes ~0.8 s and every value is overwritten: skipped, unless
        # the source lacks a part the model has (an aux head), which then gets its initial values.
        with skipping_random_init():
            model = PNASNet(config, num_classes=classes, **options)
        report = load_from_source(model, source, prefer_moving_averages=prefer_moving_averages)
        if report.left_initialised:
            model = PNASNet(config, num_classes=classes, **options)
            report = load_from_source(model, source, prefer_moving_averages=prefer_moving_averages)
        model.weights_report = report
        model.weights_source = {"weights": str(weights), "path": str(path), "kind": source.kind}
        if "transform" in source.metadata and "image_size" in source.metadata:
            # what a model made by `pnasnet train` was trained with: the commands' defaults for it
            model.preprocessing = {"transform": source.metadata["transform"],
                                   "image_size": int(source.metadata["image_size"])}
    return model.eval()


_RANDOM_INITS = ("uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "zeros_", "ones_",
                 "trunc_normal_", "xavier_uniform_", "constant_")


@contextlib.contextmanager
def skipping_random_init():
    """Modules built inside keep their freshly allocated (uninitialised) parameters: the
    ``torch.nn.init`` functions do nothing. Only for models whose every parameter is loaded next
    (:func:`create_model` checks that with the load report). Buffers (batch-norm statistics) are
    still set, as they do not go through ``torch.nn.init``."""
    from torch.nn import init

    saved = {name: getattr(init, name) for name in _RANDOM_INITS}
    try:
        for name in _RANDOM_INITS:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


# A model directory (what ``pnasnet train`` writes): the weights in this package's format, which
# record the configuration, and the class names in output order.
MODEL_FILE = "model.safetensors"
LABELS_FILE = "labels.txt"


def read_labels(path: str | os.PathLike) -> list[str]:
    """One class name per line, in output order (trailing empty lines ignored)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def load_model_dir(path: str | os.PathLike, *, weights: str | os.PathLike | None = None, **options) -> PNASNet:
    """Load a model directory (or a single ``.safetensors`` of this package): the configuration
    comes from the file's metadata, class names from ``labels.txt`` beside it (``model.labels``)."""
    path = Path(path).expanduser()
    folder = path if path.is_dir() else path.parent
    weights_file = Path(weights) if weights is not None else (path / MODEL_FILE if path.is_dir() else path)
    if not weights_file.exists():
        raise FileNotFoundError(f"{path}: not a model directory (no {MODEL_FILE} inside)")
    model = create_model("auto", weights=weights_file, **options)
    labels_file = folder / LABELS_FILE
    if labels_file.is_file():
        labels = read_labels(labels_file)
        if len(labels) != model.num_classes:
            raise ValueError(f"{labels_file}: {len(labels)} labels for a model with {model.num_classes} classes")
        model.labels = labels
    return model
