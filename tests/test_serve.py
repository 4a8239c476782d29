"""`pnasnet serve` end to end: a real server on 127.0.0.1 (the reduced TF-Slim checkpoint at
48 px, so model calls are cheap) and a real HTTP client. Results must equal the library's for the
same images; concurrent clients each get their own answer; bad inputs get clear 4xx answers and
the server keeps serving; the API key guards /v1/ only; the OpenAPI document describes the body."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

pytest.importorskip("litserve")
httpx = pytest.importorskip("httpx")

import pnasnet  # noqa: E402
from pnasnet.tasks import classify_paths, iter_features  # noqa: E402

from inference_images import huge_png_header, write_small_crops  # noqa: E402
from inference_outputs import assert_same_vectors  # noqa: E402
from serve_server import TINY_CHECKPOINT, ServerProcess, metric_value  # noqa: E402

SIZE = 48
KEY = "test-key-123"
pytestmark = pytest.mark.usefixtures("one_model_thread")
AUTH = {"Authorization": f"Bearer {KEY}"}
JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    args = ["--model", "auto", "--weights", TINY_CHECKPOINT, "--image-size", SIZE, "--max-batch-size", 8,
            "--max-wait-ms", 50, "--threads", 1, "--max-body-bytes", 1_000_000, "--max-pixels", 10_000_000,
            "--max-files", 4, "--timeout", 30, "--log-level", "warning"]
    with ServerProcess(args, log, env={"PNASNET_API_KEY": KEY}) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_small_crops(tmp_path_factory.mktemp("crops"), 16, side=64)


@pytest.fixture(scope="module")
def expected(images):
    """The library's answers for ``images`` from the plain model (the server runs the inference
    form): top-5 lists and feature vectors by path."""
    model = pnasnet.create_model("auto", weights=TINY_CHECKPOINT)
    options = dict(image_size=SIZE, workers=0, batch_size=4, backend="plain")
    top = {c.path: c.top_k for c in classify_paths(model, [str(p) for p in images], top_k=5, **options)}
    vectors = {f.path: f.vector for f in iter_features(model, [str(p) for p in images], **options)}
    return top, vectors


def assert_same_top_k(answer: list[dict], expected: list[tuple[int, str, float]]):
    assert [e["index"] for e in answer] == [i for i, _, _ in expected]
    assert [e["label"] for e in answer] == [label for _, label, _ in expected]
    np.testing.assert_allclose([e["probability"] for e in answer], [p for _, _, p in expected], atol=1e-5)


def test_health_readiness_and_model_description(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    info = httpx.get(server.url + "/v1/model", headers=AUTH).json()
    assert (info["image_size"], info["num_classes"], info["num_features"]) == (SIZE, 11, 200)
    assert info["transform"] == "tf-slim"
    assert (info["backend"], info["precision"]) == ("eager", "float32")  # the exact fast path by default


def test_classify_and_features_equal_the_library(client, images, expected):
    top, vectors = expected
    raw = client.post("/v1/classify", content=images[0].read_bytes(), headers=JPEG, params={"top_k": 3})
    assert raw.status_code == 200, raw.text[:300]
    [result] = raw.json()["results"]
    assert result["name"] is None
    assert_same_top_k(result["top_k"], top[str(images[0])][:3])

    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in images[1:4]]
    multi = client.post("/v1/classify", files=files, data={"top_k": "5"})
    assert multi.status_code == 200, multi.text[:300]
    results = multi.json()["results"]
    assert [r["name"] for r in results] == [p.name for p in images[1:4]]
    for path, r in zip(images[1:4], results):
        assert_same_top_k(r["top_k"], top[str(path)])

    feats = client.post("/v1/features", files=files)
    assert feats.status_code == 200, feats.text[:300]
    assert feats.json()["num_features"] == 200
    for path, r in zip(images[1:4], feats.json()["results"]):
        assert_same_vectors(np.asarray(r["features"], np.float32), vectors[str(path)])


def _batch_metrics(client) -> tuple[float, float]:
    text = client.get("/metrics").text
    return metric_value(text, "pnasnet_batch_size_sum"), metric_value(text, "pnasnet_batch_size_count")


def test_concurrent_clients_each_get_their_own_answer(server, client, images, expected):
    top, vectors = expected
    sum_before, count_before = _batch_metrics(client)

    async def one(http, i, path):
        task = "classify" if i % 2 == 0 else "features"
        response = await http.post(f"/v1/{task}", content=path.read_bytes(), headers=JPEG)
        return task, path, response

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as http:
            jobs = [one(http, i, images[i % len(images)]) for i in range(32)]
            return await asyncio.gather(*jobs)

    for task, path, response in asyncio.run(burst()):
        assert response.status_code == 200, response.text[:300]
        [result] = response.json()["results"]
        if task == "classify":
            assert_same_top_k(result["top_k"], top[str(path)])
        else:
            assert_same_vectors(np.asarray(result["features"], np.float32), vectors[str(path)])

    total, batches = (a - b for a, b in zip(_batch_metrics(client), (sum_before, count_before)))
    assert total == 32, "every request is counted in exactly one batch"
    assert batches < 32, f"32 concurrent requests ran in {batches} batches: no batching"


def _truncated_jpeg(path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


def test_bad_inputs_get_clear_4xx_and_the_server_keeps_serving(client, images, expected):
    png = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(png, "PNG")
    cases = [
        ("empty body", dict(content=b"", headers=JPEG), 400, "empty request body"),
        ("not an image", dict(content=b"hello, not a picture", headers=JPEG), 422, "not an image"),
        ("truncated", dict(content=_truncated_jpeg(images[0]), headers=JPEG), 422, "truncated"),
        ("bomb", dict(content=huge_png_header(), headers={"Content-Type": "image/png"}), 422, "decompression bomb"),
        ("over --max-pixels", dict(content=huge_png_header(5000, 5000), headers={"Content-Type": "image/png"}), 422,
         "exceeds max_pixels=10000000"),
        ("huge body", dict(content=b"\xff" * 1_000_001, headers=JPEG), 413, "--max-body-bytes"),
        ("huge chunked body", dict(content=iter([b"\xff" * 400_000] * 3), headers=JPEG), 413, "--max-body-bytes"),
        ("json", dict(json={"url": "http://example.com/cat.jpg"}), 415, "application/json"),
        ("form-urlencoded", dict(data={"image": "x"}), 415, "Content-Type: image/jpeg"),
        ("no content type", dict(content=png.getvalue()), 415, "no Content-Type"),
        ("multipart without a file", dict(content=b'--b\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3'
                                               b"\r\n--b--\r\n",
                                       headers={"Content-Type": "multipart/form-data; boundary=b"}), 400, "no file part"),
        ("too many files", dict(files=[("f", (f"{i}.png", png.getvalue(), "image/png")) for i in range(5)]), 400,
         "--max-files"),
        ("top_k zero", dict(content=png.getvalue(), headers={"Content-Type": "image/png"}, params={"top_k": 0}), 422,
         "top_k"),
    ]
    for name, request, status, words in cases:
        response = client.post("/v1/classify", **request)
        assert response.status_code == status, f"{name}: {response.status_code} {response.text[:300]}"
        assert words in response.json()["detail"], f"{name}: {response.json()['detail']}"
    good = client.post("/v1/classify", content=images[5].read_bytes(), headers=JPEG)
    assert good.status_code == 200
    assert_same_top_k(good.json()["results"][0]["top_k"], expected[0][str(images[5])])
    errors = client.get("/metrics").text
    assert metric_value(errors, "pnasnet_errors_total", 'reason="bad_image"') >= 3
    assert metric_value(errors, "pnasnet_errors_total", 'reason="too_large"') >= 2


def test_a_bad_image_does_not_disturb_the_rest_of_its_batch(server, images, expected):
    bad = _truncated_jpeg(images[1])

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as http:
            bodies = [bad if i % 4 == 1 else images[i].read_bytes() for i in range(8)]
            return await asyncio.gather(*(http.post("/v1/classify", content=b, headers=JPEG) for b in bodies))

    for i, response in enumerate(asyncio.run(burst())):
        if i % 4 == 1:
            assert response.status_code == 422 and "truncated" in response.json()["detail"]
        else:
            assert response.status_code == 200, response.text[:300]
            assert_same_top_k(response.json()["results"][0]["top_k"], expected[0][str(images[i])])


def test_multipart_with_one_bad_file_names_it(client, images):
    files = [("file", ("good.jpg", images[0].read_bytes(), "image/jpeg")),
             ("file", ("broken.jpg", _truncated_jpeg(images[2]), "image/jpeg"))]
    response = client.post("/v1/features", files=files)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("broken.jpg: cannot decode image")


def test_api_key_guards_v1_only(server, images):
    body = images[0].read_bytes()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
        response = httpx.post(server.url + "/v1/classify", content=body, headers={**JPEG, **headers})
        assert response.status_code == 401 and "API key" in response.json()["detail"]
    assert httpx.post(server.url + "/v1/classify", content=body, headers={**JPEG, "X-API-Key": KEY}).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/v2", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(server.url + path).status_code == 200, path
    # The other protocols ask for the key too, and refuse in their own error shape.
    for method, path in (("POST", "/v2/models/pnasnet/infer"), ("GET", "/v2/models/pnasnet"),
                         ("POST", "/v1/models/pnasnet:predict"), ("GET", "/v1/models/pnasnet")):
        response = httpx.request(method, server.url + path, json={})
        assert response.status_code == 401 and "API key" in response.json()["error"], path
    assert httpx.get(server.url + "/v1/models/pnasnet", headers=AUTH).status_code == 200


def test_openapi_document_describes_the_endpoints(server):
    doc = httpx.get(server.url + "/openapi.json").json()
    classify = doc["paths"]["/v1/classify"]["post"]
    assert set(classify["requestBody"]["content"]) == {"image/*", "application/octet-stream", "multipart/form-data"}
    assert {"200", "413", "415", "422", "503", "504"} <= set(classify["responses"])
    assert any(p["name"] == "top_k" for p in classify["parameters"])
    assert "/v1/features" in doc["paths"] and "/v1/model" in doc["paths"]


def test_metrics_are_prometheus_text(client):
    text = client.get("/metrics").text
    for name in ("pnasnet_requests_total", "pnasnet_request_duration_seconds_bucket", "pnasnet_batch_size_bucket",
                 "pnasnet_errors_total", "pnasnet_requests_in_flight", "pnasnet_model_seconds_bucket"):
        assert name in text, name
    assert metric_value(text, "pnasnet_requests_total", 'endpoint="/v1/classify",status="200"') >= 1
