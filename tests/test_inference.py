"""The inference workflows (pnasnet.tasks): inputs, parallel decoding, classify, features and the
resumable feature files. A seeded PNASNet-5 Mobile at small image sizes keeps every model call cheap."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import pnasnet
from pnasnet.data import decode_top_k, load_images
from pnasnet.tasks import (OutputMismatchError, RunInfo, classify_paths, expand_inputs, extract_features,
                           iter_features, iter_image_batches, parameters_sha256)
from pnasnet.tasks.chunks import ChunkFolder, OutputBusyError
from pnasnet.tasks.formats import output_for
from pnasnet.tasks.rows import RowBlock

import skimage  # noqa: F401  (a test dependency: real photographs)
from inference_images import write_mixed_folder, write_photos, write_small_crops  # noqa: E402
from inference_outputs import assert_same_vectors, read_output, read_parquet  # noqa: E402

SIZE = 64  # model input side for most tests: the smallest sizes cost milliseconds per image


pytestmark = pytest.mark.usefixtures("one_model_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return pnasnet.create_model("pnasnet5_mobile")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return [str(p) for p in write_photos(tmp_path_factory.mktemp("photos"))]


def _direct_features(model, paths, size=SIZE, transform="tf_slim_eval"):
    with torch.inference_mode():
        return model.features(load_images(paths, size, transform=transform)).numpy()


# ----------------------------------------------------------------------------------- inputs
def test_expand_inputs_files_folders_globs_and_lists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ["b/2.JPG", "b/deep/3.png", "b/1.webp", "b/skip.txt", "a.jpeg", "c/x.png", "c/y.bmp"]:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes(b"")
    Path("list.txt").write_text("# images\nc/y.bmp\n\nmissing.jpg\n")
    found = expand_inputs(["b", "a.jpeg", "c/*.png", "@list.txt", "b/1.webp", "nothing/*.jpg"])
    assert found == [os.path.normpath(p) for p in
                     ["b/1.webp", "b/2.JPG", "b/deep/3.png", "a.jpeg", "c/x.png", "c/y.bmp", "missing.jpg",
                      "nothing/*.jpg"]]
    # a named file is taken whatever its extension; ** reaches any depth
    found = expand_inputs(["b/skip.txt", "**/3.png"])
    assert found == [os.path.normpath("b/skip.txt"), os.path.normpath("b/deep/3.png")]
    with pytest.raises(FileNotFoundError):
        expand_inputs(["@no_such_list.txt"])


# ----------------------------------------------------------------------------------- batches
def test_batches_keep_order_and_carry_errors(tmp_path, photos):
    bad = tmp_path / "bad.jpg"
    bad.write_text("no")
    paths = [photos[0], str(bad), photos[1], photos[2]]
    for workers in (0, 2):
        batches = list(iter_image_batches(paths, SIZE, batch_size=3, workers=workers))
        assert [b.paths for b in batches] == [paths[:3], paths[3:]]
        assert batches[0].errors[0] is None and "not an image" in batches[0].errors[1]
        assert batches[0].images.shape == (2, 3, SIZE, SIZE) and batches[1].images.shape == (1, 3, SIZE, SIZE)
        torch.testing.assert_close(batches[0].images[1], load_images([photos[1]], SIZE)[0], rtol=0, atol=0)


# ----------------------------------------------------------------------------------- classify / features
def test_features_of_photographs_match_the_model_alone_and_in_batches(model, photos):
    direct = _direct_features(model, photos)
    for batch_size, workers in ((1, 0), (4, 2)):
        results = list(iter_features(model, photos, image_size=SIZE, batch_size=batch_size, workers=workers))
        assert [r.path for r in results] == photos and all(r.error is None for r in results)
        got = np.stack([r.vector for r in results])
        assert got.shape == (len(photos), model.num_features) and got.dtype == np.float32
        assert_same_vectors(got, direct)
    alone = _direct_features(model, photos[1:2])
    assert_same_vectors(alone[0], direct[1])


def test_features_at_the_model_size_with_each_transform(model, photos):
    for name, direct_name in (("tf-slim", "tf_slim_eval"), ("resize", "resize")):
        got = np.stack([r.vector for r in iter_features(model, photos[:2], transform=name, workers=0)])
        assert got.shape == (2, 1080)
        assert_same_vectors(got, _direct_features(model, photos[:2], 224, direct_name))


@pytest.mark.parametrize("backend", ["plain", "auto"])
def test_classify_gives_decode_top_k_of_the_logits(model, photos, backend):
    results = list(classify_paths(model, photos, top_k=3, image_size=SIZE, workers=0, backend=backend))
    with torch.inference_mode():
        logits = model.classify(load_images(photos, SIZE))
    expected = decode_top_k(logits, 3)
    # plain: the same computation; auto (the exact inference form): logits within its stated 1e-4 of
    # their scale, so log-probabilities within twice that
    log_tolerance = 1e-5 if backend == "plain" else 2e-4 * float(logits.abs().max())
    assert [r.path for r in results] == photos
    for result, top in zip(results, expected):
        assert [(i, label) for i, label, _ in result.top_k] == [(i, label) for i, label, _ in top]
        np.testing.assert_allclose(np.log([p for *_, p in result.top_k]), np.log([p for *_, p in top]),
                                   rtol=0, atol=log_tolerance)
    with pytest.raises(ValueError, match="feature-vector"):
        classify_paths(pnasnet.create_model("pnasnet5_mobile_feature_vector"), photos)


def test_mixed_folder_every_good_image_processed_every_bad_one_reported(model, tmp_path):
    good, bad = write_mixed_folder(tmp_path)
    paths = expand_inputs([tmp_path])
    assert set(paths) == {str(p) for p in good + bad}  # notes.txt is not collected
    results = {r.path: r for r in classify_paths(model, paths, image_size=SIZE, batch_size=3, workers=2)}
    assert {p for p, r in results.items() if r.error is None} == {str(p) for p in good}
    assert {p for p, r in results.items() if r.error} == {str(p) for p in bad}
    assert "decompression bomb" in results[str(tmp_path / "sub" / "bomb.png")].error
    assert "truncated" in results[str(tmp_path / "truncated.jpg")].error
    # a smaller max_pixels turns the photographs into bombs too
    small = list(classify_paths(model, [str(good[0])], image_size=SIZE, workers=0, max_pixels=1000))
    assert "max_pixels=1000" in small[0].error


# ----------------------------------------------------------------------------------- feature files
@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_extract_features_writes_every_input_once_with_metadata(model, tmp_path, suffix):
    good, bad = write_mixed_folder(tmp_path / "in")
    paths = expand_inputs([tmp_path / "in"])
    out = tmp_path / "out" / f"feats{suffix}"
    summary = extract_features(model, paths, out, weights="seeded test weights", image_size=SIZE, workers=0)
    assert summary.total == len(paths) and summary.written == len(good)
    assert sorted(p for p, _ in summary.failed) == sorted(map(str, bad))
    rows, meta = read_output(out)
    assert set(rows) == set(paths)
    direct = _direct_features(model, [str(p) for p in good])
    for path, vector in zip(good, direct):
        assert_same_vectors(rows[str(path)][0], vector)
    assert all(rows[str(p)][0] is None and rows[str(p)][1] for p in bad)
    assert meta == {"model": "pnasnet5_mobile", "weights": "seeded test weights", "transform": "tf-slim",
                    "image_size": SIZE, "num_features": 1080, "parameters_sha256": parameters_sha256(model),
                    "pnasnet_version": pnasnet.__version__, "precision": "float32",
                    "backend": "eager float32",  # what backend "auto" ran (OpenVINO off in the tests: conftest)
                    "bounded_activation": False}
    assert not (tmp_path / "out" / f"feats{suffix}.partial").exists()
    assert sorted(os.listdir(tmp_path / "out")) == sorted(f.name for f in summary.files)


class _StopAfter:
    """A progress reporter that interrupts the run after ``batches`` batches, like Ctrl-C."""

    def __init__(self, batches: int):
        self.left = batches

    def start(self, total, done=0):
        self.started = (total, done)

    def advance(self, paths, errors):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt

    def close(self):
        pass


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_interrupted_run_resumes_and_ends_with_each_image_once(model, tmp_path, suffix):
    paths = [str(p) for p in write_small_crops(tmp_path / "in", 12)]
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    paths.insert(5, str(tmp_path / "in" / "broken.jpg"))
    out = tmp_path / f"f{suffix}"
    options = dict(image_size=SIZE, batch_size=2, workers=0, chunk_size=4)
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, paths, out, progress=_StopAfter(3), **options)
    assert not out.exists() and len(list(Path(f"{out}.partial").glob("chunk-*.npz"))) == 2  # 4 rows + 2 saved on Ctrl-C
    progress = _StopAfter(-1)
    summary = extract_features(model, paths, out, progress=progress, **options)
    # 6 rows were saved; the unreadable one among them is tried again
    assert progress.started == (len(paths), 5) and summary.computed == len(paths) - 5
    rows, _ = read_output(out)
    reference = extract_features(model, paths, tmp_path / f"ref{suffix}", **options)
    ref_rows, _ = read_output(tmp_path / f"ref{suffix}")
    assert list(rows) == list(ref_rows) == paths  # in input order, each once
    for path in paths:
        if ref_rows[path][0] is None:
            assert rows[path][0] is None and rows[path][1] == ref_rows[path][1]
        else:
            assert_same_vectors(rows[path][0], ref_rows[path][0])  # batches differ after a resume
    assert reference.failed == summary.failed == [(paths[5], rows[paths[5]][1])]


def test_rerun_reuses_the_output_retries_failures_and_follows_the_inputs(model, tmp_path):
    paths = [str(p) for p in write_small_crops(tmp_path / "in", 4)]
    out = tmp_path / "f.parquet"
    late = tmp_path / "in" / "late.jpg"
    late.write_bytes(b"")  # unreadable now, fixed before the re-run
    first = extract_features(model, paths + [str(late)], out, image_size=SIZE, workers=0)
    assert first.failed and first.failed[0][0] == str(late)
    late.write_bytes(Path(paths[0]).read_bytes())
    second = extract_features(model, paths[1:] + [str(late)], out, image_size=SIZE, workers=0)
    assert second.computed == 1 and not second.failed
    rows, _ = read_parquet(out)
    assert list(rows) == paths[1:] + [str(late)]  # paths[0] is no longer an input: dropped
    assert_same_vectors(rows[str(late)][0], _direct_features(model, [paths[0]])[0])


def test_refuses_to_mix_runs_unless_overwrite(model, tmp_path, photos):
    out = tmp_path / "f.npy"
    extract_features(model, photos[:1], out, weights="A", image_size=SIZE, workers=0)
    for change in (dict(image_size=SIZE + 8), dict(transform="resize")):
        with pytest.raises(OutputMismatchError, match="made by another run"):
            extract_features(model, photos[:1], out, **{"image_size": SIZE, "workers": 0, **change})
    torch.manual_seed(1)
    other = pnasnet.create_model("pnasnet5_mobile")
    with pytest.raises(OutputMismatchError, match="weights"):
        extract_features(other, photos[:1], out, weights="B", image_size=SIZE, workers=0)
    assert not Path(f"{out}.partial").exists()  # a refused run leaves nothing behind
    extract_features(other, photos[:2], out, weights="B", image_size=SIZE, workers=0, overwrite=True)
    rows, meta = read_output(out)
    assert meta["weights"] == "B" and len(rows) == 2


@pytest.mark.cpu_dependent
def test_features_on_each_back_end_and_precision_stay_apart(model, tmp_path, photos):
    from pnasnet.inference import PrecisionUnavailableError, available_backends, cpu_support

    plain = _direct_features(model, photos)
    graph = [b for b in ("onnxruntime", "openvino") if available_backends()[b] is None]  # the extras
    for backend in ["plain", "eager"] + graph:
        got = np.stack([f.vector for f in iter_features(model, photos, image_size=SIZE, workers=0, backend=backend)])
        # the float32 back ends compute the plain model's function (stated tolerance 1e-4 of scale)
        assert np.abs(got - plain).max() <= 1e-4 * np.abs(plain).max(), backend
    out = tmp_path / "f.parquet"
    # A reduced precision this CPU class computes: bfloat16 where oneDNN has it, else int8 (which
    # runs everywhere; the test install has its extra). Without bf16 the option is refused first,
    # before an output exists.
    reduced, options = "bfloat16", {"backend": "eager"}
    if not cpu_support().bf16_runs:
        with pytest.raises(PrecisionUnavailableError, match="bfloat16 needs a CPU with"):
            extract_features(model, photos[:2], out, image_size=SIZE, workers=0, backend="eager",
                             precision="bfloat16")
        assert not out.exists() and not Path(f"{out}.partial").exists()
        for package in ("openvino", "nncf", "onnxscript"):  # int8 is the reduced precision left here
            pytest.importorskip(package)
        calibration = load_images(photos, SIZE)
        reduced, options = "int8", {"backend": "openvino", "calibration": calibration}
    extract_features(model, photos[:2], out, image_size=SIZE, workers=0, precision=reduced, **options)
    rows, meta = read_output(out)
    assert meta["precision"] == reduced
    low = np.stack([rows[p][0] for p in photos[:2]])
    bound = 0.1 if reduced == "bfloat16" else 0.3  # of the vectors' scale: rounded, not another function
    assert 0 < np.abs(low - plain[:2]).max() <= bound * np.abs(plain).max()
    # reduced-precision and float32 vectors are never mixed in one output; another float32 back end may resume
    with pytest.raises(OutputMismatchError, match="precision"):
        extract_features(model, photos, out, image_size=SIZE, workers=0)
    float_out = tmp_path / "g.parquet"
    extract_features(model, photos[:1], float_out, image_size=SIZE, workers=0, backend="plain")
    summary = extract_features(model, photos, float_out, image_size=SIZE, workers=0, backend="eager")
    assert summary.computed == len(photos) - 1
    with pytest.raises(ValueError, match="float32 only"):
        extract_features(model, photos, tmp_path / "h.npy", image_size=SIZE, backend="plain", precision="bfloat16")
    with pytest.raises(ValueError, match="unknown backend"):
        list(iter_features(model, photos, image_size=SIZE, backend="tpu"))
    from pnasnet.inference import optimize

    with pytest.raises(TypeError, match="not an optimized one"):
        extract_features(optimize(model), photos, tmp_path / "h.npy", image_size=SIZE)


def test_in_place_turns_the_model_itself_into_the_inference_form(photos):
    torch.manual_seed(0)
    own = pnasnet.create_model("pnasnet5_mobile")
    expected = _direct_features(own, photos)
    got = np.stack([f.vector for f in iter_features(own, photos, image_size=SIZE, workers=0, in_place=True)])
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert getattr(own, "is_folded", False)
    with pytest.raises(RuntimeError, match="cannot train"):
        own.train()


def test_run_metadata_written_before_precision_existed_reads_as_float32():
    old = _info().to_json().replace(', "precision": "float32"', "")
    assert "precision" not in old
    assert RunInfo.from_json(old).precision == "float32"


def test_unfinished_chunks_of_another_run_are_refused(model, tmp_path, photos):
    out = tmp_path / "f.parquet"
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, photos, out, image_size=SIZE, batch_size=1, workers=0, chunk_size=1,
                         progress=_StopAfter(1))
    with pytest.raises(OutputMismatchError, match="unfinished run"):
        extract_features(model, photos, out, image_size=SIZE + 8, workers=0)


def _info(**change) -> RunInfo:
    fields = dict(model="m", weights="w", parameters_sha256="0" * 64, transform="tf-slim", image_size=64,
                  num_features=2, pnasnet_version="0")
    return RunInfo(**{**fields, **change})


def test_chunk_folder_discards_partial_writes_and_locks(tmp_path):
    folder_path = tmp_path / "x.partial"
    with ChunkFolder.open(folder_path) as folder:
        folder.claim(_info())
        folder.write_chunk(RowBlock(["a", "b"], [None, "bad"], np.ones((1, 2), np.float32)))
        with pytest.raises(OutputBusyError):
            ChunkFolder.open(folder_path)
        (folder_path / "chunk-000001.npz.tmp").write_bytes(b"half a chunk")  # as a kill leaves it
    with ChunkFolder.open(folder_path) as folder:
        folder.claim(_info())
        assert [c.name for c in folder.chunks()] == ["chunk-000000.npz"]
        assert not list(folder_path.glob("*.tmp"))
        block = folder.read_chunk(folder.chunks()[0])
        assert block.paths == ["a", "b"] and block.errors == [None, "bad"] and block.features.shape == (1, 2)


def test_an_interrupted_publish_is_completed_by_the_next_run(model, tmp_path, photos):
    out = tmp_path / "f.npy"
    output = output_for(out)
    info = _info(num_features=2)
    with ChunkFolder.open(output.work_dir) as folder:
        folder.claim(info)
        staging = folder.staging_dir()
        output.write(staging, info, [RowBlock(["a"], [None], np.ones((1, 2), np.float32))], 1)
        folder.publish(output.files)
    # replay a publish killed after its commit point, with only the first file moved
    with ChunkFolder.open(output.work_dir) as folder:
        folder.claim(info)
        staging = folder.staging_dir()
        output.write(staging, info, [RowBlock(["a", "b"], [None, None], np.full((2, 2), 7, np.float32))], 2)
        real_replace = os.replace
        moved = []

        def replace_once(src, dst):
            if str(dst) in map(str, output.files.values()):
                if moved:
                    raise KeyboardInterrupt
                moved.append(dst)
            real_replace(src, dst)

        try:
            os.replace = replace_once
            with pytest.raises(KeyboardInterrupt):
                folder.publish(output.files)
        finally:
            os.replace = real_replace
    assert len(moved) == 1 and (output.work_dir / "staged").is_dir()
    with ChunkFolder.open(output.work_dir):
        pass  # reopening finishes the publish
    rows, _ = read_output(out)
    assert list(rows) == ["a", "b"] and rows["b"][0].tolist() == [7, 7]
    assert not output.work_dir.exists() or not (output.work_dir / "staged").exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX file names are bytes")
def test_a_file_name_that_is_not_utf8_is_written_escaped(model, tmp_path, photos):
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: Python keeps them as a lone surrogate
    try:
        (folder / name).write_bytes(Path(photos[0]).read_bytes())
    except (UnicodeEncodeError, OSError):
        pytest.skip("this file system refuses non-UTF-8 names")
    paths = expand_inputs([folder])
    assert paths == [str(folder / name)]
    extract_features(model, paths, tmp_path / "f.parquet", image_size=SIZE, workers=0)
    rows, _ = read_parquet(tmp_path / "f.parquet")
    assert list(rows) == [str(folder) + os.sep + "caf\\xe9.jpg"] and rows[list(rows)[0]][1] is None
