"""A Ray driver for the kill-the-job test: ``python ray_driver.py ADDRESS WEIGHTS SRC DEST DELAY``
extracts the features of SRC into DEST on the Ray cluster at ADDRESS with a slowed-down model
(:class:`ray_helpers.SlowModel`), printing "started" once connected."""

import sys

import pnasnet
from pnasnet.engines import expand_sources, extract_features_ray

from ray_helpers import slow_copy

if __name__ == "__main__":
    address, weights, src, dest, delay = sys.argv[1:6]
    model = slow_copy(pnasnet.create_model("auto", weights=weights), float(delay))
    print("started", flush=True)
    extract_features_ray(model, expand_sources([src]), dest, model_name="auto", weights=weights, image_size=64,
                         batch_size=2, chunk_size=2, address=address, concurrency=1, quiet=True,
                         backend="plain")  # the slowed-down model itself, not its inference form
    print("finished", flush=True)
