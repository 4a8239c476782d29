"""Workflows over many image files: classification and feature extraction.

    from pnasnet.tasks import expand_inputs, classify_paths, extract_features
    paths = expand_inputs(["photos/", "more/*.jpg", "@list.txt"])
    for result in classify_paths(model, paths, top_k=5):       # lazy, one result per path
        print(result.path, result.error or result.top_k[0])
    summary = extract_features(model, paths, "feats.parquet")  # resumable; bad files listed

Modules: ``inputs`` (paths from arguments), ``batches`` (parallel decoding), ``inference``
(batched model runs), ``extract`` + ``chunks`` + ``formats`` (resumable feature files),
``run_info`` (what made an output), ``progress`` (reporting).

Layer: the local workflows (and :mod:`.convert`: weights in any form to ours). They may import
the layers below (bench, inference, api, weights, data, model); never training, serve, engines, cli.
"""

from .batches import TRANSFORMS, DecodedBatch, default_workers, iter_image_batches
from .extract import FeaturesSummary, extract_features
from .inference import Classification, ImageFeatures, classify_paths, iter_features, run_model
from .inputs import IMAGE_EXTENSIONS, expand_inputs
from .progress import Progress, TqdmProgress
from .run_info import OutputMismatchError, RunInfo, parameters_sha256

__all__ = [
    "IMAGE_EXTENSIONS", "TRANSFORMS", "Classification", "DecodedBatch", "FeaturesSummary", "ImageFeatures",
    "OutputMismatchError", "Progress", "RunInfo", "TqdmProgress", "classify_paths", "default_workers",
    "expand_inputs", "extract_features", "iter_features", "iter_image_batches", "parameters_sha256", "run_model",
]
