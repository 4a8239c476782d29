"""backend="auto": what it picks on which CPU class and install, that the OpenVINO form it runs is
exact (against the plain model), that the converted graph is cached on disk by value and reused by
later processes, and that auto falls back to the eager form, saying why, when OpenVINO fails."""

import importlib.util
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import pnasnet
from pnasnet.inference import auto_choice, backend_of, cpu_support, for_inference
from pnasnet.inference import backends as backends_module
from pnasnet.inference import graph_cache
from pnasnet.inference.cpu import set_cpu_support
from tf_slim_fixtures import images_nchw

FIXTURE = "tests/fixtures/tf_slim/mobile_tiny/model.ckpt"
SIZE = 48
EXACT = 1e-4  # the float32 paths' stated tolerance: max relative error of logits

needs_openvino = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("openvino", "onnx", "onnxscript")),
    reason="openvino, onnx or onnxscript not installed")


@pytest.fixture()
def acting_as():
    def act(support):
        set_cpu_support(support)
    yield act
    set_cpu_support(None)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PNASNET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(backends_module.AUTO_OPENVINO_ENV, raising=False)
    monkeypatch.delenv(graph_cache.ENV_SWITCH, raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def images():
    return images_nchw("mobile_tiny", SIZE)


def fresh_model():
    return pnasnet.create_model("auto", weights=FIXTURE).eval()


def rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def entries(home: Path) -> list[Path]:
    root = home / "openvino"
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.exists() else []


# --------------------------------------------------------------------------------------- the choice
@pytest.mark.cpu_dependent
def test_auto_choice_follows_cpu_class_install_and_size(acting_as, monkeypatch):
    model = fresh_model()
    monkeypatch.delenv(backends_module.AUTO_OPENVINO_ENV, raising=False)
    x86 = replace(cpu_support(), arch="x86_64", fused_ops=True)
    acting_as(x86)
    installed = backends_module.backend_unavailable("openvino") is None
    backend, why = auto_choice(model, "float32", SIZE)
    assert backend == ("openvino" if installed else "eager")
    # No fixed image size (a Python caller that feeds any size): the eager form, which takes any.
    assert auto_choice(model, "float32", None)[0] == "eager"
    # Without OpenVINO the reason says how to get the faster path.
    with monkeypatch.context() as patched:
        patched.setattr(backends_module, "backend_unavailable", lambda name: "missing" if name == "openvino" else None)
        backend, why = auto_choice(model, "float32", SIZE)
    assert backend == "eager" and 'pip install "pnasnet[openvino]"' in why
    # Arm (not measured with OpenVINO): the eager form where torch has the fused operators, else plain.
    acting_as(replace(x86, arch="aarch64"))
    assert auto_choice(model, "float32", SIZE)[0] == "eager"
    acting_as(replace(x86, arch="aarch64", fused_ops=False))
    assert auto_choice(model, "float32", SIZE)[0] == "plain"
    # Reduced precisions keep their explicit paths; the override names a back end.
    acting_as(x86)
    assert auto_choice(model, "bfloat16", SIZE)[0] == "eager"
    assert auto_choice(model, "int8", SIZE)[0] == "openvino"
    # The switch turns the OpenVINO choice off (as if it were not installed), nothing else.
    monkeypatch.setenv(backends_module.AUTO_OPENVINO_ENV, "off")
    assert auto_choice(model, "float32", SIZE) == ("eager", "PNASNET_AUTO_OPENVINO is off")
    acting_as(replace(x86, fused_ops=False))
    assert auto_choice(model, "float32", SIZE)[0] == "plain"


# --------------------------------------------------------------------------------------- OpenVINO
@needs_openvino
@pytest.mark.cpu_dependent  # exactness of OpenVINO's kernels: run again acting as AVX2-only
def test_auto_runs_openvino_exactly_and_caches_the_graph_by_value(home, images, monkeypatch):
    if not cpu_support().is_x86:
        pytest.skip("auto picks OpenVINO on x86 CPUs only")
    model = fresh_model()
    with torch.inference_mode():
        want_logits, want_feats = model.classify(images), model.features(images)
    runnable = for_inference(model, "auto", image_size=SIZE)
    assert backend_of(runnable) == "openvino float32"
    assert runnable.chosen_by.startswith("auto: OpenVINO is installed")
    assert rel(runnable.classify(images), want_logits) <= EXACT
    assert rel(runnable.features(images), want_feats) <= EXACT
    [entry] = entries(home)
    assert (entry / "model.xml").is_file() and (entry / "model.bin").stat().st_size > 0
    assert not list(entry.glob("*.onnx"))  # only the converted graph is kept

    # The same weights again (a new model object): no export, the cached graph, the same outputs.
    from pnasnet.inference import onnx_export

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the graph is cached")

    with monkeypatch.context() as patched:
        patched.setattr(onnx_export, "export_onnx", no_export)
        again = for_inference(fresh_model(), "auto", image_size=SIZE)
    assert torch.equal(again.classify(images), runnable.classify(images))

    # Other weights (one bias changed) or another size: another entry, never the stale graph.
    changed = fresh_model()
    with torch.no_grad():
        changed.final_layer.FC.bias[1] += 5.0
    other = for_inference(changed, "auto", image_size=SIZE)
    with torch.inference_mode():
        assert rel(other.classify(images), changed.classify(images)) <= EXACT
    assert len(entries(home)) == 2


@needs_openvino
def test_in_place_drops_the_torch_weights_and_openvino_takes_torch_threads(home, images):
    if not cpu_support().is_x86:
        pytest.skip("auto picks OpenVINO on x86 CPUs only")
    model = fresh_model()
    with torch.inference_mode():
        want = model.classify(images)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as --threads 1 sets it: OpenVINO takes the same count, not every core
    try:
        runnable = for_inference(model, "auto", image_size=SIZE, in_place=True)
    finally:
        torch.set_num_threads(threads)
    assert runnable.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert sum(p.numel() for p in model.parameters()) == 0  # the weights are held once, by OpenVINO
    assert rel(runnable.classify(images), want) <= EXACT


@needs_openvino
def test_auto_falls_back_to_eager_when_openvino_fails(home, images, monkeypatch, acting_as):
    acting_as(replace(cpu_support(), arch="x86_64", fused_ops=True))
    model = fresh_model()
    with torch.inference_mode():
        want = model.classify(images)

    def broken(*args, **kwargs):
        raise RuntimeError("the CPU plugin could not compile")

    monkeypatch.setattr(backends_module.OpenVINOModel, "__init__", broken)
    with pytest.warns(RuntimeWarning, match="OpenVINO could not run .*could not compile.*eager form instead"):
        runnable = for_inference(model, "auto", image_size=SIZE, in_place=True)
    assert backend_of(runnable) == "eager float32" and runnable.chosen_by == "auto: OpenVINO failed"
    assert rel(runnable.classify(images), want) <= EXACT


@needs_openvino
def test_cache_off_converts_into_a_temporary_folder_and_removes_it(home, images, monkeypatch, tmp_path):
    if not cpu_support().is_x86:
        pytest.skip("auto picks OpenVINO on x86 CPUs only")
    monkeypatch.setenv(graph_cache.ENV_SWITCH, "off")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    model = fresh_model()
    with torch.inference_mode():
        want = model.classify(images)
    runnable = for_inference(model, "auto", image_size=SIZE)
    assert rel(runnable.classify(images), want) <= EXACT
    assert entries(home) == [] and list(scratch.iterdir()) == []


def test_prune_keeps_the_most_recently_used_entries(tmp_path):
    now = time.time()
    made = []
    for age in range(graph_cache.KEEP + 2):
        entry = tmp_path / f"entry{age}"
        entry.mkdir()
        (entry / "model.xml").write_text("x")
        os.utime(entry, (now - 100 * age, now - 100 * age))
        made.append(entry)
    (tmp_path / ".entry-staging").mkdir()  # a conversion in progress is never pruned
    oldest = made[-1]
    graph_cache._prune(tmp_path, keep=oldest)  # the entry just used stays even if it is the oldest
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([".entry-staging", oldest.name] + [p.name for p in made[:graph_cache.KEEP]])


# --------------------------------------------------------------------------------------- the command
@needs_openvino
@pytest.mark.cpu_dependent
def test_features_command_runs_openvino_by_default_and_records_it(tmp_path):
    if not cpu_support().is_x86:
        pytest.skip("auto picks OpenVINO on x86 CPUs only")
    from PIL import Image

    from pnasnet.tasks.formats import output_for

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(images_nchw("mobile_tiny", SIZE)[:3]):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(photos / f"{i}.png")
    env = {k: v for k, v in os.environ.items() if k not in (backends_module.AUTO_OPENVINO_ENV, graph_cache.ENV_SWITCH)}
    env["PNASNET_HOME"] = str(tmp_path / "home")

    def features(out, *extra):
        result = subprocess.run([sys.executable, "-m", "pnasnet", "features", str(photos), "--model", "auto",
                                 "--weights", FIXTURE, "--image-size", str(SIZE), "--out", str(out), *extra],
                                capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        return output_for(out), result.stderr

    first, err_first = features(tmp_path / "a.parquet")
    second, err_second = features(tmp_path / "b.parquet")
    eager, _ = features(tmp_path / "c.parquet", "--backend", "eager")
    assert first.read_info().backend == second.read_info().backend == "openvino float32"
    assert eager.read_info().backend == "eager float32"
    # converted once, by the first process; the second found it in the cache
    assert "at 48 px for OpenVINO once" in err_first and "torchvision" not in err_first
    assert "converting" not in err_second

    def vectors(output):
        return torch.from_numpy(__import__("numpy").concatenate([b.features for b in output.iter_blocks()]))

    assert rel(vectors(first), vectors(eager)) <= EXACT
    assert torch.equal(vectors(first), vectors(second))


@needs_openvino
def test_concurrent_processes_convert_once_and_share_the_entry(tmp_path):
    """Server workers and Ray actors start together: the first converts under the cache's file lock,
    the others wait for it and use its entry."""
    if not cpu_support().is_x86:
        pytest.skip("auto picks OpenVINO on x86 CPUs only")
    env = {k: v for k, v in os.environ.items() if k not in (backends_module.AUTO_OPENVINO_ENV, graph_cache.ENV_SWITCH)}
    env["PNASNET_HOME"] = str(tmp_path / "home")
    script = ("import torch, pnasnet; from pnasnet.inference import for_inference, backend_of; "
              f"m = pnasnet.create_model('auto', weights={FIXTURE!r}).eval(); "
              f"r = for_inference(m, 'auto', image_size={SIZE}); "
              f"print(backend_of(r), float(r.classify(torch.ones(1, 3, {SIZE}, {SIZE}) / 2).sum()))")
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for _ in range(2)]
    outs = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err for _, err in outs]
    assert sum("for OpenVINO once" in err for _, err in outs) == 1  # one conversion, announced once
    assert len(entries(tmp_path / "home")) == 1
    results = [out.split() for out, _ in outs]
    assert results[0][:2] == results[1][:2] == ["openvino", "float32"] and results[0][2] == results[1][2]
