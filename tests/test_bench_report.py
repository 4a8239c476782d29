"""The benchmark's '% of ceiling' compares each path with the machine's real limit for its precision."""

import importlib.util
from dataclasses import replace

import pytest

from pnasnet.bench.ceilings import measure_ceilings, openvino_int8_conv1x1
from pnasnet.bench.report import summarize
from pnasnet.inference.cpu import cpu_support, set_cpu_support


def _results(ceilings: dict) -> dict:
    times = [0.5, 0.4, 0.6]  # median 0.5 s per image
    return {"gflop_per_image": 50.0, "ceilings": {2: ceilings},
            "contenders": {name: {"name": name, "threads": 2, "batches": {"1": {"times": list(times)}}}
                           for name in ("pnasnet-eager", "pnasnet-openvino-int8")}}


def test_fraction_uses_the_faster_of_matrix_product_and_1x1_convolution():
    results = _results({"matmul_float32": 50.0, "conv1x1_float32": 200.0})  # a Zen 5: 1x1 conv 2x matmul
    summarize(results)
    eager = results["contenders"]["pnasnet-eager"]["batches"]["1"]
    assert eager["gflop_per_s"] == 100.0 and eager["fraction_of_ceiling"] == 0.5  # not 2.0 of the matmul
    assert results["contenders"]["pnasnet-openvino-int8"]["batches"]["1"]["fraction_of_ceiling"] is None


@pytest.fixture
def no_vnni():
    set_cpu_support(replace(cpu_support(), avx512_vnni=False, avx_vnni=False, amx=False, arm_dotprod=False))
    yield
    set_cpu_support(None)


def test_no_int8_ceiling_where_int8_sums_are_16_bit(no_vnni):
    ceilings = measure_ceilings(1, seconds=0.01)
    assert "matmul_int8" not in ceilings
    assert ceilings["matmul_float32"] > 0 and ceilings["conv1x1_float32"] > 0


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
@pytest.mark.cpu_dependent
def test_int8_convolution_ceiling_on_every_cpu_class_names_its_kernel():
    """OpenVINO's int8 1x1 convolution is measured on every CPU class, with the kernel it ran: the
    VNNI/AMX one where int8 sums are 32-bit, an AVX2 one without (the README's second test run caps
    oneDNN at AVX2, and OpenVINO's oneDNN obeys it)."""
    import os
    import time

    def once(fn, ops):
        start = time.perf_counter()
        fn()
        return ops / (time.perf_counter() - start) / 1e9

    ceilings = openvino_int8_conv1x1(1, once)
    assert ceilings["conv1x1_int8"] > 0
    kernel = ceilings["conv1x1_int8_kernel"]
    assert "I8" in kernel.upper(), kernel  # an int8 kernel ran, not a float32 fallback
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2":
        assert "avx2" in kernel and "avx512" not in kernel, kernel
    elif cpu_support().avx512:
        assert "avx512" in kernel or "amx" in kernel, kernel
    results = _results(dict(ceilings, conv1x1_float32=1.0))
    summarize(results)  # the int8 path's fraction is against the int8 convolution ceiling
    assert results["contenders"]["pnasnet-openvino-int8"]["batches"]["1"]["fraction_of_ceiling"] == \
        round(100.0 / ceilings["conv1x1_int8"], 3)


def test_agreement_compares_each_path_and_skips_what_cannot_run(monkeypatch):
    """`pnasnet bench --agreement`: a float32 path agrees with the plain model (within the stated
    1e-4); a path this install cannot run is reported as skipped with the reason, not a crash."""
    pytest.importorskip("skimage")
    from pnasnet.bench.agreement import agreement_markdown, run_agreement
    from pnasnet.inference import int8

    monkeypatch.setattr(int8, "int8_unavailable", lambda: "int8 needs nncf (test: pretend it is missing)")
    fixture = "tests/fixtures/tf_slim/mobile_tiny/model.ckpt"
    result = run_agreement([("tiny", "auto", fixture, 48)],
                           [("eager", "float32"), ("openvino", "int8"), ("onnxruntime", "bfloat16")], say=lambda _: None)
    paths = result["cases"]["tiny"]["paths"]
    assert paths["eager/float32"]["logits"]["max_rel_err"] <= 1e-4
    assert paths["eager/float32"]["features"]["centered_cosine_min"] > 0.9999
    assert "pretend it is missing" in paths["openvino/int8"]["skipped"]
    assert "supports precision float32 only" in paths["onnxruntime/bfloat16"]["skipped"]
    assert "skipped: int8 needs nncf" in agreement_markdown(result)
