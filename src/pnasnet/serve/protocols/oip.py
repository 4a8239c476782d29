"""The Open Inference Protocol (KServe v2; Triton's HTTP/REST API), so Triton, KServe and Seldon
clients work unchanged.

Routes: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/NAME[/versions/1]``
(metadata), ``/v2/models/NAME[/versions/1]/ready``; ``POST /v2/models/NAME[/versions/1]/infer``.

Inputs (exactly one per request):

* ``image`` ``BYTES`` ``[N]``: encoded image files (JPEG, PNG, ...), decoded and preprocessed like
  ``/v1/classify``'s. In JSON each element is the file in base64; with Triton's binary tensor
  extension (``Inference-Header-Content-Length``; tritonclient's ``binary_data=True``) the raw
  bytes, each with its 4-byte little-endian length in front.
* ``image`` (or ``images``, the TF-Hub name) ``FP32`` ``[N, S, S, 3]`` in [0, 1] at the served size
  ``S``: the TF-Hub signature, taken as it is.

Outputs (``outputs`` in the request; none asked = ``logits``, ``probabilities``, ``top_k``):
``logits`` and ``probabilities`` ``FP32`` ``[N, C]``, ``features`` ``FP32`` ``[N, F]``, ``top_k``
``BYTES`` ``[N, k]`` with ``"probability:index:label"`` (Triton's classification format; ``k`` from
the output's ``top_k`` or ``classification`` parameter, default 5). Triton's ``classification``
parameter also works on ``logits`` / ``probabilities`` (``"value:index:label"`` strings). Each
output is JSON, or binary where its ``binary_data`` parameter (or the request's
``binary_data_output``) asks. Errors: ``{"error": "..."}`` with the server's status codes.
"""

from __future__ import annotations

import json
import math

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...version import __version__
from ..gateway import Gateway, Route, error_error
from ..http_inputs import RequestRefused, parse_top_k, read_body
from ..predictor import FEATURES, LOGITS, LOGITS_AND_FEATURES, ImageInput, PredictRequest
from .tensors import VERSION, bad_request, check_count, decode_b64, json_object, pixel_images, softmax

HEADER_LENGTH = "Inference-Header-Content-Length"
CLASS_OUTPUTS = ("logits", "probabilities", "top_k")
OUTPUTS = (*CLASS_OUTPUTS, "features")
INPUT_NAMES = ("image", "images")
EXTENSIONS = ["binary_tensor_data", "classification"]


def _unknown_model(name: str, version: str | None, served: str) -> RequestRefused | None:
    if name != served:
        return RequestRefused(404, f"unknown model {name!r}: this server serves {served!r}", "not_found")
    if version not in (None, "", VERSION):
        return RequestRefused(404, f"model {name!r} has no version {version!r}: its one version is {VERSION}",
                              "not_found")
    return None


# ------------------------------------------------------------------------------- request body
def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """``(JSON header, binary tail)`` of an infer request."""
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise bad_request(f"{HEADER_LENGTH} {header_length!r} does not fit a body of {len(body)} bytes")
        cut = int(header_length)
    else:
        cut = len(body)
    return json_object(bytes(body[:cut]), "'inputs'"), memoryview(body)[cut:]


def _shape(tensor: dict, what: str) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise bad_request(f"{what}: 'shape' must be a list of non-negative integers, got {shape!r}")
    return shape


def _flat(data) -> list:
    out = []
    stack = [data]
    while stack:  # iterative flatten (nested JSON lists, row-major)
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def _bytes_elements(raw: memoryview, count: int, what: str) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise bad_request(f"{what}: binary BYTES data ends inside an element's length")
        length = int.from_bytes(raw[offset: offset + 4], "little")
        offset += 4
        if offset + length > len(raw):
            raise bad_request(f"{what}: binary BYTES element of {length} bytes runs past the data")
        elements.append(bytes(raw[offset: offset + length]))
        offset += length
    if len(elements) != count:
        raise bad_request(f"{what}: shape says {count} elements, the binary data holds {len(elements)}")
    return elements


def input_images(header: dict, binary: memoryview, size: int) -> list[ImageInput]:
    """The images of an infer request's one input."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad_request("'inputs' must hold exactly one tensor: 'image' (BYTES [N] encoded files, or FP32 "
                          f"[N, {size}, {size}, 3] in [0, 1])")
    tensor = inputs[0]
    name = tensor.get("name")
    if name not in INPUT_NAMES:
        raise bad_request(f"unknown input {name!r}: the input is 'image' (BYTES [N] encoded files, or FP32 "
                          f"[N, {size}, {size}, 3] in [0, 1])")
    what = f"input {name!r}"
    shape = _shape(tensor, what)
    count = math.prod(shape)
    datatype = tensor.get("datatype")
    parameters = tensor.get("parameters") or {}
    binary_size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if binary_size is not None:
        if not isinstance(binary_size, int) or binary_size < 0 or binary_size > len(binary):
            raise bad_request(f"{what}: binary_data_size {binary_size!r} does not fit the "
                              f"{len(binary)} bytes after the JSON header")
        raw = binary[:binary_size]
    elif "data" not in tensor:
        raise bad_request(f"{what}: no 'data' (and no binary_data_size)")
    if datatype == "BYTES":
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise bad_request(f"{what}: BYTES shape must be [N] (or [N, 1]): one encoded image file each, "
                              f"got {shape}")
        if binary_size is not None:
            files = _bytes_elements(raw, count, what)
        else:
            values = _flat(tensor["data"])
            if len(values) != count:
                raise bad_request(f"{what}: shape says {count} elements, 'data' holds {len(values)}")
            files = [decode_b64(v, f"{what}[{i}] (in JSON, BYTES image files are base64 strings)")
                     for i, v in enumerate(values)]
        for i, data in enumerate(files):
            if not data:
                raise bad_request(f"{what}[{i}]: empty image file")
        return [ImageInput(data, f"{what}[{i}]") for i, data in enumerate(files)]
    if datatype == "FP32":
        if binary_size is not None:
            if binary_size != 4 * count:
                raise bad_request(f"{what}: shape {shape} needs {4 * count} bytes of FP32, got {binary_size}")
            array = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        else:
            try:
                array = np.asarray(tensor["data"], dtype=np.float32).reshape(-1)  # flat or nested, in C
            except (TypeError, ValueError):
                raise bad_request(f"{what}: FP32 'data' must be numbers") from None
            if array.size != count:
                raise bad_request(f"{what}: shape says {count} elements, 'data' holds {array.size}")
        return pixel_images(array.reshape(shape), size, what)
    raise bad_request(f"{what}: datatype {datatype!r}; send BYTES (encoded image files) or FP32 (pixels in [0, 1])")


class _Asked:
    """One requested output: its name, whether binary, and its classification count (0: values)."""

    def __init__(self, name: str, binary: bool, classes: int):
        self.name, self.binary, self.classes = name, binary, classes


def requested_outputs(header: dict, has_classes: bool, max_top_k: int) -> list[_Asked]:
    request_params = header.get("parameters") or {}
    binary_default = bool(request_params.get("binary_data_output", False)) if isinstance(request_params, dict) \
        else False
    asked = header.get("outputs")
    if asked is None:
        names = CLASS_OUTPUTS if has_classes else ("features",)
        return [_Asked(n, binary_default, 5 if n == "top_k" else 0) for n in names]
    if not isinstance(asked, list) or not asked:
        raise bad_request("'outputs' must be a list of {'name': ...}")
    out = []
    for entry in asked:
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in OUTPUTS:
            raise bad_request(f"unknown output {name!r}; the outputs are {', '.join(OUTPUTS)}")
        if name in CLASS_OUTPUTS and not has_classes:
            raise bad_request(f"output {name!r}: this is a feature-vector model, it has no classifier; ask for "
                              "'features'")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise bad_request(f"output {name!r}: 'parameters' must be an object")
        classes = params.get("classification", params.get("top_k", 5 if name == "top_k" else 0))
        if name == "features" and classes:
            raise bad_request("output 'features' has no classification")
        if name == "top_k" and not classes:  # top_k is the classification: there is no top 0
            raise bad_request("output 'top_k': 'classification' must be at least 1")
        try:
            k = parse_top_k(classes, 0, max_top_k) if classes else 0
        except RequestRefused as refusal:
            raise bad_request(f"output {name!r}: {refusal.message}") from None
        out.append(_Asked(name, bool(params.get("binary_data", binary_default)), k))
    return out


# ---------------------------------------------------------------------------- response body
def _classification_strings(values: np.ndarray | None, top: list[list[tuple[int, str, float]]], k: int) -> np.ndarray:
    """``[N, k]`` Triton classification strings ``"value:index:label"`` (most probable first); the
    value is ``values[n, index]``, or with ``values`` None the probability ``top`` carries."""
    rows = [[f"{float(p if values is None else values[n, i]):.9g}:{i}:{label}" for i, label, p in entries[:k]]
            for n, entries in enumerate(top)]
    return np.array(rows, dtype=object).reshape(len(top), -1)


def _tensor(asked: _Asked, array: np.ndarray) -> tuple[dict, bytes | None]:
    datatype = "BYTES" if array.dtype == object else "FP32"
    entry = {"name": asked.name, "datatype": datatype, "shape": list(array.shape)}
    if not asked.binary:
        flat = array.reshape(-1)
        entry["data"] = flat.tolist() if datatype == "BYTES" else flat.astype(np.float32).tolist()
        return entry, None
    if datatype == "BYTES":
        blob = b"".join(len(b).to_bytes(4, "little") + b for b in (s.encode() for s in array.reshape(-1)))
    else:
        blob = np.ascontiguousarray(array, dtype="<f4").tobytes()
    entry["parameters"] = {"binary_data_size": len(blob)}
    return entry, blob


def infer_response(header: dict, name: str, tensors: list[tuple[dict, bytes | None]]) -> Response:
    body = {"model_name": name, "model_version": VERSION, "outputs": [entry for entry, _ in tensors]}
    if "id" in header:
        body["id"] = header["id"]
    blobs = [blob for _, blob in tensors if blob is not None]
    if not blobs:
        return JSONResponse(body)
    head = json.dumps(body, separators=(",", ":")).encode()
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(head))})


# -------------------------------------------------------------------------------------- routes
def routes(gateway: Gateway) -> list[Route]:
    settings = gateway.settings
    served = settings.served_name()
    server = {"name": "pnasnet", "version": __version__, "extensions": EXTENSIONS}

    async def server_metadata() -> dict:
        """Server name, version and protocol extensions."""
        return server

    async def live() -> dict:
        """Liveness: the HTTP side answers."""
        return {"live": True}

    async def ready() -> JSONResponse:
        """Readiness: a model is loaded and can answer."""
        ok, _ = gateway.readiness()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
        """Inputs and outputs of the model: names, datatypes, shapes."""
        async def work(deadline: float) -> dict:
            if refusal := _unknown_model(name, version, served):
                raise refusal
            info = await gateway.model_info()
            size, classes, features = info["image_size"], info["num_classes"], info["num_features"]
            outputs = ([{"name": "logits", "datatype": "FP32", "shape": [-1, classes]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
                        {"name": "top_k", "datatype": "BYTES", "shape": [-1, -1]}] if classes else [])
            outputs.append({"name": "features", "datatype": "FP32", "shape": [-1, features]})
            return {"name": served, "versions": [VERSION], "platform": "pytorch",
                    "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                               {"name": "images", "datatype": "FP32", "shape": [-1, size, size, 3]}],
                    "outputs": outputs,
                    "parameters": {"image_size": size, "transform": info["transform"],
                                   "input_note": "send one input: 'image' BYTES (encoded files) or FP32 pixels "
                                                 "[N, S, S, 3] in [0, 1] ('images' is the same)"}}

        return await gateway.handle(request, work, error_error, admit=False)

    async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
        """Whether the model can answer (200) or not yet (503)."""
        async def work(deadline: float) -> Response:
            if refusal := _unknown_model(name, version, served):
                raise refusal
            ok, _ = gateway.readiness()
            return JSONResponse({"name": served, "ready": ok}, status_code=200 if ok else 503)

        return await gateway.handle(request, work, error_error, admit=False)

    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        """Inference: one input 'image' (BYTES encoded files or FP32 [N, S, S, 3] in [0, 1]); outputs
        logits, probabilities, top_k, features."""
        async def work(deadline: float) -> Response:
            if refusal := _unknown_model(name, version, served):
                raise refusal
            body = await read_body(request, settings)
            header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
            info = await gateway.model_info()
            images = input_images(header, binary, info["image_size"])
            check_count(images, settings)
            asked = requested_outputs(header, bool(info["num_classes"]), settings.max_top_k)
            want_classes = [a for a in asked if a.name in CLASS_OUTPUTS]
            k = max((a.classes for a in want_classes), default=0)
            want_features = any(a.name == "features" for a in asked)
            # one job: classes and features together come from one pass through the network
            task = (LOGITS_AND_FEATURES if want_classes and want_features else
                    LOGITS if want_classes else FEATURES)
            result = await gateway.submit(PredictRequest(task, tuple(images), k if want_classes else 0, deadline))
            results = {LOGITS: result} if want_classes else {}
            arrays = {}
            if want_classes:
                arrays["logits"] = np.stack(result.outputs).astype(np.float32)
                if any(a.name == "probabilities" for a in asked):
                    arrays["probabilities"] = softmax(arrays["logits"])
            if want_features:
                vectors = result.features if task == LOGITS_AND_FEATURES else result.outputs
                arrays["features"] = np.stack(vectors).astype(np.float32)
            tensors = []
            for a in asked:
                if a.name == "top_k":  # the probabilities decode_top_k gave with the top classes
                    array = _classification_strings(None, results[LOGITS].top_k, a.classes)
                elif a.classes:
                    array = _classification_strings(arrays[a.name], results[LOGITS].top_k, a.classes)
                else:
                    array = arrays[a.name]
                tensors.append(_tensor(a, array))
            return infer_response(header, served, tensors)

        return await gateway.handle(request, work, error_error)

    routes = [Route("/v2", server_metadata, ["GET"]), Route("/v2/health/live", live, ["GET"]),
              Route("/v2/health/ready", ready, ["GET"])]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [Route(base, model_metadata, ["GET"]), Route(base + "/ready", model_ready, ["GET"]),
                   Route(base + "/infer", infer, ["POST"])]
    return routes
