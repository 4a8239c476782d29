"""One place says what this CPU and torch build can do (pnasnet.inference.cpu), and every option
works or says why before any work, on every CPU class: known CPUs' flags give the classes the
back ends rely on, the overrides cap them, and the commands act on the class they see."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import pnasnet
from pnasnet.inference import PrecisionUnavailableError, check_backend_choice, for_inference, optimize
from pnasnet.inference import cpu as cpu_module
from pnasnet.inference.cpu import CpuSupport, cpu_support, detect_cpu_support, set_cpu_support
from tf_slim_fixtures import images_nchw

pytestmark = pytest.mark.cpu_dependent

FIXTURE = "tests/fixtures/tf_slim/mobile_tiny/model.ckpt"
BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi2 popcnt"
FLAGS = {  # /proc/cpuinfo flags of the CPU kinds this project has run on, and the classes around them
    "zen3": BASE + " avx2",
    "alder_lake": BASE + " avx2 avx_vnni",
    "skylake_x": BASE + " avx2 avx512f avx512bw avx512vl avx512dq avx512cd",
    "zen4": BASE + " avx2 avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16",
    "emerald_rapids": BASE + " avx2 avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16 avx_vnni "
                             "amx_bf16 amx_int8 amx_tile",
}


def fake_cpu(monkeypatch, flags: str, machine: str = "x86_64", env: dict | None = None) -> CpuSupport:
    monkeypatch.setattr(cpu_module, "cpu_flags", lambda: set(flags.split()))
    monkeypatch.setattr(cpu_module.platform, "machine", lambda: machine)
    return detect_cpu_support(env or {})


@pytest.fixture
def acting_as():
    """Install a CpuSupport for the test, and the real one back afterwards."""
    yield set_cpu_support
    set_cpu_support(None)


@pytest.mark.parametrize("kind, cls, bf16_runs, bf16_native, int8_32", [
    ("zen3", "avx2", False, False, False),
    ("alder_lake", "avx2_vnni", False, False, True),
    ("skylake_x", "avx512", True, False, False),
    ("zen4", "avx512_bf16", True, True, True),
    ("emerald_rapids", "amx", True, True, True),
])
def test_known_cpus_fall_into_their_classes(monkeypatch, kind, cls, bf16_runs, bf16_native, int8_32):
    support = fake_cpu(monkeypatch, FLAGS[kind])
    assert support.cpu_class == cls
    assert (support.bf16_runs, support.bf16_native, support.int8_accumulates_in_32_bits) == (
        bf16_runs, bf16_native, int8_32)
    assert support.describe().startswith("x86_64 AVX")


def test_arm_and_overrides(monkeypatch):
    arm = fake_cpu(monkeypatch, "fp asimd asimddp bf16 sve", machine="aarch64")
    assert (arm.cpu_class, arm.bf16_runs, arm.bf16_native, arm.int8_accumulates_in_32_bits) == (
        "aarch64", True, True, True)
    assert not fake_cpu(monkeypatch, "fp asimd", machine="aarch64").bf16_runs  # Graviton 2: no BF16
    # Our cap and oneDNN's both take features away, and say so; neither adds any.
    amx = FLAGS["emerald_rapids"]
    capped = fake_cpu(monkeypatch, amx, env={"PNASNET_CPU_ISA": "avx2"})
    assert capped.cpu_class == "avx2" and not capped.bf16_runs and "PNASNET_CPU_ISA=avx2" in capped.describe()
    onednn = fake_cpu(monkeypatch, amx, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"})
    assert onednn.cpu_class == "avx512_vnni" and onednn.bf16_runs and not onednn.bf16_native
    assert fake_cpu(monkeypatch, FLAGS["zen3"], env={"PNASNET_CPU_ISA": "amx"}).cpu_class == "avx2"
    hidden = fake_cpu(monkeypatch, amx, env={"PNASNET_HIDE_FUSED_OPS": "1"})
    assert not hidden.fused_ops and "no fused oneDNN operators" in hidden.describe()
    assert fake_cpu(monkeypatch, amx, env={"ATEN_CPU_CAPABILITY": "avx2"}).aten_capped
    with pytest.raises(ValueError, match="PNASNET_CPU_ISA=avx3 names no CPU class"):
        fake_cpu(monkeypatch, amx, env={"PNASNET_CPU_ISA": "avx3"})
    with pytest.raises(ValueError, match="ONEDNN_MAX_CPU_ISA=AVX9"):
        fake_cpu(monkeypatch, amx, env={"ONEDNN_MAX_CPU_ISA": "AVX9"})


def test_this_process_sees_the_class_it_was_started_as():
    """The README's test command runs the CPU-dependent tests a second time as an AVX2-only CPU
    would: there the caps must really be in force (in this process and in torch)."""
    support = cpu_support()
    if os.environ.get("PNASNET_CPU_ISA") == "avx2":
        assert support.cpu_class in ("avx2", "baseline") and not support.bf16_runs
        assert not support.int8_accumulates_in_32_bits
    if os.environ.get("ATEN_CPU_CAPABILITY") == "avx2":
        assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert support.as_dict()["cpu_class"] == support.cpu_class


def test_bfloat16_refused_per_class_before_any_work(monkeypatch):
    zen3 = fake_cpu(monkeypatch, FLAGS["zen3"])
    skylake = fake_cpu(monkeypatch, FLAGS["skylake_x"])
    zen4 = fake_cpu(monkeypatch, FLAGS["zen4"])
    from pnasnet.inference import precision_unavailable

    for backend in ("eager", "compile", "auto"):
        message = precision_unavailable(backend, "bfloat16", zen3)
        assert "AVX-512" in message and "x86_64 AVX2 (no VNNI, BF16, AMX)" in message
        assert "--precision float32" in message and "--precision int8" in message
        assert precision_unavailable(backend, "bfloat16", skylake) is None  # emulated by oneDNN: runs, slower
    assert "AVX512-BF16 or AMX" in precision_unavailable("openvino", "bfloat16", skylake)
    assert precision_unavailable("openvino", "bfloat16", zen4) is None
    assert all(precision_unavailable(b, p, zen3) is None for b in ("eager", "openvino") for p in ("float32", "int8"))


def test_options_are_checked_against_the_cpu_class_in_use(acting_as):
    # an x86 AVX2 class whatever the host (on an Arm host the host's arch would decide bf16 otherwise)
    zen3 = replace(cpu_support(), arch="x86_64", fused_ops=True, avx512=False, avx512_vnni=False, avx_vnni=False,
                   avx512_bf16=False, avx_ne_convert=False, amx=False)
    acting_as(zen3)
    with pytest.raises(PrecisionUnavailableError, match="bfloat16 needs a CPU with AVX-512"):
        check_backend_choice("auto", "bfloat16")
    check_backend_choice("auto", "bfloat16", device="cuda")  # a GPU's bfloat16 is not the CPU's business
    check_backend_choice("eager", "float32")
    from pnasnet.inference.int8 import overflow_fix

    assert overflow_fix() == "enable"  # 7-bit weights where 16-bit sums could saturate
    acting_as(replace(zen3, avx512_vnni=True))
    assert overflow_fix() == "first_layer_only"


def test_auto_falls_back_to_the_plain_model_without_fused_operators(acting_as):
    model = pnasnet.create_model("auto", weights=FIXTURE)
    x = images_nchw("mobile_tiny", 48)
    with torch.inference_mode():
        want = model.classify(x)
    acting_as(replace(cpu_support(), fused_ops=False))
    runnable = for_inference(model, "auto")
    assert runnable is model  # the plain model itself: exact by construction
    with torch.inference_mode():
        assert torch.equal(runnable.classify(x), want)
    # The eager inference form without them (explicitly asked for) runs plain torch operators and
    # stays within the float32 tolerance (1e-4 of the logits' scale; measured ~1e-6).
    eager = optimize(model, "eager")
    assert eager.runner.fused is False
    got = eager.classify(x)
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())


def _cli(args, env_extra):
    env = {**os.environ, "PNASNET_HOME": env_extra.pop("home"), **env_extra}
    return subprocess.run([sys.executable, "-m", "pnasnet", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_bfloat16_on_an_avx2_cpu_says_why_and_does_nothing(tmp_path):
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray((images_nchw("mobile_tiny", 48)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(photo)
    out = tmp_path / "f.parquet"
    result = _cli(["features", str(photo), "--model", "auto", "--weights", FIXTURE, "--image-size", "48",
                   "--precision", "bfloat16", "--out", str(out), "-q"],
                  {"home": str(tmp_path / "cache"), "PNASNET_CPU_ISA": "avx2"})
    assert result.returncode == 2, result.stderr
    assert "bfloat16 needs a CPU with AVX-512" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and not Path(f"{out}.partial").exists()
    # The same command without the cap, where this CPU has bfloat16, runs.
    if cpu_support().bf16_runs and not os.environ.get("PNASNET_CPU_ISA"):
        ok = _cli(["features", str(photo), "--model", "auto", "--weights", FIXTURE, "--image-size", "48",
                   "--precision", "bfloat16", "--out", str(out), "-q"], {"home": str(tmp_path / "cache")})
        assert ok.returncode == 0, ok.stderr
        assert out.exists()


def test_training_in_bfloat16_is_refused_before_any_work_where_it_cannot_run(acting_as, tmp_path):
    from pnasnet.training import train

    acting_as(replace(cpu_support(), arch="x86_64", avx512=False, avx512_bf16=False, avx_ne_convert=False, amx=False))
    with pytest.raises(ValueError, match="--bf16 needs a CPU with bfloat16 convolutions.*x86_64 AVX2"):
        train(tmp_path / "no images here", tmp_path / "out", model="pnasnet5_mobile", mode="full", bfloat16=True,
              device="cpu")
    assert not (tmp_path / "out").exists()
