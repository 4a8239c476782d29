"""Serving PNASNet over HTTP with dynamic batching (``pnasnet serve``).

* :mod:`.predictor`: the engine-neutral core (``Predictor``: decode, transform, batch, model,
  one result per request). Needs only the core library.
* :mod:`.gateway` and :mod:`.protocols`: the HTTP side every engine mounts: admission, deadlines,
  API key and metrics (``Gateway``), and the routes of pnasnet's own API, the Open Inference
  Protocol (KServe v2 / Triton) and TF Serving's REST predict API.
* :mod:`.litserve_engine`: the server on LitServe (one machine); needs the ``pnasnet[serve]``
  extra and is imported only when used. The Ray Serve engine (``--engine ray``, many machines) is
  :mod:`pnasnet.engines.ray_serve`: the same ``Predictor`` in a ``@serve.batch`` deployment.
* :mod:`.http_inputs`, :mod:`.http_outputs`, :mod:`.metrics`, :mod:`.shutdown`: the HTTP
  contract, shared by the engines.

    from pnasnet.serve import ServeSettings, run_server
    run_server(ServeSettings(model="pnasnet5_mobile", weights="tf-slim", port=8000))

Layer: serve. It may import the layers below it (training, tasks, bench, inference, api, weights,
data, model) but never engines or cli: the Ray Serve engine builds on it, not the other way round.
"""

from .predictor import CLASSIFY, FEATURES, INFO, LOGITS, LOGITS_AND_FEATURES, ImageInput, PredictRequest, PredictResult, Predictor
from .settings import ServeSettings, load_model

ENGINES = ("litserve",)

__all__ = ["CLASSIFY", "ENGINES", "FEATURES", "INFO", "LOGITS", "LOGITS_AND_FEATURES", "ImageInput", "PredictRequest", "PredictResult", "Predictor",
           "ServeSettings", "load_model", "run_server"]


def _require(module: str, extra: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise RuntimeError(f"{what} needs the {module} package: pip install 'pnasnet[{extra}]'")


def run_server(settings: ServeSettings, engine: str = "litserve", announce=None) -> None:
    """Serve ``settings`` on ``engine`` until SIGTERM / SIGINT (requests in flight are finished).
    ``announce()``, if given, is called once the settings are accepted, before the model loads."""
    if engine == "litserve":
        _require("litserve", "serve", "pnasnet serve")
        from .litserve_engine import run_server as run
    else:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    run(settings, announce)
