"""The 1001-class label list (TF-Slim order) and decode_top_k."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pnasnet.data import decode_top_k, imagenet_labels, imagenet_wnids

# Well-known entries of the standard 1000-class ILSVRC-2012 order: (class, wnid, first lemma).
KNOWN = [
    (0, "n01440764", "tench"),
    (1, "n01443537", "goldfish"),
    (2, "n01484850", "great white shark"),
    (151, "n02085620", "Chihuahua"),
    (207, "n02099601", "golden retriever"),
    (281, "n02123045", "tabby"),
    (285, "n02124075", "Egyptian cat"),
    (291, "n02129165", "lion"),
    (409, "n02708093", "analog clock"),
    (417, "n02782093", "balloon"),
    (430, "n02802426", "basketball"),
    (504, "n03063599", "coffee mug"),
    (530, "n03196217", "digital clock"),
    (817, "n04285008", "sports car"),
    (948, "n07742313", "Granny Smith"),
    (954, "n07753592", "banana"),
    (999, "n15075141", "toilet tissue"),
]


def test_sizes_and_background():
    names, wnids = imagenet_labels(), imagenet_wnids()
    assert len(names) == len(wnids) == 1001
    assert names[0] == "background" and wnids[0] == ""
    assert imagenet_labels(background=False) == names[1:]
    assert imagenet_wnids(background=False) == wnids[1:]
    assert all(n and "\t" not in n for n in names)


def test_order_is_sorted_wnids():
    wnids = imagenet_wnids(background=False)
    assert len(set(wnids)) == 1000
    assert all(w.startswith("n") and len(w) == 9 and w[1:].isdigit() for w in wnids)
    assert wnids == sorted(wnids)  # the standard class order is the lexicographic wnid order
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"


@pytest.mark.parametrize("k,wnid,name", KNOWN)
def test_known_classes(k, wnid, name):
    assert imagenet_wnids(background=False)[k] == wnid
    assert imagenet_labels(background=False)[k] == name
    assert imagenet_wnids()[k + 1] == wnid  # TF-Slim: shifted by one
    assert imagenet_labels()[k + 1] == name


def test_full_lemmas():
    full = imagenet_labels(full=True)
    assert full[0] == "background"
    assert full[1] == "tench, Tinca tinca"
    assert full[1001 - 1] == "toilet tissue, toilet paper, bathroom tissue"
    short = imagenet_labels()
    assert all(f.split(", ")[0] == s for f, s in zip(full, short))
    assert short.count("crane") == 2 and short.count("maillot") == 2  # WordNet's duplicates, kept


def test_decode_top_k_1001():
    logits = torch.full((2, 1001), -10.0)
    logits[0, 208] = 5.0  # golden retriever (class 207 + 1)
    logits[0, 282] = 4.0  # tabby
    logits[1, 0] = 3.0  # background
    out = decode_top_k(logits, k=2)
    assert len(out) == 2 and len(out[0]) == 2
    (i0, n0, p0), (i1, n1, p1) = out[0]
    assert (i0, n0) == (208, "golden retriever") and (i1, n1) == (282, "tabby")
    expected = torch.softmax(logits[0].double(), 0)
    assert p0 == pytest.approx(float(expected[208]), rel=1e-12) and p1 == pytest.approx(float(expected[282]), rel=1e-12)
    assert p0 > p1 > 0 and p0 + p1 < 1
    assert out[1][0][:2] == (0, "background")


def test_decode_top_k_1000_and_inputs():
    logits = np.zeros(1000, np.float32)
    logits[207] = 8.0
    out = decode_top_k(logits, k=3)  # 1-D numpy: one image
    assert len(out) == 1 and out[0][0][:2] == (207, "golden retriever")
    assert sum(p for _, _, p in decode_top_k(logits, k=1000)[0]) == pytest.approx(1.0)
    assert decode_top_k([[0.0, 2.0, 1.0]], k=5, labels=["a", "b", "c"])[0] == [
        (1, "b", pytest.approx(0.665240955)),
        (2, "c", pytest.approx(0.244728471)),
        (0, "a", pytest.approx(0.090030573)),
    ]


def test_decode_top_k_errors():
    with pytest.raises(ValueError, match="1001"):
        decode_top_k(torch.zeros(1, 10))
    with pytest.raises(ValueError, match="labels"):
        decode_top_k(torch.zeros(1, 3), labels=["a", "b"])
    with pytest.raises(ValueError, match="k must"):
        decode_top_k(torch.zeros(1, 1001), k=0)
    with pytest.raises(ValueError, match="shape"):
        decode_top_k(torch.zeros(1, 2, 1001))
