"""The engine-neutral serving core, in process: a batch of mixed requests gives each request its
own results, equal to the library's; bad images, expired requests and unsupported tasks fail
alone; multi-image requests are split into model calls of bounded size."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import pnasnet
from pnasnet.serve import CLASSIFY, FEATURES, INFO, LOGITS, LOGITS_AND_FEATURES, ImageInput, PredictRequest, Predictor
from pnasnet.tasks import classify_paths, iter_features

from inference_images import write_small_crops
from inference_outputs import assert_same_vectors
SIZE = 48
TINY_CHECKPOINT = Path(__file__).parent / "fixtures" / "tf_slim" / "mobile_tiny" / "model.ckpt"
pytestmark = pytest.mark.usefixtures("one_model_thread")


@pytest.fixture(scope="module")
def model():
    return pnasnet.create_model("auto", weights=TINY_CHECKPOINT)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return [str(p) for p in write_small_crops(tmp_path_factory.mktemp("crops"), 6, side=64)]


@pytest.fixture(scope="module")
def library(model, paths):
    options = dict(image_size=SIZE, workers=0)
    top = {c.path: c.top_k for c in classify_paths(model, paths, top_k=11, **options)}
    return top, {f.path: f.vector for f in iter_features(model, paths, **options)}


def image(path, name=None) -> ImageInput:
    with open(path, "rb") as fh:
        return ImageInput(fh.read(), name)


class Counting:
    """``inner`` with the batch size of each call to its method ``name`` appended to ``calls``."""

    def __init__(self, inner, name: str, calls: list):
        self.inner, self.name, self.calls = inner, name, calls

    def __getattr__(self, attr):
        method = getattr(self.inner, attr)
        if attr != self.name:
            return method

        def counted(x):
            self.calls.append(len(x))
            return method(x)

        return counted


def assert_same_top_k(actual, expected):
    assert [i for i, _, _ in actual] == [i for i, _, _ in expected]
    np.testing.assert_allclose([p for _, _, p in actual], [p for _, _, p in expected], atol=1e-5)


def test_each_request_of_a_mixed_batch_gets_its_own_results(model, paths, library):
    top, vectors = library
    truncated = ImageInput(image(paths[3]).data[:300], "cut.jpg")
    requests = [
        PredictRequest(CLASSIFY, (image(paths[0]),), top_k=3),
        PredictRequest(FEATURES, (image(paths[1], "b.jpg"), image(paths[2], "c.jpg"))),
        PredictRequest(CLASSIFY, (image(paths[4]), truncated)),
        PredictRequest(INFO),
        PredictRequest(FEATURES, ()),
        PredictRequest(CLASSIFY, (image(paths[5]),), top_k=11),
    ]
    results = Predictor(model, image_size=SIZE).predict(requests)
    assert [r.task for r in results] == [r.task for r in requests]
    assert_same_top_k(results[0].outputs[0], top[paths[0]][:3])
    assert results[1].names == ["b.jpg", "c.jpg"]
    for vector, path in zip(results[1].outputs, paths[1:3]):
        assert vector.dtype == np.float32
        assert_same_vectors(vector, vectors[path])
    assert results[2].error_kind == "bad_image" and results[2].outputs == []
    assert results[2].error.startswith("cut.jpg: cannot decode image") and "truncated" in results[2].error
    assert results[3].info["num_classes"] == 11 and results[3].info["image_size"] == SIZE
    assert results[4].error == "no image in the request"
    assert_same_top_k(results[5].outputs[0], top[paths[5]])
    # The batch is described on every result, counted once (by the first).
    assert [r.batch.first for r in results] == [True] + [False] * 5
    assert {(r.batch.requests, r.batch.images) for r in results} == {(6, 4)}


def test_multi_image_requests_are_split_into_bounded_model_calls(model, paths, library):
    calls = []  # the predictor computes logits and features of a classifier in one pass
    predictor = Predictor(Counting(model, "features_and_logits", calls), image_size=SIZE, max_images_per_call=2)
    [result] = predictor.predict([PredictRequest(FEATURES, tuple(image(p) for p in paths[:5]))])
    assert calls == [2, 2, 1]
    for vector, path in zip(result.outputs, paths):
        assert_same_vectors(vector, library[1][path])


def test_expired_requests_are_not_computed(model, paths):
    past = time.monotonic() - 1
    results = Predictor(model, image_size=SIZE).predict([
        PredictRequest(CLASSIFY, (image(paths[0]),), deadline=past),
        PredictRequest(CLASSIFY, (image(paths[1]),), deadline=time.monotonic() + 60),
    ])
    assert results[0].error_kind == "expired" and results[1].error is None
    assert results[0].batch.images == 1


def test_feature_vector_model_refuses_classify_only(paths):
    model = pnasnet.create_model("pnasnet5_mobile_feature_vector")
    predictor = Predictor(model, image_size=32)
    refused, features = predictor.predict([PredictRequest(CLASSIFY, (image(paths[0]),)),
                                           PredictRequest(FEATURES, (image(paths[0]),))])
    assert refused.error_kind == "not_supported" and "/v1/features" in refused.error
    assert features.error is None and features.outputs[0].shape == (1080,)
    assert predictor.info()["labels"] is None


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "eager"])
def test_logits_and_features_come_from_one_pass(model, paths, library, fast):
    """The Open Inference Protocol's logits + features request: the same values as the two tasks
    asked apart, each image through the network once (not once per output), and a batch mixing
    it with classify and features requests in one model call."""
    from pnasnet.inference import optimize

    runnable = optimize(model) if fast else model
    passes = []
    predictor = Predictor(Counting(runnable, "features_and_logits", passes), image_size=SIZE)
    both, classified, featured = predictor.predict([
        PredictRequest(LOGITS_AND_FEATURES, tuple(image(p) for p in paths[:3]), top_k=4),
        PredictRequest(CLASSIFY, (image(paths[3]),), top_k=2),
        PredictRequest(FEATURES, (image(paths[4]),))])
    [logits] = Predictor(runnable, image_size=SIZE).predict([PredictRequest(LOGITS, tuple(image(p) for p in paths[:3]))])
    assert passes == [5] and both.batch.images == 5  # the whole mixed batch in one model call
    assert_same_top_k(classified.outputs[0], library[0][paths[3]][:2])
    assert_same_vectors(featured.outputs[0], library[1][paths[4]])
    for got, want in zip(both.outputs, logits.outputs):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
    for vector, path in zip(both.features, paths[:3]):
        assert_same_vectors(vector, library[1][path])
    for got, path in zip(both.top_k, paths[:3]):
        assert_same_top_k(got, library[0][path][:4])
    fv = Predictor(pnasnet.create_model("pnasnet5_mobile_feature_vector"), image_size=32)
    [refused] = fv.predict([PredictRequest(LOGITS_AND_FEATURES, (image(paths[0]),))])
    assert refused.error_kind == "not_supported"
