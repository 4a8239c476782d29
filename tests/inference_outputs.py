"""Reading the features outputs back in tests, and comparing vectors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np


def assert_same_vectors(actual, expected):
    """Equal up to float32 rounding: batch size changes the order of the sums in the convolutions,
    and random weights give activations in the thousands, so the tolerance follows their scale."""
    expected = np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))


def read_parquet(path):
    """``({path: (vector or None, error or None)}, run metadata)``; fails on a repeated path."""
    import pyarrow.parquet as pq
    table = pq.read_table(path)
    rows = {}
    for p, f, e in zip(*(table.column(c).to_pylist() for c in ("path", "features", "error"))):
        assert p not in rows, f"{p} appears twice"
        rows[p] = (None if f is None else np.asarray(f, np.float32), e)
    return rows, json.loads(table.schema.metadata[b"pnasnet"])


def read_output(out: Path):
    """As :func:`read_parquet`, for either format (``.npy`` reads the index and metadata too)."""
    if out.suffix == ".parquet":
        return read_parquet(out)
    vectors = np.load(out)
    stem = out.with_suffix("")
    with open(f"{stem}.index.csv", newline="") as fh:
        index = list(csv.DictReader(fh))
    rows = {}
    for entry in index:
        assert entry["path"] not in rows
        rows[entry["path"]] = (vectors[int(entry["row"])] if entry["row"] else None, entry["error"] or None)
    assert len(vectors) == sum(r[0] is not None for r in rows.values())
    return rows, json.loads(Path(f"{stem}.meta.json").read_text())
