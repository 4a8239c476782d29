"""`pnasnet export`'s library: every format round-trips on real photographs (scikit-image's) in its
own runtime with the max relative logit error printed; the dynamic-size ONNX graph computes TF's
SAME padding from the input's shape; a model directory trained here exports to every available
format and classifies the same; the ``.pt2`` loads where pnasnet cannot be imported; a missing
format package is a message naming the extra. Formats whose packages are absent are skipped."""

import importlib.util
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import pnasnet
from pnasnet.inference import export as export_module
from pnasnet.inference.export import (FLOAT32_TOLERANCE, ExportVerificationError, default_suffix, export,
                                      export_unavailable)

from train_images import TEXTURES, make_texture_folder

FIXTURE = "tests/fixtures/tf_slim/mobile_tiny/model.ckpt"
SIZE = 48
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.usefixtures("one_model_thread")]


def needs(*packages):
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed")


def photographs(size):
    from pnasnet.bench.photos import photographs as load

    return load(size)[0]


@pytest.fixture(scope="module")
def model():
    return pnasnet.create_model("auto", weights=FIXTURE)


@pytest.fixture(scope="module")
def photos():
    return photographs(64)  # 12 photographs; each check resizes them to the export's size


def report_line(report):
    print(f"\n  {report.summary()}")
    return report


# ----------------------------------------------------------------------------------- ONNX
@needs("onnx", "onnxscript", "onnxruntime")
def test_onnx_dynamic_size_computes_tf_padding_in_the_graph(model, photos, tmp_path):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "dynamic.onnx"
    report = report_line(export(model, "onnx", out, image_size=SIZE, dynamic_size=True, verify_images=photos,
                                verified_on="photographs"))
    assert report.max_rel_err <= FLOAT32_TOLERANCE and report.verified_sizes == [SIZE, SIZE + 1]
    assert report.opset == 18 and report.image_size is None
    onnx.checker.check_model(str(out), full_check=True)
    proto = onnx.load(str(out))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 18
    # The SAME pad amounts of the stride-2 layers are computed from the input's shape, not constants
    # (the factorized reduction's fixed one-pixel pads stay constants).
    constants = {i.name for i in proto.graph.initializer} | {
        o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    pads = [n for n in proto.graph.node if n.op_type == "Pad"]
    computed = [n for n in pads if n.input[1] not in constants]
    assert len(computed) >= 10 and "Shape" in {n.op_type for n in proto.graph.node}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["pnasnet.input_range"] == "[0, 1]" and meta["pnasnet.image_size"].startswith("dynamic")
    assert meta["pnasnet.transform"] == "tf-slim" and meta["pnasnet.outputs"] == "features, logits"

    # any batch, odd and even, non-square sizes
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch, (h, w) in ((1, (35, 35)), (3, (57, 64)), (2, (96, 80))):
        x = torch.nn.functional.interpolate(photos[:batch], size=(h, w), mode="bilinear", antialias=True).clamp(0, 1)
        with torch.no_grad():
            want = model.classify(x)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[1])
        err = float((got - want).abs().max() / want.abs().max())
        print(f"  onnx dynamic, batch {batch}, {h}x{w}: max rel logit error {err:.2e}")
        assert err <= FLOAT32_TOLERANCE


# ----------------------------------------------------------------------------------- every format, a model dir
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from pnasnet.training import SilentReporter, train

    root = tmp_path_factory.mktemp("export_train")
    images = make_texture_folder(root / "images", grid=3)
    out = root / "model"
    train(images, out, model="auto", weights=FIXTURE, image_size=64, batch_size=16, epochs=3, workers=0,
          reporter=SilentReporter(), cache_dir=str(root / "cache"))
    return out


AVAILABLE = [f for f in ("onnx", "torch-export", "openvino", "tflite") if export_unavailable(f) is None]


@pytest.fixture(scope="module")
def directory_exports(model_dir, tmp_path_factory):
    """The trained directory exported to every available format at its own image size (64)."""
    model = pnasnet.create_model(str(model_dir))
    photos = photographs(64)
    folder = tmp_path_factory.mktemp("exports")
    reports = {f: report_line(export(model, f, folder / f"model{default_suffix(f)}", verify_images=photos,
                                     verified_on="photographs")) for f in AVAILABLE}
    return model, photos, reports


def test_model_directory_exports_to_every_format_and_classifies_the_same(directory_exports):
    model, photos, reports = directory_exports
    missing = [export_unavailable(f) for f in ("onnx", "torch-export", "openvino", "tflite") if export_unavailable(f)]
    print(f"\n  formats exported: {', '.join(reports)}; not available here: {'; '.join(missing) or 'none'}")
    assert "torch-export" in reports
    with torch.no_grad():
        logits = model.classify(photos)
    want = logits.argmax(1)
    # The class must be the same wherever the top two logits are apart by more than the float32
    # paths' rounding (~1e-6 relative): a near-tie may fall either way on another CPU's kernels.
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3 * float(logits.abs().max())
    assert int(clear.sum()) >= len(photos) // 2
    for fmt, report in reports.items():
        assert report.image_size == 64 and report.max_rel_err <= FLOAT32_TOLERANCE
        assert json.loads(report.metadata["pnasnet.labels"]) == list(TEXTURES) == model.labels
        assert report.metadata["pnasnet.image_size"] == "64" and report.metadata["pnasnet.input_range"] == "[0, 1]"
        run = {"onnx": export_module._run_onnx, "torch-export": export_module._run_torch_export,
               "openvino": export_module._run_openvino, "tflite": export_module._run_tflite}[fmt](report.path)
        got = torch.from_numpy(np.asarray(run(photos.contiguous())[1])).argmax(1)
        assert torch.equal(got[clear], want[clear]), fmt  # the same class for every clear photograph
    if "openvino" in reports:
        import openvino as ov

        graph = ov.Core().read_model(str(reports["openvino"].path))
        assert json.loads(graph.get_rt_info(["pnasnet", "labels"]).astype(str)) == list(TEXTURES)
        assert graph.get_rt_info(["pnasnet", "input_range"]).astype(str) == "[0, 1]"
    if "tflite" in reports:
        assert json.loads(export_module.tflite_metadata(reports["tflite"].path)["pnasnet.labels"]) == list(TEXTURES)
    if "onnx" in reports:
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(reports["onnx"].path)).metadata_props}
        assert json.loads(meta["pnasnet.labels"]) == list(TEXTURES)


def test_torch_export_loads_where_pnasnet_cannot_be_imported(directory_exports, tmp_path):
    """``python -I`` (no PYTHONPATH, no current directory) with pnasnet's source folder dropped from
    ``sys.path`` and ``sys.modules["pnasnet"] = None``: every ``import pnasnet`` fails there, which the
    script checks first. (The package is installed in this environment, so it is hidden, not absent.)"""
    model, photos, reports = directory_exports
    x = photos[:3].contiguous()
    np.save(tmp_path / "x.npy", x.numpy())
    script = textwrap.dedent(f"""
        import json, sys
        sys.path = [p for p in sys.path if not p.rstrip("/").endswith("src")]
        sys.modules["pnasnet"] = None
        try:
            import pnasnet
            raise SystemExit("pnasnet is importable")
        except ImportError:
            pass
        import numpy as np, torch
        extra = {{"pnasnet.json": ""}}
        program = torch.export.load({str(reports['torch-export'].path)!r}, extra_files=extra)
        with torch.no_grad():
            features, logits = program.module()(torch.from_numpy(np.load("x.npy")))
        np.save("logits.npy", logits.numpy())
        loaded = sorted(m for m in sys.modules if "pnasnet" in m)
        print(json.loads(extra["pnasnet.json"])["pnasnet.input_range"], loaded)
        """)
    result = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["[0,", "1]", "['pnasnet']"]  # only the blocked entry
    with torch.no_grad():
        want = model.classify(x)
    got = torch.from_numpy(np.load(tmp_path / "logits.npy"))
    err = float((got - want).abs().max() / want.abs().max())
    print(f"\n  .pt2 in a process where pnasnet cannot be imported: max rel logit error {err:.2e}")
    assert err <= FLOAT32_TOLERANCE


# ----------------------------------------------------------------------------------- int8, tflite, errors
@needs("openvino", "onnx", "onnxscript", "nncf")
@pytest.mark.cpu_dependent  # int8 kernels differ by CPU class (VNNI or AVX2): run again acting as AVX2-only
def test_openvino_int8_with_calibration_reports_its_centred_cosine(model, photos, tmp_path):
    calibration = torch.nn.functional.interpolate(photos[:6], size=(SIZE, SIZE), mode="bilinear", antialias=True)
    calibration = torch.cat([calibration, calibration.flip(-1)]).clamp(0, 1)
    report = report_line(export(model, "openvino", tmp_path / "int8.xml", image_size=SIZE,
                                calibration=calibration, verify_images=photos[6:], verified_on="photographs"))
    assert report.precision == "int8" and report.metadata["pnasnet.precision"] == "int8"
    # the file is quantized for any CPU it may be copied to, not for this one
    assert report.metadata["pnasnet.int8_overflow_fix"] == "enable"
    print(f"\n  int8 export: centred cosine min {report.centered_cosine_min:.3f} (threshold 0.8)")
    # measured 0.922 on a Zen 5 (VNNI) and acting as AVX2-only (the same 7-bit weights, exact int32 sums)
    assert report.centered_cosine_min is not None and report.centered_cosine_min >= 0.8
    assert report.max_rel_err > 1e-4  # quantized: not the float32 function
    with pytest.raises(ValueError, match="one image size"):
        export(model, "openvino", tmp_path / "x.xml", dynamic_size=True, calibration=calibration)


@needs("litert_torch", "ai_edge_litert")
def test_tflite_round_trips_in_the_litert_interpreter(model, photos, tmp_path):
    report = report_line(export(model, "tflite", tmp_path / "m.tflite", image_size=SIZE, verify_images=photos,
                                verified_on="photographs"))
    assert report.max_rel_err <= FLOAT32_TOLERANCE
    meta = export_module.tflite_metadata(tmp_path / "m.tflite")  # inside the flatbuffer, no file beside it
    assert report.files == [tmp_path / "m.tflite"] and meta["pnasnet.image_size"] == str(SIZE)
    assert meta["pnasnet.input_range"] == "[0, 1]" and meta["pnasnet.transform"] == "tf-slim"


def test_a_missing_package_names_the_extra(model, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in (
        "onnxruntime", "openvino", "nncf", "litert_torch") else real(name, *a))
    for fmt, extra in (("onnx", "onnx"), ("openvino", "openvino"), ("tflite", "tflite")):
        with pytest.raises(ImportError, match=rf'pip install "pnasnet\[{extra}\]"'):
            export(model, fmt, tmp_path / f"m{export_module.default_suffix(fmt)}")
    assert export_unavailable("openvino", "int8").endswith('pip install "pnasnet[int8]"')
    assert export_unavailable("torch-export") is None
    with pytest.raises(ValueError, match="unknown export format"):
        export(model, "coreml", tmp_path / "m.mlmodel")
    with pytest.raises(ValueError, match="writes a .pt2 file"):
        export(model, "torch-export", tmp_path / "m.onnx")


def test_a_file_that_disagrees_is_an_error(model, photos, tmp_path, monkeypatch):
    def write(model, out, *args):
        out.write_bytes(b"stand-in")
        return [out]

    def run(path):  # a runtime whose logits are 1% off
        return lambda x: [t.detach().numpy() * 1.01 for t in (model.features(x), model.classify(x))]

    monkeypatch.setattr(export_module, "_write_torch_export", write)
    monkeypatch.setattr(export_module, "_run_torch_export", run)
    with pytest.raises(ExportVerificationError, match="exceeds 0.0001; nothing was written"):
        export(model, "torch-export", tmp_path / "m.pt2", image_size=SIZE, verify_images=photos[:2])
    assert list(tmp_path.iterdir()) == []  # not the file, nor the folder it was checked in


# ----------------------------------------------------------------------------------- the command
def test_the_command_exports_a_model_directory_and_prints_the_check(model_dir, tmp_path, capsys):
    from pnasnet.cli import main

    out = tmp_path / "dir.pt2"
    assert main(["export", str(model_dir), "--format", "torch-export", "--out", str(out), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    print(f"\n  pnasnet export {model_dir.name}/ --format torch-export: {report['max_rel_err']:.2e} on "
          f"{report['verified_on']}")
    assert report["files"] == [str(out)] and report["image_size"] == 64 and report["precision"] == "float32"
    assert report["verified_on"].startswith("photographs (") and report["max_rel_err"] <= FLOAT32_TOLERANCE
    extra = {"pnasnet.json": ""}
    torch.export.load(str(out), extra_files=extra)
    assert json.loads(json.loads(extra["pnasnet.json"])["pnasnet.labels"]) == list(TEXTURES)


def test_the_command_names_the_extra_before_loading_weights(tmp_path, capsys, monkeypatch):
    from pnasnet.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "litert_torch" else real(name, *a))
    # weights that do not exist: the missing package is reported first
    assert main(["export", "pnasnet5_mobile", "--weights", str(tmp_path / "absent.ckpt"), "--format", "tflite",
                 "--out", str(tmp_path / "m.tflite")]) == 2
    err = capsys.readouterr().err
    assert "--format tflite needs litert-torch" in err and 'pip install "pnasnet[tflite]"' in err
    assert main(["export", "pnasnet5_mobile", "--weights", "none", "--format", "onnx", "--out",
                 str(tmp_path / "m.onnx"), "--calibration", str(tmp_path)]) == 2
    assert "int8 export is available for --format openvino only" in capsys.readouterr().err
