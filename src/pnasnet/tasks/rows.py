"""``RowBlock``: consecutive feature rows as every stage passes them on (model, chunks, outputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["RowBlock"]


@dataclass
class RowBlock:
    """Row ``i`` is ``paths[i]``: a vector if ``errors[i] is None``, else the reason it has none.
    ``features`` holds the vectors of the good rows only, in row order: float32 ``[n_ok, D]``."""

    paths: list[str]
    errors: list[str | None]
    features: np.ndarray

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.errors):
            raise ValueError(f"{len(self.paths)} paths but {len(self.errors)} error entries")
        if self.features.ndim != 2 or len(self.features) != self.num_ok:
            raise ValueError(f"features {self.features.shape} do not match {self.num_ok} good rows")

    @property
    def num_ok(self) -> int:
        return sum(e is None for e in self.errors)

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, keep: Sequence[bool]) -> "RowBlock":
        """The rows where ``keep`` is true, in order."""
        ok = np.array([e is None for e in self.errors], dtype=bool)
        keep_mask = np.asarray(keep, dtype=bool).reshape(len(self.paths))
        return RowBlock([p for p, k in zip(self.paths, keep_mask) if k],
                        [e for e, k in zip(self.errors, keep_mask) if k],
                        self.features[keep_mask[ok]])

    @classmethod
    def concat(cls, blocks: Sequence["RowBlock"], num_features: int) -> "RowBlock":
        if not blocks:
            return cls([], [], np.empty((0, num_features), np.float32))
        return cls([p for b in blocks for p in b.paths], [e for b in blocks for e in b.errors],
                   np.concatenate([b.features for b in blocks]))
