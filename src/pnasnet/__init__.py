"""pnasnet: PNASNet-5 Large and Mobile in PyTorch, exactly TF-Slim's function, with the TF-Hub
image-classification and feature-vector signatures.

    import pnasnet, torch
    model = pnasnet.create_model("pnasnet5_large", pretrained=True)  # TF-Slim weights (downloaded once)
    model = pnasnet.create_model("pnasnet5_large")          # random weights; weights=... to load others
    logits = model.classify(torch.rand(2, 3, 331, 331))     # [2, 1001], 0 = background
    feats = model.features(torch.rand(2, 3, 331, 331))      # [2, 4320]
    x = pnasnet.load_images(["cat.jpg"], size=331)          # decode + TF-Slim eval transform
    pnasnet.decode_top_k(model.classify(x), k=5)            # [(index, label, probability), ...]
"""

from .api import create_model, list_models
from .data import decode_top_k, load_images
from .model import LARGE, MOBILE, PNASNet, PNASNetConfig
from .version import __version__
__all__ = ["LARGE", "MOBILE", "PNASNet", "PNASNetConfig", "create_model", "decode_top_k", "list_models",
           "load_images"]
