"""Write src/pnasnet/data/imagenet_1001_labels.tsv: TF-Slim's 1001 ImageNet classes.

Source of the data: the ``timm`` wheel from PyPI (made with timm 1.0.31), files
``timm/data/_info/imagenet_synsets.txt`` (the 1000 ILSVRC-2012 WordNet ids, one a line, in the
standard class order) and ``timm/data/_info/imagenet_synset_to_lemma.txt`` (WordNet id -> its
comma-separated WordNet lemmas, the same text as ``imagenet_metadata.txt`` that TF-Slim's
``datasets/imagenet.py`` reads for its readable names). timm is not installed for this; the wheel
is only read::

    pip download timm --no-deps -d $WHEELS
    python tools/make_labels.py $WHEELS/timm-*.whl

Output columns (tab-separated, with a header line):

* ``index``: 0..1000; 0 is TF-Slim's ``background`` class, ``k + 1`` is class ``k`` of the usual
  1000-class order (the WordNet ids sorted lexicographically, n01440764 ... n15075141).
* ``wnid``: the WordNet id (empty for background).
* ``name``: the first lemma, e.g. ``golden retriever`` (as Keras' and torchvision's lists; two
  names occur twice in WordNet's first lemmas: ``crane`` bird/machine and ``maillot``).
* ``lemmas``: all the lemmas, as TF-Slim prints them, e.g. ``tench, Tinca tinca``.

``--check-torchvision WHEEL`` compares the names with torchvision's ``_IMAGENET_CATEGORIES``
(``torchvision/models/_meta.py`` in a torchvision wheel) and prints every difference. With
torchvision 0.29.1 the only two are torchvision's own disambiguations (index 134 ``crane bird``,
639 ``maillot tank suit``).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import zipfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "pnasnet", "data", "imagenet_1001_labels.tsv")

SYNSETS = "timm/data/_info/imagenet_synsets.txt"
LEMMAS = "timm/data/_info/imagenet_synset_to_lemma.txt"


def read_timm(wheel: str) -> list[tuple[str, str]]:
    with zipfile.ZipFile(wheel) as z:
        wnids = z.read(SYNSETS).decode("utf-8").split()
        lemmas: dict[str, str] = {}
        for line in z.read(LEMMAS).decode("utf-8").splitlines():
            if line.strip():
                wnid, text = line.split("\t", 1)
                lemmas[wnid] = text.strip()
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise SystemExit(f"{SYNSETS}: expected 1000 distinct WordNet ids, got {len(wnids)}")
    if wnids != sorted(wnids):
        raise SystemExit(f"{SYNSETS}: not in sorted (standard) order")
    missing = [w for w in wnids if w not in lemmas]
    if missing:
        raise SystemExit(f"{LEMMAS}: no lemmas for {missing[:5]}")
    return [(w, lemmas[w]) for w in wnids]


def torchvision_names(wheel: str) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        tree = ast.parse(z.read("torchvision/models/_meta.py").decode("utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_IMAGENET_CATEGORIES":
            return list(ast.literal_eval(node.value))
    raise SystemExit("_IMAGENET_CATEGORIES not found in torchvision/models/_meta.py")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("timm_wheel", help="path to a timm-*.whl (pip download timm --no-deps)")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--check-torchvision", metavar="WHEEL", help="compare names with a torchvision wheel")
    args = ap.parse_args(argv)

    rows = read_timm(args.timm_wheel)
    for wnid, lem in rows:
        if "\t" in lem or "\n" in lem:
            raise SystemExit(f"bad lemma text for {wnid}: {lem!r}")
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write("index\twnid\tname\tlemmas\n")
        f.write("0\t\tbackground\tbackground\n")
        for i, (wnid, lem) in enumerate(rows, start=1):
            f.write(f"{i}\t{wnid}\t{lem.split(', ')[0]}\t{lem}\n")
    print(f"wrote {os.path.normpath(args.out)}: 1001 rows")

    if args.check_torchvision:
        tv = torchvision_names(args.check_torchvision)
        ours = [lem.split(", ")[0] for _, lem in rows]
        diffs = [(i, a, b) for i, (a, b) in enumerate(zip(ours, tv)) if a != b]
        print(f"torchvision: {len(tv)} names, {len(diffs)} differ (index in the 1000-class order):")
        for i, a, b in diffs:
            print(f"  {i}: ours {a!r}, torchvision {b!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
