"""An image folder with one sub-folder per class: scanning, checks, the train/validation split and
the class-balance report.

Classes are the sub-folder names in sorted order (as ``image_dataset_from_directory`` orders them),
which is also the output order of the trained model and of ``labels.txt``. Each class folder is
searched recursively for the extensions ``pnasnet classify`` reads.

The split is decided per file by a SHA-1 of its name inside the class folder (as TF's
``retrain.py`` did): a file stays on its side when files are added or removed, and the same folder
always splits the same way. A ``_nohash_`` part of a name and what follows it is left out of the
hash, so ``dog_nohash_1.jpg`` and ``dog_nohash_2.jpg`` (e.g. frames of one clip) land on the same
side. Small classes get at least one image on each side.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..tasks.inputs import expand_inputs

__all__ = ["DatasetError", "ImageFolder", "LabeledImage", "Split", "check_class_counts", "scan_image_folder",
           "split_fraction_key", "split_train_validation"]


class DatasetError(ValueError):
    """The image folder cannot be trained on (no classes, one class, an empty or one-image class)."""


@dataclass(frozen=True)
class LabeledImage:
    path: str          # as found under the image folder
    label: int         # index into the folder's classes
    name: str          # path inside its class folder, "/"-separated: what the split hashes


@dataclass
class ImageFolder:
    root: Path
    classes: list[str]
    images: list[LabeledImage]
    ignored: list[str] = field(default_factory=list)   # image files directly in root (no class)

    def counts(self, images: Iterable[LabeledImage] | None = None) -> list[int]:
        counts = [0] * len(self.classes)
        for image in self.images if images is None else images:
            counts[image.label] += 1
        return counts


def check_class_counts(classes: Sequence[str], counts: Sequence[int], where: str, *, after: str = "") -> None:
    """Raise :class:`DatasetError` unless there are 2+ classes and each has 2+ images."""
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no class folders"
        raise DatasetError(f"{where}: found {found}; a classifier needs at least two classes, one "
                           "sub-folder of images per class")
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise DatasetError(f"{where}: class folder(s) without {after or 'any'} images: {', '.join(empty)} "
                           "(remove them or add images)")
    single = [c for c, n in zip(classes, counts) if n == 1]
    if single:
        raise DatasetError(f"{where}: class(es) with a single {after}image: {', '.join(single)}; each class "
                           "needs at least two (one to train on, one to validate with)")


def scan_image_folder(root: str | os.PathLike) -> ImageFolder:
    """The classes and images under ``root``; :class:`DatasetError` if it cannot be trained on."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected one sub-folder of images per class)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = [p.name for p in class_dirs]
    unwritable = [c for c in classes if "\n" in c or "\r" in c]
    if unwritable:
        raise DatasetError(f"{root}: class folder names with line breaks cannot be written to labels.txt: "
                           f"{', '.join(map(repr, unwritable))}")
    images: list[LabeledImage] = []
    for label, folder in enumerate(class_dirs):
        for path in expand_inputs([folder]):
            name = Path(os.path.relpath(path, folder)).as_posix()
            images.append(LabeledImage(path, label, name))
    ignored = [p for p in expand_inputs([root]) if Path(p).parent == root]
    folder = ImageFolder(root, classes, images, ignored)
    check_class_counts(classes, folder.counts(), str(root))
    return folder


def split_fraction_key(name: str) -> float:
    """A number in [0, 1) fixed by the file name: below the validation fraction = validation."""
    stem = re.sub(r"_nohash_.*$", "", name)
    digest = hashlib.sha1(stem.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


@dataclass
class Split:
    train: list[LabeledImage]
    validation: list[LabeledImage]
    moved: list[str] = field(default_factory=list)   # classes whose split had to be evened out

    def balance(self, classes: Sequence[str]) -> list[dict]:
        """Per class: ``{"label", "train", "validation"}`` image counts."""
        rows = [{"label": c, "train": 0, "validation": 0} for c in classes]
        for side, images in (("train", self.train), ("validation", self.validation)):
            for image in images:
                rows[image.label][side] += 1
        return rows


def split_train_validation(images: Sequence[LabeledImage], classes: Sequence[str], fraction: float) -> Split:
    """Validation = images whose :func:`split_fraction_key` is below ``fraction``. A class of 2+
    images with none on one side gets its lowest-key image moved to validation, or its
    highest-key image moved to training (so a small class is still both learnt and measured)."""
    by_class: list[list[LabeledImage]] = [[] for _ in classes]
    for image in images:
        by_class[image.label].append(image)
    train: list[LabeledImage] = []
    validation: list[LabeledImage] = []
    moved = []
    for members in by_class:
        keyed = sorted(members, key=lambda im: (split_fraction_key(im.name), im.name))
        cut = sum(split_fraction_key(im.name) < fraction for im in keyed)
        if fraction > 0 and len(keyed) >= 2 and cut in (0, len(keyed)):
            cut = 1 if cut == 0 else len(keyed) - 1
            moved.append(classes[members[0].label])
        validation.extend(keyed[:cut])
        train.extend(keyed[cut:])
    # the scan order (class, then path), independent of the keys
    order = {id(im): i for i, im in enumerate(images)}
    train.sort(key=lambda im: order[id(im)])
    validation.sort(key=lambda im: order[id(im)])
    return Split(train, validation, moved)
