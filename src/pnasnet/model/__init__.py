"""The PNASNet-5 network: pure PyTorch, no I/O, no knowledge of file formats."""

from .network import LARGE, MOBILE, PNASNet, PNASNetConfig

__all__ = ["LARGE", "MOBILE", "PNASNet", "PNASNetConfig"]
