"""The benchmark's '% of ceiling' compares each path with the machine's real limit for its precision."""

from dataclasses import replace

import pytest

from pnasnet.bench.ceilings import measure_ceilings
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
