"""Run by tests/test_train_distributed.py under torchrun: ``pnasnet train`` (the real command line)
with two test hooks around each optimizer step, set by environment variables:

    PNASNET_TEST_TRACE_DIR   each rank appends ``global_step sha256 batch-indices`` to
                             ``rank<R>.txt`` after every step (hash of all parameters and buffers)
    PNASNET_TEST_CRASH_STEP  rank 1 dies (``os._exit(1)``) after this global step (1-based), on
                             torchrun's first attempt only (``TORCHELASTIC_RESTART_COUNT=0``)

    python -m torch.distributed.run --nproc-per-node=2 tests/dist_train.py IMAGE_DIR --out DIR --mode full ...
"""

import hashlib
import os
import sys

import torch

import pnasnet.training.finetune as finetune
from pnasnet.cli import main

RANK = int(os.environ.get("RANK", "0"))
TRACE = os.environ.get("PNASNET_TEST_TRACE_DIR")
CRASH = int(os.environ.get("PNASNET_TEST_CRASH_STEP", "0"))
FIRST_ATTEMPT = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"

planned: list[list[int]] = []  # this rank's batches, in the order training_batches hands them out
original_batches = finetune.training_batches
original_step = finetune.FineTuner.step


def training_batches(dataset, batches, epoch, **kwargs):
    planned.extend([epoch, *b] for b in batches)
    return original_batches(dataset, batches, epoch, **kwargs)


def state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def step(self, images, labels, global_step, *args, **kwargs):
    result = original_step(self, images, labels, global_step, *args, **kwargs)
    if TRACE:
        batch = planned.pop(0)
        with open(os.path.join(TRACE, f"rank{RANK}.txt"), "a") as fh:
            fh.write(f"{global_step + 1} {state_hash(self.model)} {','.join(map(str, batch))}\n")
    if CRASH and RANK == 1 and FIRST_ATTEMPT and global_step + 1 == CRASH:
        os._exit(1)
    return result


finetune.training_batches = training_batches
finetune.FineTuner.step = step

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
