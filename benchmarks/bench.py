#!/usr/bin/env python
"""PNASNet inference benchmark: our paths beside timm, TF-Slim, ONNX Runtime and OpenVINO, interleaved.

The engine is ``pnasnet.bench`` (also run by ``pnasnet bench``); see benchmarks/README.md
for the recipe (a benchmark virtualenv with torch 2.14.1 + torchvision 0.29.1 + timm).
"""

import sys

from pnasnet.bench.run import main

if __name__ == "__main__":
    sys.exit(main())
