"""A model's identity by value: what its outputs depend on, not where its weights came from."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["parameters_sha256"]


def parameters_sha256(model: nn.Module) -> str:
    """SHA-256 over the state dict in name order: each name, dtype, shape and the raw bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # uint8 view: every dtype (bfloat16 included) has bytes, not every one has a numpy dtype
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
