"""The PNASNet-5 network: pure PyTorch, no I/O, no knowledge of file formats.

Layer: model, the bottom of the library. It may import only torch and the top-level helpers
(``atomic_files``, ``file_locks``, ``version``); every other layer builds on it."""

from .network import LARGE, MOBILE, PNASNet, PNASNetConfig

__all__ = ["LARGE", "MOBILE", "PNASNet", "PNASNetConfig"]
