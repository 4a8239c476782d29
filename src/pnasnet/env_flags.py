"""On/off switches read from the environment, spelled the same way everywhere."""

from __future__ import annotations

import os

__all__ = ["env_flag"]

_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def env_flag(name: str, default: bool, env: dict | None = None) -> bool:
    """``name`` in the environment (or ``env``) as a switch: 1/true/yes/on, 0/false/no/off (any case);
    ``default`` when it is unset, empty or anything else."""
    value = ((os.environ if env is None else env).get(name) or "").strip().lower()
    return True if value in _ON else False if value in _OFF else default
