"""Full fine-tuning under torchrun: 2 CPU processes (gloo) run the real ``pnasnet train`` command
line (through ``tests/dist_train.py``, which records a hash of every rank's weights after every
step and can kill rank 1 once) on a tiny image set with the fixture network at 48 px, keeping the
best epoch and logging to TensorBoard (rank 0 alone)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tensorboard_events import assert_tensorboard_equals_metrics
from train_images import make_texture_folder

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("this PyTorch build has no torch.distributed with gloo", allow_module_level=True)

from pnasnet.training import TrainOptions, train  # noqa: E402
from pnasnet.training.checkpoint import CHECKPOINT_FILE  # noqa: E402
from pnasnet.training.distributed import shard  # noqa: E402
from pnasnet.training.finetune import _check_shares  # noqa: E402
from pnasnet.training.loader import epoch_batches  # noqa: E402

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "tf_slim" / "mobile_tiny" / "model.ckpt"
TRAIN_IMAGES, BATCH, EPOCHS = 9, 4, 2   # 12 images, 3 held out: 2 steps of 2 + 2 images per epoch
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _torchrun(script: str, args: list[str], *, env: dict | None = None, restarts: int = 0,
              timeout: float = 150) -> tuple[int, str]:
    """``python -m torch.distributed.run --nproc-per-node=2`` in its own session; the whole
    session is killed afterwards, whatever happened."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               f"--max-restarts={restarts}", str(HERE / script), *args]
    environment = os.environ | {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1",
                                "PYTHONWARNINGS": "ignore"} | (env or {})
    proc = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"torchrun did not finish in {timeout} s:\n{output[-4000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # any worker left behind
        except ProcessLookupError:
            pass
    return proc.returncode, output


def _train_args(images: Path, out: Path) -> list[str]:
    return ["train", str(images), "--out", str(out), "--mode", "full", "--model", "auto", "--weights", str(FIXTURE),
            "--image-size", "48", "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--validation-fraction",
            "0.25", "--learning-rate", "0.02", "--workers", "0", "--sync-batch-norm", "--freeze-batch-norm", "off",
            "--keep", "best", "-q"] + (  # the train extra: curves checked below where it is installed
        ["--tensorboard", str(out.parent / "tensorboard")] if importlib.util.find_spec("tensorboard") else [])


def _trace(folder: Path, rank: int) -> dict[int, tuple[str, int, list[int]]]:
    """step -> (hash of the weights after it, epoch, this rank's image indices); a step run again
    after a restart keeps its last record."""
    steps = {}
    for line in (folder / f"rank{rank}.txt").read_text().splitlines():
        step, digest, batch = line.split()
        epoch, *indices = map(int, batch.split(","))
        steps[int(step)] = (digest, epoch, indices)
    return steps


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_texture_folder(tmp_path_factory.mktemp("dist") / "images", grid=2, tile_size=64)


@pytest.fixture(scope="module")
def uninterrupted(images, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    trace = root / "trace"
    trace.mkdir()
    rc, output = _torchrun("dist_train.py", _train_args(images, root / "model"),
                           env={"PNASNET_TEST_TRACE_DIR": str(trace)})
    assert rc == 0, output[-4000:]
    return root / "model", trace, output


def test_both_ranks_hold_the_same_weights_after_every_step(uninterrupted):
    out, trace, output = uninterrupted
    ranks = [_trace(trace, 0), _trace(trace, 1)]
    steps = EPOCHS * (TRAIN_IMAGES // BATCH)
    assert sorted(ranks[0]) == sorted(ranks[1]) == list(range(1, steps + 1))
    hashes = [ranks[0][s][0] for s in ranks[0]]
    assert len(set(hashes)) == steps  # the weights changed at every step ...
    for step in ranks[0]:             # ... identically on both ranks (parameters and BN statistics)
        assert ranks[0][step][0] == ranks[1][step][0], f"ranks differ after step {step}"
    # each rank saw its half of the reproducible global batch, as one process would have seen it
    for step in ranks[0]:
        epoch = ranks[0][step][1]
        batch = epoch_batches(TRAIN_IMAGES, BATCH, 0, epoch)[(step - 1) % (TRAIN_IMAGES // BATCH)]
        assert ranks[0][step][2] == shard(batch, 0, 2) and ranks[1][step][2] == shard(batch, 1, 2)
        assert ranks[0][step][1] == ranks[1][step][1]
    # rank 0 alone logged and wrote the model directory
    assert output.count("pnasnet: wrote ") == 1 and output.count("epoch 1/2") == 1
    assert "2 processes (gloo)" in output and "batch norm synchronised" in output
    assert (out / "model.safetensors").exists() and not (out / CHECKPOINT_FILE).exists()
    if importlib.util.find_spec("tensorboard") is not None:  # one writer (rank 0) per run, the values of metrics.json
        logs = out.parent / "tensorboard"
        assert [len(list((logs / run).iterdir())) for run in ("train", "validation", "train_steps")] == [1, 1, 1]
        assert_tensorboard_equals_metrics(logs, json.loads((out / "metrics.json").read_text()), steps)


def test_crash_in_epoch_2_resumes_and_ends_with_the_uninterrupted_weights(images, uninterrupted, tmp_path):
    ref_out, ref_trace, _ = uninterrupted
    trace = tmp_path / "trace"
    trace.mkdir()
    crash_after = TRAIN_IMAGES // BATCH + 1  # the first step of the second epoch
    rc, output = _torchrun("dist_train.py", _train_args(images, tmp_path / "model"), restarts=1,
                           env={"PNASNET_TEST_TRACE_DIR": str(trace), "PNASNET_TEST_CRASH_STEP": str(crash_after)})
    assert rc == 0, output[-4000:]
    assert "restart 1 of at most 1" in output
    assert "resuming from" in output and "the start of epoch 2 of 2" in output
    reference = _trace(ref_trace, 0)
    for rank in (0, 1):
        steps = _trace(trace, rank)
        assert {s: v[0] for s, v in steps.items()} == {s: v[0] for s, v in reference.items()}
    a, b = load_file(ref_out / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert not (tmp_path / "model" / CHECKPOINT_FILE).exists()
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["kept"]["keep"] == "best" and metrics["final"]["accuracy"] == pytest.approx(
        metrics["epochs"][metrics["kept"]["epoch"] - 1]["val_accuracy"])
    if importlib.util.find_spec("tensorboard") is not None:  # the restart continued the same curves
        assert_tensorboard_equals_metrics(tmp_path / "tensorboard", metrics, len(reference))


def test_sync_batch_norm_equals_one_batch_norm_over_the_whole_batch():
    rc, output = _torchrun("dist_sync_bn.py", [], timeout=90)
    assert rc == 0, output[-4000:]


def test_batches_too_small_to_share_and_head_mode_are_refused(images, tmp_path, monkeypatch):
    class Two:
        world_size = 2

    with pytest.raises(ValueError, match="2 processes need a batch of at least 4 images"):
        _check_shares(9, TrainOptions(mode="full", batch_size=3, accumulation_steps=2), Two())
    _check_shares(9, TrainOptions(mode="full", batch_size=4, accumulation_steps=2), Two())
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="only --mode full runs in several processes"):
        train(images, tmp_path / "model", model="auto", weights=str(FIXTURE), mode="head")
