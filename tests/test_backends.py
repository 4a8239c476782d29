"""Every inference back end agrees with the plain model on TF-Slim's fixture weights within its
stated tolerance; the ONNX export loads and runs in ONNX Runtime with any batch size. A back end
whose package is absent is skipped, naming the package."""

import importlib.util

import pytest
import torch

import pnasnet
from pnasnet.inference import (BACKENDS, PrecisionUnavailableError, available_backends, backend_unavailable,
                               cpu_support, optimize)
from pnasnet.inference import backends as backends_module
from tf_slim_fixtures import images_nchw

FIXTURE = "tests/fixtures/tf_slim/mobile_tiny/model.ckpt"
SIZE = 48
EXACT = 1e-4          # float32 paths: max relative error of logits and features
BF16_COSINE = 0.99    # bfloat16: cosine of the image-dependent part of features / logits (4 images)


# Whose result depends on the CPU class: run again as an AVX2-only machine would (README's test command).
pytestmark = pytest.mark.cpu_dependent


def needs(*packages):
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed")


PACKAGES = {"eager": (), "compile": (), "onnxruntime": ("onnxruntime", "onnx", "onnxscript"),
            "openvino": ("openvino", "onnx", "onnxscript")}


@pytest.fixture(scope="module")
def model():
    return pnasnet.create_model("auto", weights=FIXTURE)


@pytest.fixture(scope="module")
def images():
    return images_nchw("mobile_tiny", SIZE)


@pytest.fixture(scope="module")
def reference(model, images):
    with torch.inference_mode():
        return model.classify(images), model.features(images)


def rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def centered_cosine(a, b):
    """Cosine similarity per image of the image-dependent part (minus the batch mean)."""
    a, b = a.double() - a.double().mean(0), b.double() - b.double().mean(0)
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


_built = {}


def build(model, backend, precision):
    key = (backend, precision)
    if key not in _built:
        _built[key] = optimize(model, backend, precision, image_size=SIZE)
    return _built[key]


@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs(*PACKAGES[b])) for b in BACKENDS])
def test_float32_backends_agree(model, images, reference, backend):
    fast = build(model, backend, "float32")
    logits, feats = fast.classify(images), fast.features(images)
    assert logits.dtype == feats.dtype == torch.float32
    assert rel(logits, reference[0]) <= EXACT
    assert rel(feats, reference[1]) <= EXACT
    assert rel(fast.classify(images[:1]), reference[0][:1]) <= EXACT  # another batch size
    assert fast.backend == backend and fast.precision == "float32"


@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs(*PACKAGES[b]))
                                     for b in ("eager", "openvino", "compile")])
def test_bfloat16_backends_agree_or_refuse_by_cpu_class(model, images, reference, backend):
    """The README's bfloat16 contract: PyTorch back ends run it where oneDNN has bf16 convolutions
    (AVX-512, AVX-NE-CONVERT, AMX, Arm BF16), OpenVINO where bf16 is native (AVX512-BF16, AMX);
    elsewhere the option is refused before any work, naming the CPU feature and the alternatives."""
    support = cpu_support()
    runs = support.bf16_native if backend == "openvino" else support.bf16_runs
    if not runs:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(PrecisionUnavailableError) as refused:
            optimize(model, backend, "bfloat16", image_size=SIZE)
        message = str(refused.value)
        assert ("AVX512-BF16" if backend == "openvino" else "AVX-512") in message
        assert "this CPU: " + support.describe() in message and "float32" in message and "int8" in message
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing was done
        return
    fast = build(model, backend, "bfloat16")
    logits, feats = fast.classify(images), fast.features(images)
    assert logits.dtype == torch.float32
    assert centered_cosine(feats, reference[1]).min() >= BF16_COSINE
    assert centered_cosine(logits, reference[0]).min() >= BF16_COSINE
    # The same class wins wherever float32 does not call it a near tie.
    top2 = reference[0].topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.5
    assert torch.equal(logits.argmax(1)[clear], reference[0].argmax(1)[clear])


# int8, mobile_tiny fixture weights, 224 px photographs, centred cosine to float32: measured min
# 0.95 (VNNI, NNCF's default overflow fix) and 0.96 (AVX2 emulated with ONEDNN_MAX_CPU_ISA=AVX2,
# overflow fix on every layer); without the fix an AVX2 CPU gave 0.64 (16-bit saturation), and a
# broken graph gives ~0.
INT8_COSINE = 0.9


@needs("openvino", "onnx", "onnxscript", "nncf")
def test_int8_openvino_is_quantized_and_agrees_roughly(model):
    from pnasnet.bench.photos import photographs

    photos, _ = photographs(224)
    # calibrated on half of scikit-image's photographs (and their mirror images), compared on the rest
    calibration, test = photos[:6], photos[6:]
    calibration = torch.cat([calibration, calibration.flip(-1), calibration.flip(-2)])
    fast = optimize(model, "openvino", "int8", image_size=224, calibration=calibration)
    assert (fast.backend, fast.precision) == ("openvino", "int8")
    # weights limited to 7 bits exactly where int8 sums could saturate (no VNNI / AMX / Arm dot product)
    assert fast.int8_overflow_fix == ("first_layer_only" if cpu_support().int8_accumulates_in_32_bits else "enable")
    runtime = fast.compiled.get_runtime_model()
    int8_ops = [op.get_friendly_name() for op in runtime.get_ops()
                if op.get_rt_info()["runtimePrecision"].astype(str).lower() in ("i8", "u8")]
    assert len(int8_ops) >= 20, "the convolutions should run in int8"
    with torch.inference_mode():
        want_logits, want_feats = model.classify(test), model.features(test)
    logits, feats = fast.classify(test), fast.features(test)
    assert logits.dtype == torch.float32 and rel(logits, want_logits) > 1e-4  # not the float32 function
    assert centered_cosine(feats, want_feats).min() >= INT8_COSINE
    assert centered_cosine(logits, want_logits).min() >= INT8_COSINE
    with pytest.raises(ValueError, match="needs calibration images"):
        optimize(model, "openvino", "int8", image_size=SIZE)
    with pytest.raises(ValueError, match="built for 48x48"):
        optimize(model, "openvino", "int8", image_size=SIZE, calibration=torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="supports precision float32, bfloat16 only"):
        optimize(model, "eager", "int8")


@needs("onnxruntime", "onnx", "onnxscript")
def test_onnx_export_runs_in_onnxruntime(model, images, reference, tmp_path):
    import onnx
    import onnxruntime as ort

    from pnasnet.inference import export_onnx
    from pnasnet.inference.onnx_export import onnx_model_info

    path = export_onnx(model, tmp_path / "tiny.onnx", image_size=SIZE)
    onnx.checker.check_model(str(path))
    info = onnx_model_info(path)
    assert info["inputs"] == {"images": ["batch", 3, SIZE, SIZE]}
    assert info["outputs"] == {"features": ["batch", 200], "logits": ["batch", 11]}
    assert "BatchNormalization" not in info["ops"]  # folded before export
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 4):
        feats, logits = session.run(["features", "logits"], {"images": images[:n].numpy()})
        assert rel(torch.from_numpy(logits), reference[0][:n]) <= EXACT
        assert rel(torch.from_numpy(feats), reference[1][:n]) <= EXACT
    # The reused file gives the same back end.
    fast = optimize(model, "onnxruntime", image_size=SIZE, onnx_path=path)
    assert rel(fast.classify(images), reference[0]) <= EXACT


@needs("onnxruntime", "onnx", "onnxscript")
def test_graph_backends_check_their_inputs(model, images):
    fast = build(model, "onnxruntime", "float32")
    with pytest.raises(ValueError, match="built for 48x48"):
        fast.classify(torch.rand(1, 3, 51, 51))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fast.classify(images * 255)
    with pytest.raises(ValueError, match="channels last"):
        fast.classify(images.permute(0, 2, 3, 1))
    with pytest.raises(TypeError, match="float"):
        fast.classify((images * 255).to(torch.uint8))
    with pytest.raises(RuntimeError, match="cannot train"):
        fast.train()


@needs("onnxruntime", "onnx", "onnxscript")
def test_feature_vector_model_on_a_graph_backend():
    fv = pnasnet.create_model("auto", weights=FIXTURE, num_classes=0)
    fast = optimize(fv, "onnxruntime", image_size=SIZE)
    x = images_nchw("mobile_tiny", SIZE)
    with torch.inference_mode():
        assert rel(fast.features(x), fv.features(x)) <= EXACT
        assert fast(x).shape == (4, 200)
    with pytest.raises(RuntimeError, match="feature-vector"):
        fast.classify(x)


def test_option_errors(model):
    with pytest.raises(ValueError, match="unknown backend"):
        optimize(model, "tensorrt")
    with pytest.raises(ValueError, match="unknown precision"):
        optimize(model, precision="float16")
    with pytest.raises(ValueError, match="supports precision float32 only"):
        optimize(model, "onnxruntime", "bfloat16")
    with pytest.raises(TypeError):
        optimize(torch.nn.Linear(2, 2))
    trained = pnasnet.create_model("auto", weights=FIXTURE).train()
    with pytest.raises(RuntimeError, match="eval"):
        optimize(trained)


def test_missing_package_is_named(model, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real(name, *a))
    reason = backend_unavailable("openvino")
    assert "openvino" in reason and 'pip install "pnasnet[openvino]"' in reason
    assert available_backends()["openvino"] == reason
    assert available_backends()["eager"] is None
    with pytest.raises(ImportError, match="pnasnet\\[openvino\\]"):
        optimize(model, "openvino")


def test_backends_import_lazily():
    import subprocess
    import sys

    code = ("import sys, pnasnet.inference; "
            "print(any(m in sys.modules for m in ('onnxruntime', 'openvino', 'onnx', 'onnxscript', 'nncf')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert backends_module.PRECISIONS == ("float32", "bfloat16", "int8")
