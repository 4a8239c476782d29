"""Engines that run the classify / features workflows beyond one process.

``--engine local`` (the default) is :mod:`pnasnet.tasks`. ``--engine ray`` runs the same work on
Ray Data, on this machine or on a cluster (``pip install 'pnasnet[ray]'``):

    from pnasnet.engines import expand_sources, extract_features_ray, open_features
    paths = expand_sources(["s3://bucket/photos/"])                 # or folders, globs, @LIST
    summary = extract_features_ray(model, paths, "s3://bucket/feats/", weights="tf-slim",
                                   address="ray://head:10001", concurrency=8)
    output = open_features("s3://bucket/feats/")                    # any features output
    print(output.read_info(), sum(len(b) for b in output.iter_blocks()))

Ray is imported only when a Ray function runs: ``import pnasnet.engines`` works without it.

Layer: runners beyond one process. They call :mod:`pnasnet.tasks` / :mod:`pnasnet.serve` pieces and
return results (the command line prints them); they may import every layer but ``cli``.
"""

from __future__ import annotations

from typing import Any

from .parquet_folder import ParquetFolderOutput, open_features
from .sources import decode_source, expand_sources, is_uri

__all__ = ["ENGINES", "ParquetFolderOutput", "PoolSize", "classify_paths_ray", "decode_source", "expand_sources",
           "extract_features_ray", "is_uri", "open_features", "ray_session"]

#: The values of ``--engine``.
ENGINES = ("local", "ray")

_RAY_NAMES = {"PoolSize", "classify_paths_ray", "extract_features_ray", "ray_session", "RayNotInstalledError"}


def __getattr__(name: str) -> Any:
    if name in _RAY_NAMES:  # the module imports Ray only inside its functions, so this is cheap
        from . import ray_data

        return getattr(ray_data, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
