"""ImageNet class labels in TF-Slim's 1001-class order, and top-k decoding of logits.

Index 0 is TF-Slim's ``background`` class; index ``k + 1`` is class ``k`` of the standard
1000-class ImageNet (ILSVRC-2012) order, which is the WordNet ids sorted lexicographically
(``n01440764`` tench ... ``n15075141`` toilet tissue). Models with 1000 outputs (e.g. ports that
dropped the background class) use the same list without its first entry.

The list ships as ``imagenet_1001_labels.tsv`` beside this module (columns ``index``, ``wnid``,
``name``, ``lemmas``), written by ``tools/make_labels.py`` from the WordNet data in the ``timm``
wheel. ``name`` is the first WordNet lemma (``tench``); ``lemmas`` is the full lemma list TF-Slim
prints (``tench, Tinca tinca``). Two first lemmas occur twice (``crane``: the bird and the
machine; ``maillot``): the wnid tells them apart.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["NUM_CLASSES_WITH_BACKGROUND", "imagenet_labels", "imagenet_wnids", "decode_top_k"]

NUM_CLASSES_WITH_BACKGROUND = 1001
_FILE = "imagenet_1001_labels.tsv"


@functools.lru_cache(maxsize=1)
def _table() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    text = resources.files(__package__).joinpath(_FILE).read_text(encoding="utf-8")
    lines = text.splitlines()
    if not lines or lines[0].split("\t") != ["index", "wnid", "name", "lemmas"]:
        raise RuntimeError(f"{_FILE}: unexpected header {lines[:1]!r}")
    wnids, names, lemmas = [], [], []
    for i, line in enumerate(lines[1:]):
        idx, wnid, name, lem = line.split("\t")
        if int(idx) != i:
            raise RuntimeError(f"{_FILE}: row {i} has index {idx}")
        wnids.append(wnid)
        names.append(name)
        lemmas.append(lem)
    if len(names) != NUM_CLASSES_WITH_BACKGROUND:
        raise RuntimeError(f"{_FILE}: {len(names)} rows, expected {NUM_CLASSES_WITH_BACKGROUND}")
    return tuple(wnids), tuple(names), tuple(lemmas)


def _select(column: Sequence[str], background: bool) -> list[str]:
    return list(column) if background else list(column[1:])


def imagenet_labels(background: bool = True, *, full: bool = False) -> list[str]:
    """Readable class names: 1001 with ``"background"`` first (TF-Slim order), or the 1000 classes.

    ``full=True`` gives all WordNet lemmas (``"tench, Tinca tinca"``, as TF-Slim prints them)
    instead of the first (``"tench"``).
    """
    _, names, lemmas = _table()
    return _select(lemmas if full else names, background)


def imagenet_wnids(background: bool = True) -> list[str]:
    """WordNet ids in class order; the background entry (if included) is ``""``."""
    return _select(_table()[0], background)


def _labels_for_width(width: int) -> list[str]:
    if width == NUM_CLASSES_WITH_BACKGROUND:
        return imagenet_labels(background=True)
    if width == NUM_CLASSES_WITH_BACKGROUND - 1:
        return imagenet_labels(background=False)
    raise ValueError(
        f"logits have {width} classes; the ImageNet labels fit 1001 (TF-Slim, background first) or 1000 "
        "classes. Pass labels=[...] with one name per class for other heads."
    )


def decode_top_k(
    logits: Any, k: int = 5, labels: Sequence[str] | None = None
) -> list[list[tuple[int, str, float]]]:
    """Top-``k`` classes per image as ``(index, label, probability)``, most probable first.

    ``logits``: ``[N, C]`` or ``[C]`` (torch tensor, numpy array or nested lists) of raw scores;
    probabilities are their softmax over all ``C`` classes (the background class included for 1001).
    ``labels``: one name per class; by default the ImageNet names chosen by ``C`` (1001 or 1000).
    ``index`` is the column in ``logits`` (so for 1001-class logits, ImageNet class ``k`` is ``k + 1``).
    ``k`` larger than ``C`` gives all ``C``. Always returns one list per image.
    """
    t = logits.detach().cpu() if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[1] == 0:
        raise ValueError(f"logits must be [N, C] or [C] with C >= 1, got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"logits must be real numbers, got dtype {t.dtype}")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    width = int(t.shape[1])
    if labels is None:
        names = _labels_for_width(width)
    else:
        names = list(labels)
        if len(names) != width:
            raise ValueError(f"{len(names)} labels given for logits with {width} classes")
    probs = torch.softmax(t.to(torch.float64), dim=1)
    values, indices = torch.topk(probs, min(int(k), width), dim=1)
    return [
        [(int(i), names[int(i)], float(p)) for p, i in zip(row_v.tolist(), row_i.tolist())]
        for row_v, row_i in zip(values, indices)
    ]
