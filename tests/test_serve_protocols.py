"""The Open Inference Protocol (KServe v2, with Triton's own client library) and TF Serving's REST
predict API on both serving engines: a real ``pnasnet serve`` on 127.0.0.1 (the reduced TF-Slim
checkpoint at 48 px). Answers equal the engine-neutral Predictor's for the same images; errors come
in each protocol's shape; a bad image fails only its own request. The Ray Serve server (local Ray,
2 CPUs, two replicas) is started once for the module and also loses a replica under load."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import os
import signal
import time

import numpy as np
import pytest

pytest.importorskip("litserve")
httpx = pytest.importorskip("httpx")
triton = pytest.importorskip("tritonclient.http")

import pnasnet  # noqa: E402
from pnasnet.data import decode_image  # noqa: E402
from pnasnet.serve import FEATURES, LOGITS, ImageInput, PredictRequest, Predictor  # noqa: E402
from pnasnet.tasks.batches import TRANSFORMS  # noqa: E402

from inference_images import write_small_crops  # noqa: E402
from inference_outputs import assert_same_vectors  # noqa: E402
from serve_server import TINY_CHECKPOINT, ServerProcess, session_members  # noqa: E402

SIZE = 48
NAME = "pnasnet"  # the served name of --model auto
pytestmark = pytest.mark.usefixtures("one_model_thread")
HAS_RAY_SERVE = all(importlib.util.find_spec(m) is not None for m in ("ray", "ray.serve", "pnasnet.engines.ray_serve"))
ENGINES = ["litserve", pytest.param("ray", marks=pytest.mark.skipif(not HAS_RAY_SERVE,
                                                                   reason="needs pnasnet[ray] (ray[serve])"))]
COMMON = ["--model", "auto", "--weights", TINY_CHECKPOINT, "--image-size", SIZE, "--max-batch-size", 8,
          "--max-wait-ms", 20, "--threads", 1, "--max-body-bytes", 1_000_000, "--max-files", 8, "--timeout", 30,
          "--log-level", "warning"]
ENGINE_ARGS = {"litserve": [], "ray": ["--engine", "ray", "--replicas", 2, "--cpus-per-replica", 0.5]}


@pytest.fixture(scope="module", params=ENGINES)
def server(request, tmp_path_factory):
    engine = request.param
    log = tmp_path_factory.mktemp(f"serve_{engine}") / "server.log"
    with ServerProcess([*COMMON, *ENGINE_ARGS[engine]], log, start_timeout=120) as process:
        process.engine = engine
        yield process


@pytest.fixture(scope="module")
def triton_client(server):
    client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60,
                                          connection_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return [p.read_bytes() for p in write_small_crops(tmp_path_factory.mktemp("crops"), 6, side=64)]


@pytest.fixture(scope="module")
def reference():
    """The engine-neutral core in this process, on the plain model: the answers to expect."""
    predictor = Predictor(pnasnet.create_model("auto", weights=TINY_CHECKPOINT), image_size=SIZE, decode_threads=1)

    def run(task, data: list[bytes], k: int = 5):
        [result] = predictor.predict([PredictRequest(task, tuple(ImageInput(d) for d in data), k)])
        assert result.error is None, result.error
        return np.stack(result.outputs), result.top_k

    return run


def pixels(data: bytes) -> np.ndarray:
    """What the server makes of an encoded image: [S, S, 3] floats in [0, 1]."""
    return TRANSFORMS["tf-slim"](decode_image(data), SIZE).permute(1, 2, 0).numpy()


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def close(actual, expected):
    """The server's inference form against the plain model here (other kernels): 1e-4 relative,
    near-zero values within 1e-5 of the largest magnitude (not an absolute 1e-5)."""
    assert_same_vectors(actual, expected)


# ------------------------------------------------------------------------ Open Inference Protocol
def test_oip_health_and_metadata(triton_client):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(NAME)
    assert not triton_client.is_model_ready("no_such_model")
    server = triton_client.get_server_metadata()
    assert server["name"] == "pnasnet" and "binary_tensor_data" in server["extensions"]
    meta = triton_client.get_model_metadata(NAME)
    assert meta["name"] == NAME and meta["versions"] == ["1"]
    assert {(i["name"], i["datatype"]) for i in meta["inputs"]} == {("image", "BYTES"), ("images", "FP32")}
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["logits"]["shape"] == [-1, 11] and outputs["features"]["shape"] == [-1, 200]
    with pytest.raises(triton.InferenceServerException) as error:
        triton_client.get_model_metadata("no_such_model")
    assert error.value.status() == "404" and "no_such_model" in error.value.message()


def _bytes_input(data: list[bytes], binary: bool):
    tensor = triton.InferInput("image", [len(data)], "BYTES")
    values = data if binary else [base64.b64encode(d) for d in data]
    tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_oip_encoded_images_give_every_output(triton_client, images, reference, binary):
    data = images[:3]
    outputs = [triton.InferRequestedOutput("logits", binary_data=binary),
               triton.InferRequestedOutput("probabilities", binary_data=not binary),
               triton.InferRequestedOutput("top_k", binary_data=binary, class_count=3),
               triton.InferRequestedOutput("features", binary_data=binary)]
    result = triton_client.infer(NAME, [_bytes_input(data, binary)], outputs=outputs, request_id="r1")
    logits, top = reference(LOGITS, data, 3)
    close(result.as_numpy("logits"), logits)
    close(result.as_numpy("probabilities"), softmax(logits.astype(np.float64)))
    top_k = result.as_numpy("top_k")
    assert top_k.shape == (3, 3)
    for row, expected in zip(top_k, top):
        entries = [(s.decode() if isinstance(s, bytes) else s).split(":") for s in row]
        assert [int(i) for _, i, _ in entries] == [i for i, _, _ in expected]
        close(np.array([float(p) for p, _, _ in entries]), np.array([p for _, _, p in expected]))
    features, _ = reference(FEATURES, data)
    for got, want in zip(result.as_numpy("features"), features):
        assert_same_vectors(got, want)
    assert result.get_response()["id"] == "r1"


def test_oip_float_images_are_the_tf_hub_signature(server, triton_client, images, reference):
    batch = np.stack([pixels(d) for d in images[:2]]).astype(np.float32)
    tensor = triton.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    result = triton_client.infer(NAME, [tensor], outputs=[triton.InferRequestedOutput("logits")],
                                 request_compression_algorithm="gzip")
    close(result.as_numpy("logits"), reference(LOGITS, images[:2])[0])
    # The same in plain JSON, under the TF-Hub input name, with the default outputs.
    body = {"inputs": [{"name": "images", "datatype": "FP32", "shape": list(batch.shape), "data": batch.tolist()}]}
    answer = httpx.post(f"{server.url}/v2/models/{NAME}/versions/1/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    out = {o["name"]: o for o in answer.json()["outputs"]}
    assert set(out) == {"logits", "probabilities", "top_k"} and out["top_k"]["shape"] == [2, 5]
    close(np.array(out["logits"]["data"]).reshape(2, 11), reference(LOGITS, images[:2])[0])


@pytest.mark.parametrize("body, status, words", [
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["bm90IGFuIGltYWdl"]}]}, 422,
     "cannot decode image"),
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, SIZE, SIZE, 3], "data": [2.0] * (SIZE * SIZE * 3)}]},
     422, "in [0, 1]"),
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 8, 8, 3], "data": [0.5] * 192}]}, 400,
     f"[N, {SIZE}, {SIZE}, 3]"),
    ({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1], "data": [0.5]}]}, 400, "unknown input"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["!!"]}]}, 400, "base64"),
    ({"inputs": [{"name": "image", "datatype": "INT8", "shape": [1], "data": [1]}]}, 400, "datatype"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}],
      "outputs": [{"name": "nope"}]}, 400, "unknown output"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}],
      "outputs": [{"name": "top_k", "parameters": {"classification": 0}}]}, 400, "at least 1"),  # was a 500
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, SIZE, SIZE, 3], "data": [[0.5, "x"]]}]}, 400,
     "must be numbers"),
])
def test_oip_errors_are_in_its_shape(server, body, status, words):
    response = httpx.post(f"{server.url}/v2/models/{NAME}/infer", json=body, timeout=60)
    assert response.status_code == status, response.text[:300]
    assert words in response.json()["error"]


def test_oip_limits_and_unknown_models(server):
    too_big = httpx.post(f"{server.url}/v2/models/{NAME}/infer", content=b"{" + b" " * 1_000_001 + b"}", timeout=60)
    assert too_big.status_code == 413 and "--max-body-bytes" in too_big.json()["error"]
    unknown = httpx.post(f"{server.url}/v2/models/other/infer", json={"inputs": []}, timeout=60)
    assert unknown.status_code == 404 and "other" in unknown.json()["error"]
    assert httpx.get(f"{server.url}/v2/models/{NAME}/versions/7/ready").status_code == 404


def test_a_bad_image_fails_alone_in_both_protocols(server, images, reference):
    bad = images[1][: len(images[1]) // 2]

    def oip(data):
        return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                            "data": [base64.b64encode(data).decode()]}], "outputs": [{"name": "logits"}]}

    async def burst():
        async with httpx.AsyncClient(timeout=60) as http:
            jobs = []
            for i in range(8):
                data = bad if i in (1, 6) else images[i % len(images)]
                if i % 2:
                    body = {"instances": [{"b64": base64.b64encode(data).decode()}]}
                    jobs.append(http.post(f"{server.url}/v1/models/{NAME}:predict", json=body))
                else:
                    jobs.append(http.post(f"{server.url}/v2/models/{NAME}/infer", json=oip(data)))
            return await asyncio.gather(*jobs)

    for i, response in enumerate(asyncio.run(burst())):
        if i in (1, 6):
            assert response.status_code == 422 and "truncated" in response.json()["error"], response.text[:300]
            continue
        assert response.status_code == 200, response.text[:300]
        want = reference(LOGITS, [images[i % len(images)]])[0]
        got = response.json()["predictions"] if i % 2 else response.json()["outputs"][0]["data"]
        close(np.asarray(got, np.float32).reshape(want.shape), want)


# ------------------------------------------------------------------------------- TF Serving REST
def test_tf_serving_predict_rows_and_columns(server, images, reference):
    floats = [pixels(d).tolist() for d in images[:2]]
    logits = reference(LOGITS, images[:2])[0]
    url = f"{server.url}/v1/models/{NAME}"
    rows = httpx.post(url + ":predict", json={"instances": floats}, timeout=60)
    assert rows.status_code == 200, rows.text[:300]
    close(np.array(rows.json()["predictions"]), logits)
    named = httpx.post(url + "/versions/1:predict", json={"signature_name": "image_classification",
                                                          "instances": [{"images": f} for f in floats]}, timeout=60)
    close(np.array(named.json()["predictions"]), logits)
    columns = httpx.post(url + ":predict", json={"inputs": {"images": [{"b64": base64.b64encode(d).decode()}
                                                                       for d in images[:2]]}}, timeout=60)
    close(np.array(columns.json()["outputs"]), logits)
    features = httpx.post(url + ":predict", json={"signature_name": "image_feature_vector",
                                                  "instances": [{"b64": base64.b64encode(images[0]).decode()}]},
                          timeout=60)
    assert_same_vectors(np.array(features.json()["predictions"][0], np.float32), reference(FEATURES, images[:1])[0][0])


def test_tf_serving_status_metadata_and_errors(server):
    url = f"{server.url}/v1/models"
    status = httpx.get(f"{url}/{NAME}").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    signatures = httpx.get(f"{url}/{NAME}/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert signatures["image_feature_vector"]["outputs"]["default"]["tensor_shape"]["dim"][1]["size"] == "200"
    cases = [
        (f"{url}/other:predict", {"instances": []}, 404, "other"),
        (f"{url}/{NAME}/versions/2:predict", {"instances": []}, 404, "Specific"),
        (f"{url}/{NAME}:predict", {"instances": [[[0.5]]]}, 400, f"[N, {SIZE}, {SIZE}, 3]"),
        (f"{url}/{NAME}:predict", {"instances": [{"b64": base64.b64encode(b"no image").decode()}]}, 422,
         "cannot decode image"),
        (f"{url}/{NAME}:predict", {"signature_name": "nope", "instances": []}, 400, "signature_name"),
        (f"{url}/{NAME}:predict", {"instances": [], "inputs": []}, 400, "exactly one"),
        (f"{url}/{NAME}:predict", {"instances": [{"b64": "aGk="}] * 9}, 400, "--max-files"),
    ]
    for path, body, code, words in cases:
        response = httpx.post(path, json=body, timeout=60)
        assert response.status_code == code, (path, body if len(str(body)) < 200 else "", response.text[:300])
        assert words in response.json()["error"], response.json()


def test_own_api_and_metrics_on_every_engine(server, images, reference):
    answer = httpx.post(f"{server.url}/v1/classify", content=images[0], headers={"Content-Type": "image/jpeg"},
                        timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    _, top = reference(LOGITS, images[:1])
    assert [e["index"] for e in answer.json()["results"][0]["top_k"]] == [i for i, _, _ in top[0]]
    text = httpx.get(f"{server.url}/metrics").text
    if server.engine == "ray":  # the answering replica's own registry (it need not have served an infer)
        assert "pnasnet_replica{" in text
    else:
        assert 'pnasnet_requests_total{endpoint="/v2/models/infer",status="200"}' in text
    assert "pnasnet_batch_size_bucket" in text


# --------------------------------------------------------------------------------- Ray Serve only
def test_ray_replica_killed_under_load_loses_no_request_silently(server, images):
    if server.engine != "ray":
        pytest.skip("Ray Serve only")
    pids = set()
    for _ in range(20):
        pids.add(httpx.get(f"{server.url}/v1/model", timeout=60).json()["replica_pid"])
        if len(pids) == 2:
            break
    assert len(pids) == 2, f"expected two replicas, saw {pids}"
    victim = sorted(pids)[0]
    body = {"instances": [{"b64": base64.b64encode(image).decode()} for image in (images * 2)[:8]]}

    async def load():
        """16 clients, each posting one request after another for 3 s; the victim dies at 1 s.
        Returns ``(sent after the kill?, status or error name)`` per request."""
        answers = []
        async with httpx.AsyncClient(timeout=120) as http:
            async def client():
                while time.monotonic() < stop:
                    after = killed.is_set()
                    try:
                        code = (await http.post(f"{server.url}/v1/models/{NAME}:predict", json=body)).status_code
                    except httpx.HTTPError as error:  # a broken connection is an answer too: the client knows
                        code = type(error).__name__
                    answers.append((after, code))

            async def kill():
                await asyncio.sleep(1.0)
                os.kill(victim, signal.SIGKILL)
                killed.set()

            killed = asyncio.Event()
            stop = time.monotonic() + 3.0
            await asyncio.gather(*(client() for _ in range(16)), kill())
        return answers

    start = time.monotonic()
    answers = asyncio.run(load())
    assert time.monotonic() - start < 100, "no request may hang"
    failed = [code for _, code in answers if code != 200]
    assert all(isinstance(c, int) and 500 <= c < 600 for c in failed), failed
    # The victim is gone; what it held came back as 5xx (often one or two requests, or none when Ray
    # had not handed it any at that moment), never as a hang or a silent loss.
    assert not _alive(victim, wait=10), "the replica was not killed"
    assert any(after and code == 200 for after, code in answers), "the other replica kept answering"
    assert sum(code == 200 for _, code in answers) >= len(failed), answers
    # The replica is replaced: the server answers again on both.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.post(f"{server.url}/v1/models/{NAME}:predict", json=body, timeout=60).status_code == 200:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the server never answered again after the replica was killed")


def _alive(pid: int, wait: float) -> bool:
    """Whether ``pid`` still exists after up to ``wait`` seconds (its parent reaps it)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.1)


def test_ray_sigterm_lets_requests_in_flight_finish(server, images):
    """Last: stops the server. The replicas drain, then the local Ray this server started is gone."""
    if server.engine != "ray":
        pytest.skip("Ray Serve only")
    body = {"instances": [{"b64": base64.b64encode(image).decode()} for image in (images * 2)[:8]]}

    async def in_flight():
        async with httpx.AsyncClient(timeout=120) as http:
            async def term():
                await asyncio.sleep(0.3)
                server.terminate()

            *codes, _ = await asyncio.gather(*(http.post(f"{server.url}/v1/models/{NAME}:predict", json=body)
                                               for _ in range(6)), term())
            return [c.status_code for c in codes]

    assert asyncio.run(in_flight()) == [200] * 6
    assert server.wait(60) == 0
    deadline = time.monotonic() + 20
    while (left := session_members(server.process.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left behind: {left}"
