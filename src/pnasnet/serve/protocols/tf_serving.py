"""TensorFlow Serving's REST API, as the TF-Hub PNASNet modules were served: a client written for
them under TF Serving works unchanged.

* ``POST /v1/models/NAME[/versions/1]:predict`` with ``{"signature_name": ..., "instances": [...]}``
  (row format, answered ``{"predictions": [...]}``) or ``{"inputs": ...}`` (columnar, answered
  ``{"outputs": ...}``). Each image is ``[S, S, 3]`` floats in [0, 1] at the served size, exactly
  what the TF-Hub module took, or ``{"b64": "..."}``: an encoded image file, decoded and
  preprocessed like ``/v1/classify``'s. An instance may also be ``{"images": IMAGE}`` (any one input
  name), and ``inputs`` may be ``{"images": [IMAGE, ...]}``.
* ``signature_name``: ``serving_default`` / ``default`` / ``image_classification`` give the logits
  (``[N, C]``; the features for a feature-vector model), ``image_feature_vector`` the feature
  vectors (``[N, F]``).
* ``GET /v1/models/NAME[/versions/1]``: version status; ``GET /v1/models/NAME/metadata``: the
  signatures.

Errors: ``{"error": "..."}`` with the server's status codes.
"""

from __future__ import annotations


import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from ..gateway import Gateway, Route, error_error
from ..http_inputs import RequestRefused, read_body
from ..predictor import FEATURES, LOGITS, ImageInput, PredictRequest
from .tensors import VERSION, bad_request, check_count, decode_b64, json_object, pixel_images

CLASSIFICATION_SIGNATURES = ("serving_default", "default", "image_classification")
SIGNATURES = (*CLASSIFICATION_SIGNATURES, "image_feature_vector")


def _unknown_model(name: str, version: str | None, served: str) -> RequestRefused | None:
    if name != served:
        return RequestRefused(404, f"Servable not found for request: Latest({name}); this server serves {served!r}",
                              "not_found")
    if version not in (None, VERSION):
        return RequestRefused(404, f"Servable not found for request: Specific({name}, {version}); its one version "
                                   f"is {VERSION}", "not_found")
    return None


def _image(value, size: int, what: str) -> ImageInput:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return ImageInput(decode_b64(value["b64"], what), what)
    if isinstance(value, dict) and len(value) == 1:  # {"images": IMAGE}: one named input
        (key, inner), = value.items()
        return _image(inner, size, f"{what}.{key}")
    if not isinstance(value, list):
        raise bad_request(f"{what}: an image is [{size}, {size}, 3] floats in [0, 1] or {{\"b64\": \"...\"}}")
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise bad_request(f"{what}: not a [{size}, {size}, 3] array of numbers") from None
    [image] = pixel_images(array[None], size, what)
    return ImageInput(b"", what, image.pixels)


def request_images(body: dict, size: int) -> tuple[list[ImageInput], bool]:
    """``(images, row format)`` of a predict body."""
    if ("instances" in body) == ("inputs" in body):
        raise bad_request("the request needs exactly one of 'instances' (row format) or 'inputs' (columnar)")
    if "instances" in body:
        batch, what = body["instances"], "instances"
    else:
        batch, what = body["inputs"], "inputs"
        if isinstance(batch, dict):
            if len(batch) != 1:
                raise bad_request(f"'inputs' names {len(batch)} inputs; this model has one (images)")
            (key, batch), = batch.items()
            what = f"inputs.{key}"
    if not isinstance(batch, list):
        raise bad_request(f"'{what}' must be a list of images")
    return [_image(value, size, f"{what}[{i}]") for i, value in enumerate(batch)], "instances" in body


def routes(gateway: Gateway) -> list[Route]:
    settings = gateway.settings
    served = settings.served_name()

    async def predict(request: Request, name: str, version: str | None = None) -> Response:
        """TF Serving's predict: logits or feature vectors of the images."""
        async def work(deadline: float) -> dict:
            if refusal := _unknown_model(name, version, served):
                raise refusal
            raw = await read_body(request, settings)
            body = json_object(raw, "'instances' or 'inputs'")
            signature = body.get("signature_name") or "serving_default"
            if signature not in SIGNATURES:
                raise bad_request(f"unknown signature_name {signature!r}; this model has {', '.join(SIGNATURES)}")
            info = await gateway.model_info()
            images, rows = request_images(body, info["image_size"])
            check_count(images, settings)
            task = LOGITS if signature in CLASSIFICATION_SIGNATURES and info["num_classes"] else FEATURES
            result = await gateway.submit(PredictRequest(task, tuple(images), 0, deadline))
            values = [np.asarray(v, np.float32).tolist() for v in result.outputs]
            return {"predictions": values} if rows else {"outputs": values}

        return await gateway.handle(request, work, error_error)

    async def status(request: Request, name: str, version: str | None = None) -> Response:
        """Version status of the model (TF Serving's GetModelStatus)."""
        async def work(deadline: float) -> dict:
            if refusal := _unknown_model(name, version, served):
                raise refusal
            ok, _ = gateway.readiness()
            return {"model_version_status": [{"version": VERSION, "state": "AVAILABLE" if ok else "LOADING",
                                              "status": {"error_code": "OK", "error_message": ""}}]}

        return await gateway.handle(request, work, error_error, admit=False)

    async def metadata(request: Request, name: str, version: str | None = None) -> Response:
        """The signatures: inputs and outputs with their shapes."""
        async def work(deadline: float) -> dict:
            if refusal := _unknown_model(name, version, served):
                raise refusal
            info = await gateway.model_info()
            size = info["image_size"]

            def spec(tensor: str, dims: list[int]) -> dict:
                return {"dtype": "DT_FLOAT", "name": tensor, "tensor_shape": {"dim": [{"size": str(d)} for d in dims]}}

            images = {"images": spec("images:0", [-1, size, size, 3])}
            logits = {"default": spec("logits:0", [-1, info["num_classes"]])}
            features = {"default": spec("features:0", [-1, info["num_features"]])}
            signatures = {s: {"inputs": images, "outputs": logits if info["num_classes"] else features,
                              "method_name": "tensorflow/serving/predict"} for s in CLASSIFICATION_SIGNATURES}
            signatures["image_feature_vector"] = {"inputs": images, "outputs": features,
                                                  "method_name": "tensorflow/serving/predict"}
            return {"model_spec": {"name": served, "signature_name": "", "version": VERSION},
                    "metadata": {"signature_def": {"signature_def": signatures}}}

        return await gateway.handle(request, work, error_error, admit=False)

    return [Route("/v1/models/{name}:predict", predict, ["POST"]),
            Route("/v1/models/{name}/versions/{version}:predict", predict, ["POST"]),
            Route("/v1/models/{name}/metadata", metadata, ["GET"]),
            Route("/v1/models/{name}/versions/{version}/metadata", metadata, ["GET"]),
            Route("/v1/models/{name}", status, ["GET"]),
            Route("/v1/models/{name}/versions/{version}", status, ["GET"])]
