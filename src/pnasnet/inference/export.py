"""Files to ship: ``export(model, format, out)`` writes one format, then checks it in its own runtime.

==================  =====================================================  ==========================
format              file and runtime                                       extra
==================  =====================================================  ==========================
``onnx``            ``.onnx`` (weights inside), ONNX Runtime; dynamic      ``pnasnet[onnx]``
                    batch, fixed or dynamic image size, opset stated
``torch-export``    ``.pt2`` (``torch.export.save``), loads with           none (PyTorch)
                    ``torch.export.load`` without this package; dynamic
                    batch, fixed or dynamic image size
``openvino``        IR ``.xml`` + ``.bin`` (float32 weights), OpenVINO;    ``pnasnet[openvino]``
                    int8 with ``calibration=`` (NNCF, :mod:`.int8`)        (int8: ``pnasnet[int8]``)
``tflite``          ``.tflite`` (LiteRT), converted by ``litert-torch``,   ``pnasnet[tflite]``
                    run in the LiteRT interpreter; fixed image size,
                    batch 1
==================  =====================================================  ==========================

Every graph takes ``images`` float32 ``[N, 3, H, W]``, RGB in [0, 1] (the [-1, 1] rescaling is inside)
and returns ``features`` ``[N, F]`` and, unless the model is a feature-vector model, ``logits``
``[N, num_classes]``. Batch norms are folded into the convolutions first; whatever else the model
computes is exported as it is. The file records the preprocessing (value range, image size,
transform), the outputs and the labels in its metadata where the format has a place for it: ONNX
``metadata_props``, OpenVINO ``rt_info`` (under ``pnasnet``), the ``.pt2``'s extra file
``pnasnet.json``, the ``.tflite``'s metadata entry ``pnasnet`` (JSON; :func:`tflite_metadata`).

Right after writing, the file is loaded in its runtime and run on ``verify_images`` against the
PyTorch model: float32 exports must agree within :data:`FLOAT32_TOLERANCE` (max relative logit
error, ``max|a - b| / max|b|``) or :class:`ExportVerificationError` is raised; int8 is a different
function and reports the cosine of the image-dependent part of the logits (each minus the batch
mean) instead. The files are written and checked in a hidden folder beside ``out`` and moved into
place only when the check passes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic_files import fsync_dir, fsync_file
from ..model.network import PNASNet
from .onnx_export import (DEFAULT_OPSET, MAX_DYNAMIC_SIZE, dynamic_min_size, dynamic_shapes, export_module,
                          export_onnx, output_names)

__all__ = ["FORMATS", "FLOAT32_TOLERANCE", "ExportReport", "ExportVerificationError", "export", "export_metadata",
           "export_unavailable", "require_export", "default_suffix", "tflite_metadata"]

FORMATS = ("onnx", "torch-export", "openvino", "tflite")
FLOAT32_TOLERANCE = 1e-4
# (import name, pip name) of what each format needs, and the extra that installs it.
_NEEDS = {"onnx": ((("onnx", "onnx"), ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime")), "onnx"),
          "torch-export": ((), None),
          "openvino": ((("openvino", "openvino"), ("onnx", "onnx"), ("onnxscript", "onnxscript")), "openvino"),
          "tflite": ((("litert_torch", "litert-torch"), ("ai_edge_litert", "ai-edge-litert")), "tflite")}
_SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2", "openvino": ".xml", "tflite": ".tflite"}
# The commands' transform names (``--transform``): what the images went through before the graph.
_TRANSFORMS = {"tf-slim": "TF-Slim inception eval: central crop of 87.5% of each side, bilinear resize to the "
                          "image size (pnasnet.load_images(..., transform='tf_slim_eval'))",
               "resize": "bilinear resize of the whole image to the image size "
                         "(pnasnet.load_images(..., transform='resize'))"}


class ExportVerificationError(RuntimeError):
    """The written file does not compute the model's function within the stated tolerance."""


def default_suffix(format: str) -> str:
    return _SUFFIX[format]


def export_unavailable(format: str, precision: str = "float32") -> str | None:
    """None if ``format`` (at ``precision``) can be written and checked here, else what to install."""
    if format not in FORMATS:
        return f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}"
    packages, extra = _NEEDS[format]
    if precision == "int8":
        if format != "openvino":
            return f"int8 export is available for --format openvino only, not {format}"
        packages, extra = packages + (("nncf", "nncf"),), "int8"
    elif precision != "float32":
        return f"unknown export precision {precision!r}; choose float32 or int8 (openvino)"
    missing = [pip for module, pip in packages if importlib.util.find_spec(module) is None]
    if missing:
        return f"--format {format} needs {', '.join(missing)}: pip install \"pnasnet[{extra}]\""
    return None


def require_export(format: str, precision: str = "float32") -> None:
    """Raise unless ``format`` (at ``precision``) can be written and checked here: ValueError for an
    unknown format or precision (or int8 other than openvino), ImportError naming the extra to install."""
    reason = export_unavailable(format, precision)
    if reason:
        raise (ValueError if reason.startswith("unknown") or "available for" in reason else ImportError)(reason)


@dataclass
class ExportReport:
    """What :func:`export` wrote and how well the file agreed with the PyTorch model."""

    format: str
    path: Path
    files: list[Path]
    size_bytes: int
    image_size: int | None          # None: dynamic
    dynamic_size: bool
    precision: str
    opset: int | None
    verified_images: int
    verified_on: str
    verified_sizes: list[int]
    max_rel_err: float
    centered_cosine_min: float | None  # int8 only
    seconds: float
    metadata: dict = field(default_factory=dict)

    def summary(self) -> str:
        size = "dynamic" if self.dynamic_size else f"{self.image_size}x{self.image_size}"
        opset = f", opset {self.opset}" if self.opset else ""
        files = " + ".join(str(f) for f in self.files)
        what = "logit" if self.metadata.get("pnasnet.outputs", "").endswith("logits") else "feature"
        check = (f"centred cosine min {self.centered_cosine_min:.4f} (int8; max rel {what} error "
                 f"{self.max_rel_err:.2e})" if self.centered_cosine_min is not None
                 else f"max rel {what} error {self.max_rel_err:.2e} (tolerance {FLOAT32_TOLERANCE:g})")
        return (f"wrote {files} ({self.size_bytes / 2**20:.1f} MiB; {self.format}, {self.precision}, images {size}"
                f"{opset}); checked in its runtime on {self.verified_images} {self.verified_on} at "
                f"{', '.join(f'{s} px' for s in self.verified_sizes)}: {check}")


# ----------------------------------------------------------------------------------- metadata
def _labels(model) -> list[str] | None:
    if not model.num_classes:
        return None
    labels = getattr(model, "labels", None)
    if labels is not None:
        return list(labels)
    if model.num_classes == 1001:
        from ..data.labels import imagenet_labels

        return imagenet_labels(background=True)
    return None


def export_metadata(model: PNASNet, image_size: int | None, *, precision: str = "float32",
                    dynamic_size: bool = False) -> dict[str, str]:
    """``{key: text}`` stored in every export: what the graph expects and returns."""
    preprocessing = getattr(model, "preprocessing", None) or {}
    transform = preprocessing.get("transform", "tf-slim")
    size = (f"dynamic ({dynamic_min_size(model)} to {MAX_DYNAMIC_SIZE} px a side)" if dynamic_size else str(image_size))
    source = getattr(model, "weights_source", None)
    labels = _labels(model)
    meta = {
        "pnasnet.model": model.config.name,
        "pnasnet.input": "images: float32 [N, 3, H, W], RGB, values in [0, 1] (the graph maps them to [-1, 1])",
        "pnasnet.input_range": "[0, 1]",
        "pnasnet.image_size": size,
        "pnasnet.expected_image_size": str(preprocessing.get("image_size", model.expected_image_size[0])),
        "pnasnet.transform": transform,
        "pnasnet.transform_description": _TRANSFORMS.get(transform, transform),
        "pnasnet.outputs": ", ".join(output_names(model)),
        "pnasnet.num_classes": str(model.num_classes),
        "pnasnet.num_features": str(model.num_features),
        "pnasnet.precision": precision,
        "pnasnet.weights": str(source["weights"]) if source else "random (untrained)",
        "pnasnet.exported_with": f"pnasnet, torch {torch.__version__}",
    }
    if precision == "int8":
        meta["pnasnet.int8_overflow_fix"] = PORTABLE_OVERFLOW_FIX
    if model.num_classes:
        meta["pnasnet.background_class"] = "index 0" if model.num_classes == 1001 and not hasattr(model, "labels") \
            else "none"
    if labels is not None:
        meta["pnasnet.labels"] = json.dumps(labels, ensure_ascii=False)
    return meta


# ----------------------------------------------------------------------------------- writers
def _write_onnx(model, out: Path, size: int, dynamic_size: bool, opset: int, meta: dict) -> list[Path]:
    import onnx

    export_onnx(model, out, image_size=size, opset=opset, dynamic_size=dynamic_size)
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "PNASNet-5 exported by pnasnet: " + meta["pnasnet.input"]
    onnx.save(proto, str(out))
    onnx.checker.check_model(str(out), full_check=True)
    return [out]


def _run_onnx(out: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x.numpy()})


def _torch_program(model, size: int, dynamic_size: bool):
    wrapper = export_module(model, dynamic_size)
    if dynamic_size:
        size = max(size, dynamic_min_size(model))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.export.export(wrapper, (torch.rand(2, 3, size, size),),
                                   dynamic_shapes=dynamic_shapes(model, dynamic_size))


def _write_torch_export(model, out: Path, size: int, dynamic_size: bool, meta: dict) -> list[Path]:
    program = _torch_program(model, size, dynamic_size)
    torch.export.save(program, str(out), extra_files={"pnasnet.json": json.dumps(meta, ensure_ascii=False)})
    return [out]


def _run_torch_export(out: Path):
    module = torch.export.load(str(out)).module()

    def run(x):
        with torch.no_grad():
            outputs = module(x)
        return [t.numpy() for t in (outputs if isinstance(outputs, (tuple, list)) else [outputs])]

    return run


PORTABLE_OVERFLOW_FIX = "enable"  # NNCF's overflow fix on every layer (see pnasnet.inference.int8)


def _write_openvino(model, out: Path, size: int, dynamic_size: bool, meta: dict, calibration) -> list[Path]:
    import openvino as ov

    from .graph_cache import openvino_model

    graph = openvino_model(model, size, dynamic_size=dynamic_size)
    if calibration is not None:
        from .int8 import quantize_openvino_model

        # A file goes to other machines: quantized for every CPU class (7-bit weights, so that 16-bit
        # int8 sums cannot saturate where there is no VNNI), not for the one exporting it.
        graph = quantize_openvino_model(graph, calibration, PORTABLE_OVERFLOW_FIX)
    for key, value in meta.items():
        graph.set_rt_info(value, ["pnasnet", key.removeprefix("pnasnet.")])
    ov.save_model(graph, str(out), compress_to_fp16=False)  # float32 weights: the exact function
    return [out, out.with_suffix(".bin")]


def _run_openvino(out: Path):
    import openvino as ov

    compiled = ov.Core().compile_model(str(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda x: [request.infer({0: x.numpy()})[o] for o in compiled.outputs]


def _write_tflite(model, out: Path, size: int, meta: dict) -> list[Path]:
    import litert_torch

    wrapper = export_module(model, False)
    # batch 1: litert-torch 0.10 fails on a dynamic batch dimension (JAX lowering of [-1, ...] shapes)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        converted = litert_torch.convert(wrapper, (torch.rand(1, 3, size, size),))
    converted.export(str(out))
    text = json.dumps(meta, ensure_ascii=False)
    if _embed_tflite_metadata(out, text):
        return [out]
    sidecar = out.with_suffix(".json")  # weights stored outside the flatbuffer: no repacking
    sidecar.write_text(text + "\n", encoding="utf-8")
    return [out, sidecar]


TFLITE_METADATA_NAME = "pnasnet"


def _embed_tflite_metadata(path: Path, text: str) -> bool:
    """Add ``text`` to the ``.tflite`` flatbuffer as the metadata entry :data:`TFLITE_METADATA_NAME`
    (the schema's ``Model.metadata``: a name and a buffer), repacked with the LiteRT schema's object
    API. False (file unchanged) where the converter put weights outside the flatbuffer (offsets)."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    if any(getattr(b, "offset", 0) for b in model.buffers or []):
        return False
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(text.encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = TFLITE_METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != TFLITE_METADATA_NAME.encode()] + [entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
    return True


def tflite_metadata(path: str | os.PathLike) -> dict:
    """The metadata :func:`export` stored in a ``.tflite`` file (or the ``.json`` beside it)."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == TFLITE_METADATA_NAME.encode():
            return json.loads(bytes(model.Buffers(entry.Buffer()).DataAsNumpy()).decode("utf-8"))
    return json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))


def _run_tflite(out: Path):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(out))
    runner = interpreter.get_signature_runner()
    names = sorted(runner.get_output_details())  # output_0 (features), output_1 (logits)
    (input_name,) = runner.get_input_details()

    def run(x):  # one image at a time: the graph has batch 1
        results = [runner(**{input_name: x[i:i + 1].numpy()}) for i in range(x.shape[0])]
        return [np.concatenate([r[n] for r in results]) for n in names]

    return run


# ----------------------------------------------------------------------------------- checks
def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True).clamp(0.0, 1.0)


def _synthetic_images(size: int, count: int = 4) -> torch.Tensor:
    """Deterministic smooth images with texture, for a check when no photographs are given."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(count, 3, 6, 6, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (smooth + 0.05 * torch.randn(count, 3, size, size, generator=generator)).clamp(0.0, 1.0)


def _centered_cosine_min(a: torch.Tensor, b: torch.Tensor) -> float:
    ac, bc = a - a.mean(0), b - b.mean(0)
    return float(torch.nn.functional.cosine_similarity(ac, bc, dim=1).min())


def _verify(model: PNASNet, run, images: torch.Tensor, sizes: list[int], int8: bool) -> tuple[float, float | None]:
    worst, cosine = 0.0, None
    index = 1 if model.num_classes else 0  # logits, else features
    for size in sizes:
        x = _resized(images, size).float().contiguous()
        with torch.no_grad():
            want = (model.classify(x) if model.num_classes else model.features(x)).double()
        got = torch.from_numpy(run(x)[index]).double()
        if got.shape != want.shape:
            raise ExportVerificationError(f"the exported file returns shape {tuple(got.shape)}, "
                                          f"the model {tuple(want.shape)}")
        worst = max(worst, float((got - want).abs().max() / want.abs().max()))
        if int8:
            c = _centered_cosine_min(got, want)
            cosine = c if cosine is None else min(cosine, c)
    return worst, cosine


# ----------------------------------------------------------------------------------- export
def export(model: PNASNet, format: str, out: str | os.PathLike, *, image_size: int | None = None,
           dynamic_size: bool = False, calibration: torch.Tensor | None = None, opset: int = DEFAULT_OPSET,
           verify_images: torch.Tensor | None = None, verified_on: str | None = None) -> ExportReport:
    """Write ``model`` to ``out`` in ``format`` (one of :data:`FORMATS`) and check the file in its runtime.

    Args:
        model: a ``PNASNet`` (``pnasnet.create_model``: any variant, any weights, a model directory).
        format: "onnx", "torch-export", "openvino" or "tflite".
        out: the file to write (``.onnx``, ``.pt2``, ``.xml`` with its ``.bin`` beside it, ``.tflite``).
        image_size: the image size of a fixed-size export (default: the size the model was made for:
            its model directory's, else 331 Large, 224 Mobile).
        dynamic_size: any height and width (``onnx``, ``torch-export``, ``openvino`` float32): the
            TF-SAME pad amounts are computed in the graph from the input's shape.
        calibration: ``openvino`` only: float images [N, 3, S, S] in [0, 1] at ``image_size``; makes
            an int8 model (NNCF post-training quantization, :mod:`pnasnet.inference.int8`).
        opset: ONNX opset (``onnx``, and the ONNX step of ``openvino``).
        verify_images: float images [N, 3, H, W] in [0, 1] the check runs on (resized to the export
            size); default: deterministic synthetic images. The command line passes photographs.
        verified_on: what ``verify_images`` are, for the report (e.g. "photographs").

    Raises ImportError naming the extra to install when a format's packages are missing, and
    :class:`ExportVerificationError` when a float32 file disagrees with the model.
    """
    if not isinstance(model, PNASNet):
        raise TypeError(f"expected a PNASNet (pnasnet.create_model), got {type(model).__name__}")
    precision = "int8" if calibration is not None else "float32"
    require_export(format, precision)
    preprocessing = getattr(model, "preprocessing", None) or {}
    size = int(image_size or preprocessing.get("image_size") or model.expected_image_size[0])
    if size < model.min_image_size:
        raise ValueError(f"image size {size} is below the {model.config.name} minimum of {model.min_image_size}")
    if dynamic_size and (format == "tflite" or calibration is not None):
        raise ValueError("a dynamic image size is available for onnx, torch-export and float32 openvino; "
                         f"{'int8' if calibration is not None else format} exports take one image size (image_size=)")
    if dynamic_size and size < dynamic_min_size(model):
        size = dynamic_min_size(model)
    if calibration is not None:
        from .int8 import check_calibration

        calibration = check_calibration(calibration, size)
    out = Path(out)
    if out.suffix.lower() != _SUFFIX[format]:
        raise ValueError(f"--format {format} writes a {_SUFFIX[format]} file, got {out.name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    # Written and checked in a hidden folder beside ``out``, moved into place only once the check
    # passed: a failed export leaves nothing that looks like a model.
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    written = staging / out.name
    try:
        meta = export_metadata(model, None if dynamic_size else size, precision=precision, dynamic_size=dynamic_size)
        if format == "onnx":
            files = _write_onnx(model, written, size, dynamic_size, opset, meta)
            run = _run_onnx(written)
        elif format == "torch-export":
            files = _write_torch_export(model, written, size, dynamic_size, meta)
            run = _run_torch_export(written)
        elif format == "openvino":
            files = _write_openvino(model, written, size, dynamic_size, meta, calibration)
            run = _run_openvino(written)
        else:
            files = _write_tflite(model, written, size, meta)
            run = _run_tflite(written)
        if verify_images is None:
            verify_images, verified_on = _synthetic_images(size), "synthetic images"
        sizes = [size, size + 1] if dynamic_size else [size]  # dynamic: both parities of the TF padding
        max_rel, cosine = _verify(model, run, verify_images, sizes, precision == "int8")
        if precision == "float32" and not max_rel <= FLOAT32_TOLERANCE:
            raise ExportVerificationError(f"{out}: the exported file's max relative error against the PyTorch model, "
                                          f"{max_rel:.3g}, exceeds {FLOAT32_TOLERANCE:g}; nothing was written")
        del run
        final = []
        for f in files:
            fsync_file(f)  # the data on disk before the name: a crash never leaves a torn model file
            os.replace(f, out.parent / f.name)
            final.append(out.parent / f.name)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if was_training:
            model.train()
    report = ExportReport(format=format, path=out, files=final, size_bytes=sum(f.stat().st_size for f in final),
                          image_size=None if dynamic_size else size, dynamic_size=dynamic_size, precision=precision,
                          opset=opset if format in ("onnx", "openvino") else None,
                          verified_images=int(verify_images.shape[0]), verified_on=verified_on or "images",
                          verified_sizes=sizes, max_rel_err=max_rel, centered_cosine_min=cosine,
                          seconds=time.perf_counter() - started, metadata=meta)
    return report
