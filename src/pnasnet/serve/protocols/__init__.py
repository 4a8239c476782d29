"""The HTTP protocols a server speaks, as engine-neutral routes over a
:class:`~pnasnet.serve.gateway.Gateway`; every engine mounts all of them.

* :mod:`.own`: pnasnet's own API (``POST /v1/classify``, ``/v1/features``; ``GET /v1/model``,
  ``/healthz``, ``/readyz``, ``/metrics``).
* :mod:`.oip`: the Open Inference Protocol (KServe v2 / Triton REST, ``/v2/...``), JSON and
  Triton's binary tensor extension.
* :mod:`.tf_serving`: TensorFlow Serving's REST predict API (``/v1/models/NAME:predict``), the way
  the TF-Hub module was served.
"""

from __future__ import annotations

from ..gateway import Gateway, Route

__all__ = ["all_routes"]


def all_routes(gateway: Gateway) -> list[Route]:
    """Every route of every protocol, for ``gateway``."""
    from . import oip, own, tf_serving

    return [*own.routes(gateway), *oip.routes(gateway), *tf_serving.routes(gateway)]
