"""The command line (``pnasnet ...``): one module per command group (inference, weights, train,
serve, bench, export) beside :mod:`.main` and the shared options (:mod:`.options`). It parses, prints and
sets exit codes; it may import every other layer, and nothing but ``pnasnet.__main__`` imports it.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
