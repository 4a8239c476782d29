"""The contenders: their names and descriptions (read by the driver), and how a worker process builds
each PyTorch / ONNX Runtime / OpenVINO one (``build_contender``; TF-Slim's is built by
:mod:`.worker` itself, which runs in a Python without pnasnet).

Imports nothing outside the standard library at the top: the driver reads the names without loading torch.
"""

from __future__ import annotations



LARGE_GFLOP_331 = 49.9  # the figure; the benchmark also counts it from the model


OURS = ["pnasnet-plain", "pnasnet-auto", "pnasnet-eager", "pnasnet-compile", "pnasnet-onnxruntime", "pnasnet-openvino",
        "pnasnet-eager-bf16", "pnasnet-openvino-bf16"]


PEERS = ["timm-eager", "timm-channels-last", "timm-compile", "timm-bf16-autocast", "timm-onnxruntime",
         "timm-openvino", "timm-openvino-bf16", "tf-slim"]


EXTRA = ["pnasnet-folded", "pnasnet-compile-bf16", "pnasnet-openvino-int8"]


ALL = OURS + PEERS + EXTRA


DEFAULT = OURS + PEERS


BF16 = {"pnasnet-eager-bf16", "pnasnet-openvino-bf16", "pnasnet-compile-bf16", "timm-bf16-autocast",
        "timm-openvino-bf16"}


DESCRIPTIONS = {
    "pnasnet-plain": "pnasnet, plain model (NCHW, BN, training-ready forward)",
    "pnasnet-folded": "pnasnet, BN folded + channels-last, plain forward",
    "pnasnet-auto": "pnasnet for_inference(backend='auto'): what the commands run by default (float32, exact)",
    "pnasnet-eager": "pnasnet optimize(): eager float32 (exact)",
    "pnasnet-compile": "pnasnet optimize(backend='compile') float32",
    "pnasnet-onnxruntime": "pnasnet ONNX export in ONNX Runtime",
    "pnasnet-openvino": "pnasnet ONNX export in OpenVINO float32",
    "pnasnet-eager-bf16": "pnasnet optimize(precision='bfloat16'): eager",
    "pnasnet-openvino-bf16": "pnasnet ONNX export in OpenVINO bfloat16",
    "pnasnet-compile-bf16": "pnasnet optimize(backend='compile', precision='bfloat16')",
    "pnasnet-openvino-int8": "pnasnet ONNX export in OpenVINO, int8 (NNCF, calibrated on photographs)",
    "timm-eager": "timm pnasnet5large eager (NCHW)",
    "timm-channels-last": "timm channels-last",
    "timm-compile": "timm channels-last + torch.compile",
    "timm-bf16-autocast": "timm channels-last + bfloat16 autocast",
    "timm-onnxruntime": "timm's ONNX export in ONNX Runtime",
    "timm-openvino": "timm's ONNX export in OpenVINO float32",
    "timm-openvino-bf16": "timm's ONNX export in OpenVINO bfloat16",
    "tf-slim": "TF-Slim graph in TensorFlow",
}


def _ours_model(spec: dict):
    import torch

    import pnasnet

    torch.manual_seed(0)
    weights = spec.get("safetensors") or spec.get("weights")
    return pnasnet.create_model(spec["model"], weights=weights, progress=False)


def timm_model(spec: dict):
    """timm's pnasnet5large with our weights (1001 classes; same tensors by the ports' names)."""
    import timm

    from pnasnet.weights.ports import port_names

    if "large" not in spec["model"]:
        raise RuntimeError("timm has PNASNet-5 Large only (pnasnet5large)")

    ours = _ours_model(spec)
    model = timm.create_model("pnasnet5large", pretrained=False, num_classes=ours.num_classes)
    table = port_names(ours)
    state = ours.state_dict()
    mapped = {table[k]: v for k, v in state.items() if k in table}
    head = {"final_layer.FC.weight": "last_linear.weight", "final_layer.FC.bias": "last_linear.bias"}
    for k, name in head.items():
        if k in state and k not in table:
            mapped[name] = state[k]
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"timm: {len(missing)} tensors not mapped, e.g. {missing[:3]}")
    del ours
    return model.eval()


def _torch_runner(fn, layout_cl: bool = False):
    import torch

    def run(x):
        t = torch.from_numpy(x)
        if layout_cl:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return fn(t)

    return run


def build_contender(name: str, spec: dict):
    """Build contender ``name`` in this process; returns (run(images_numpy) -> None, info dict)."""
    threads = spec["threads"]
    info: dict = {}
    import torch

    torch.set_num_threads(threads)
    if name.startswith("pnasnet-"):
        from pnasnet.inference import fold_batch_norms, optimize
        from pnasnet.inference.backends import to_channels_last

        model = _ours_model(spec)
        model.check_input_range = False  # all contenders get the same unchecked images
        if name == "pnasnet-plain":
            return _torch_runner(model.classify), info
        if name == "pnasnet-folded":
            folded = fold_batch_norms(model)
            return _torch_runner(lambda t: folded.classify(to_channels_last(t))), info
        # What `pnasnet classify/features` do: convert the model in place, and keep freed memory
        # once the first batch is done (here: after the warm-up call, see worker_main).
        info["keep_freed_memory_after_warmup"] = spec.get("keep_freed_memory", True)
        if name == "pnasnet-auto":  # what the commands run by default, from the user's graph cache
            from pnasnet.inference import backend_of, for_inference

            fast = for_inference(model, "auto", image_size=spec["size"], threads=threads, in_place=True)
            info["auto"] = f"{backend_of(fast)} ({fast.chosen_by})"
        else:
            backend = name.split("-")[1]
            precision = "bfloat16" if name.endswith("bf16") else "int8" if name.endswith("int8") else "float32"
            calibration = None
            if precision == "int8":
                from .photos import calibration_photographs

                calibration = calibration_photographs(spec["size"])
            fast = optimize(model, backend, precision, image_size=spec["size"], threads=threads,
                            onnx_path=spec.get("ours_onnx") if backend in ("onnxruntime", "openvino") else None,
                            calibration=calibration, in_place=True)
        fast.check_input_range = False
        del model
        return _torch_runner(fast.classify), info
    if name.startswith("timm-"):
        model = timm_model(spec)
        kind = name[len("timm-"):]
        if kind == "eager":
            return _torch_runner(model), info
        if kind in ("channels-last", "compile", "bf16-autocast"):
            model = model.to(memory_format=torch.channels_last)
            if kind == "compile":
                return _torch_runner(torch.compile(model), layout_cl=True), info
            if kind == "bf16-autocast":
                def fn(t):
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return model(t)
                return _torch_runner(fn, layout_cl=True), info
            return _torch_runner(model, layout_cl=True), info
        path = spec.get("timm_onnx")
        if not path:
            raise RuntimeError("timm's ONNX export is missing (the preparation step failed)")
        del model
        return _graph_runner(kind, path, threads)
    raise ValueError(f"unknown contender {name}")


def _graph_runner(kind: str, path: str, threads: int):
    if kind == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return (lambda x: session.run(None, {name: x})), {}
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "bf16" if kind.endswith("bf16") else "f32",
              "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    return (lambda x: request.infer({0: x})), {}
