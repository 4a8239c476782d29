"""``--engine ray``: batch inference on Ray Data (a local Ray with 2 CPUs, started once for the module).

Same rows, vectors, errors and metadata as the single-process command; a job killed half way
resumes to every input exactly once; an actor killed in the middle of a batch is replaced and the
batch retried without duplicates. Skipped only when Ray Data is not installed."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import threading
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs Ray Data: pip install 'pnasnet[ray]'")
pytest.importorskip("ray.data", reason="the Ray engine needs Ray Data: pip install 'pnasnet[ray]'")

import pyarrow.parquet as pq  # noqa: E402

import pnasnet  # noqa: E402
from pnasnet.cli import main  # noqa: E402
from pnasnet.engines import ParquetFolderOutput, expand_sources, extract_features_ray, open_features  # noqa: E402
from pnasnet.engines.parquet_folder import part_table  # noqa: E402
from pnasnet.engines.ray_data import PoolSize, _plan  # noqa: E402
from pnasnet.tasks import RunInfo, expand_inputs, extract_features  # noqa: E402

from inference_images import write_mixed_folder, write_small_crops  # noqa: E402
from inference_outputs import assert_same_vectors, read_parquet  # noqa: E402
from ray_helpers import parts, slow_copy, wait_for  # noqa: E402

TESTS = Path(__file__).resolve().parent
WEIGHTS = str(TESTS / "fixtures" / "tf_slim" / "mobile_tiny" / "model.ckpt")  # 200-d features, 11 classes
MODEL = ["--model", "auto", "--weights", WEIGHTS, "--image-size", "64", "--batch-size", "4"]
HANG_GUARD_S = 600  # a Ray deadlock shows up as a hang, not an error: end the run instead of CI's budget

pytestmark = pytest.mark.usefixtures("one_model_thread")


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    """One local Ray (2 CPUs) for the module; its workers find ``ray_helpers`` on PYTHONPATH."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), saved]))
    faulthandler.dump_traceback_later(HANG_GUARD_S, exit=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        faulthandler.cancel_dump_traceback_later()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """12 good images (photographs, a PNG named .jpg, a grey PNG, 8 small crops) and 5 broken files."""
    folder = tmp_path_factory.mktemp("ray_photos")
    good, bad = write_mixed_folder(folder)
    write_small_crops(folder / "crops", 8)
    return folder


@pytest.fixture(scope="module")
def model():
    return pnasnet.create_model("auto", weights=WEIGHTS)


@pytest.fixture(scope="module")
def reference(photos, model, tmp_path_factory):
    """The single-process output for the folder: ``({path: (vector, error)}, metadata)``."""
    out = tmp_path_factory.mktemp("ray_reference") / "local.parquet"
    extract_features(model, expand_inputs([photos]), out, model_name="auto", weights=WEIGHTS, image_size=64,
                     batch_size=4, workers=0)
    return read_parquet(out)


AUTO_ON_RAY = "auto float32 (chosen by each actor)"


def _same_run(meta, want_meta, backend=(AUTO_ON_RAY,)):
    """The same run identity and metadata; the back end alone differs: the single-process run
    records what it ran ("eager float32"), the Ray driver what it asked each actor for. Each part
    carries the run that wrote it, and a folder read as one table shows one part's: with parts of
    two runs, ``backend`` lists both."""
    assert meta["backend"] in backend
    assert {k: v for k, v in meta.items() if k != "backend"} == {k: v for k, v in want_meta.items() if k != "backend"}


def _assert_same_rows(actual, expected, backend=(AUTO_ON_RAY,)):
    rows, meta = actual
    want_rows, want_meta = expected
    assert sorted(rows) == sorted(want_rows)  # read_parquet fails on a repeated path: exactly once
    _same_run(meta, want_meta, backend)
    for path, (vector, error) in want_rows.items():
        assert rows[path][1] == error, path
        if error is None:
            assert_same_vectors(rows[path][0], vector)
        else:
            assert rows[path][0] is None


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- same results as local
def test_features_cli_agrees_with_single_process(photos, reference, tmp_path, capsys):
    """A fixed pool of 2 actors on 2 CPUs: the per-actor CPU request is scaled down so decoding
    still gets a CPU (a pool holding both CPUs would hang)."""
    dest = tmp_path / "feats"
    code, out, err = _run(capsys, "features", photos, "--out", dest, *MODEL, "--chunk-size", "5",
                          "--engine", "ray", "--concurrency", "2:2")
    assert code == 1 and out == ""
    for name in ("empty.jpg", "truncated.jpg", "text_named.png", "noise.webp", "bomb.png"):
        assert f"cannot read {photos}" in err and name in err
    assert "12 of 17 vectors" in err and "5 of 17 inputs could not be read" in err
    _assert_same_rows(read_parquet(dest), reference)  # pyarrow reads the folder as one table

    # one reader for every form: the folder reads back like the single-file output
    folder = open_features(dest)
    _same_run(asdict(folder.read_info()), reference[1])
    blocks = list(folder.iter_blocks())
    assert sum(len(b) for b in blocks) == 17 and sum(b.num_ok for b in blocks) == 12
    assert all(b.features.shape[1] == 200 for b in blocks)
    schema = pq.read_schema(parts(dest)[0])
    assert str(schema.field("features").type) == "fixed_size_list<element: float>[200]"


def test_classify_cli_agrees_with_single_process(photos, capsys):
    code, local, _ = _run(capsys, "classify", photos, *MODEL, "--json", "--top-k", "3", "--workers", "0", "-q")
    code_ray, out, err = _run(capsys, "classify", photos, *MODEL, "--json", "--top-k", "3", "--engine", "ray", "-q")
    assert code == code_ray == 1 and "5 of 17 inputs could not be read" in err
    want, got = [json.loads(line) for line in local.splitlines()], [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in got] == [r["path"] for r in want]  # input order, one line each
    for g, w in zip(got, want):
        assert g["error"] == w["error"]
        assert [c["index"] for c in g["top_k"]] == [c["index"] for c in w["top_k"]]
        assert [c["label"] for c in g["top_k"]] == [c["label"] for c in w["top_k"]]
        np.testing.assert_allclose([c["probability"] for c in g["top_k"]],
                                   [c["probability"] for c in w["top_k"]], rtol=1e-5, atol=1e-7)


def test_uri_sources_and_destination(photos, model, reference, tmp_path):
    """file:// URIs go through the pyarrow filesystem code that reads s3:// on a cluster."""
    source = f"file://{photos}"
    paths = expand_sources([source])
    assert [p[len("file://"):] for p in paths] == expand_inputs([photos])
    for pattern in ("**/*.png", "*.jpg", "crops/crop_00[0-3].jpg"):
        assert expand_sources([f"{source}/{pattern}"]) == [f"file://{p}" for p in expand_inputs([f"{photos}/{pattern}"])]
    summary = extract_features_ray(model, paths, f"file://{tmp_path}/feats", model_name="auto", weights=WEIGHTS,
                                   image_size=64, batch_size=4, quiet=True)
    assert summary.total == 17 and len(summary.failed) == 5 and summary.computed == 17
    rows, meta = read_parquet(tmp_path / "feats")
    _same_run(meta, reference[1])
    want = {f"file://{p}": row for p, row in reference[0].items()}
    _assert_same_rows((rows, meta), (want, reference[1]))


# --------------------------------------------------------------------------- faults
def test_job_killed_half_way_resumes_to_every_input_once(photos, reference, tmp_path, ray_cluster, capsys):
    """SIGKILL the driver process in the middle of the job, then run the command again."""
    dest = tmp_path / "feats"
    driver = subprocess.Popen([sys.executable, str(TESTS / "ray_driver.py"), ray_cluster, WEIGHTS, str(photos),
                               str(dest), "0.5"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              start_new_session=True, text=True)
    try:
        wait_for(lambda: parts(dest), 120, "the first part")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and anything it started
        driver.wait(30)
    assert "finished" not in driver.stdout.read()
    written = sum(pq.read_metadata(p).num_rows for p in parts(dest))
    assert 0 < written < 17, written

    code, _, err = _run(capsys, "features", photos, "--out", dest, *MODEL, "--engine", "ray")
    assert code == 1 and "from an earlier run" in err
    _assert_same_rows(read_parquet(dest), reference, backend=("plain float32", AUTO_ON_RAY))  # killed + resumed
    assert not list(dest.glob(".part-*"))  # no half-written part left behind


def test_killed_actor_is_replaced_and_its_batch_retried(photos, model, reference, tmp_path):
    """SIGKILL the model actor while it is inside its third batch: Ray starts another actor and
    reruns that batch and the rest."""
    dest, pids = tmp_path / "feats", tmp_path / "pids"
    pids.mkdir()
    slow = slow_copy(model, delay=0.4, pid_dir=pids)
    result: dict = {}

    def run():
        try:
            result["summary"] = extract_features_ray(
                slow, expand_inputs([photos]), dest, model_name="auto", weights=WEIGHTS, image_size=64,
                batch_size=2, chunk_size=2, concurrency=1, quiet=True,
                backend="plain")  # the slowed-down model itself, not its inference form
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            result["error"] = error

    job = threading.Thread(target=run)
    job.start()
    try:
        third = wait_for(lambda: [p for p in pids.iterdir() if p.suffix == ".3"], 120, "a third batch")
        victim = int(third[0].stem)
        os.kill(victim, signal.SIGKILL)
    finally:
        job.join(240)
    assert not job.is_alive(), "the job did not finish after its actor was killed"
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert summary.total == 17 and len(summary.failed) == 5
    assert {p.stem for p in pids.iterdir()} - {str(victim)}  # a new actor took over
    _assert_same_rows(read_parquet(dest), reference, backend=("plain float32",))


# --------------------------------------------------------------------------- pieces
def test_pool_never_takes_the_decoders_cpu():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = _plan(ray, PoolSize(2, 2), 1.0, 0.0, None, None)
    assert plan.cpus_per_actor == pytest.approx(0.5) and plan.threads == 1 and plan.device == "cpu"
    assert any("no CPU for decoding" in str(w.message) for w in caught)
    default = _plan(ray, None, 1.0, None, None, None)
    assert default.pool == PoolSize(1, 1) and default.gpus_per_actor == 0  # 2 CPUs: 1 actor, 1 decoding
    assert PoolSize.parse("3") == PoolSize(1, 3) and PoolSize.parse("2:4") == PoolSize(2, 4)
    with pytest.raises(ValueError, match="MIN:MAX"):
        PoolSize.parse("many")
    with pytest.raises(ValueError, match="GPU"):
        _plan(ray, None, 1.0, 1.0, None, None)
    with pytest.raises(ValueError, match="--gpus-per-actor"):
        _plan(ray, None, 1.0, None, None, "cuda")


def test_folder_reader_keeps_one_row_per_path(tmp_path):
    """A retried batch can leave a path in two parts until the job ends: readers keep one row (a
    vector over an error), and deduplicate() leaves exactly one on disk."""
    info = RunInfo("m", "w", "0" * 64, "tf-slim", 64, 3, "0")
    folder = ParquetFolderOutput(tmp_path / "feats")
    folder.open_for_run(info)
    try:
        v = np.arange(9, dtype=np.float32).reshape(3, 3)
        folder.write_part(part_table(info, ["a", "b"], [None, "broken"], v[:2]))
        folder.write_part(part_table(info, ["b", "c", "a"], [None, None, None], v))
        assert {p: r.error for p, r in folder.latest_rows().items()} == {"a": None, "b": None, "c": None}
        rows = {p: f for b in folder.iter_blocks() for p, f in zip(b.paths, b.features)}
        assert sorted(rows) == ["a", "b", "c"]
        folder.deduplicate()
        assert sum(pq.read_metadata(p).num_rows for p in parts(tmp_path / "feats")) == 3
        table = pq.read_table(tmp_path / "feats")
        assert sorted(table.column("path").to_pylist()) == ["a", "b", "c"]
        assert table.column("error").null_count == 3
    finally:
        folder.close()
    with pytest.raises(ValueError, match="another run"):
        other = ParquetFolderOutput(tmp_path / "feats")
        other.open_for_run(RunInfo("m", "w", "1" * 64, "tf-slim", 64, 3, "0"))


def test_ray_is_optional(photos, tmp_path, capsys, monkeypatch):
    """The package and the local engine never import Ray; --engine ray without it says what to install."""
    check = "import sys, pnasnet, pnasnet.cli, pnasnet.engines, pnasnet.engines.ray_data; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    code, out, err = _run(capsys, "features", photos, "--out", tmp_path / "feats", *MODEL, "--engine", "ray")
    assert code == 2 and "pip install 'pnasnet[ray]'" in err and not (tmp_path / "feats").exists()
