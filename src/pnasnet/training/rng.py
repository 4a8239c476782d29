"""Random streams of a training run, made reproducible and resumable.

Every random choice that must not depend on *when* it is made (the order of an epoch, the
augmentation of one image) draws from its own generator seeded by :func:`derive_seed` from the
run's seed and what it is for, so it comes out the same in a worker process, after a resume, or
with other batches in flight. The global torch generator (dropout, drop path in the model) is
seeded once at the start and its state is saved in every checkpoint and restored on resume.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "generator_for", "get_rng_state", "set_rng_state"]


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed fixed by ``seed`` and ``parts`` (e.g. ``"order", epoch``)."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def generator_for(seed: int, *parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *parts))


def get_rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
