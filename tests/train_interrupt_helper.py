"""Run by the training tests in a subprocess: full fine-tuning of the fixture network that
interrupts itself at a chosen step, to test resuming after a real kill or Ctrl-C.

    python tests/train_interrupt_helper.py IMAGE_DIR OUT_DIR SETTINGS_JSON ACTION EPOCH STEP MARKER

When epoch ``EPOCH`` (1-based) reaches step ``STEP`` (1-based, counted after the step is done), the
helper writes ``MARKER`` and then, by ACTION:
  ``hang``     sleeps, for the test to SIGKILL it (state on disk: the last epoch's checkpoint);
  ``ctrl-c``   sends SIGINT to its whole process group, as Ctrl-C in a terminal does (the training
               loop saves a mid-epoch checkpoint and stops; the helper exits 130).
"""

import json
import os
import signal
import sys
import time

import torch

from pnasnet.training import SilentReporter, TrainingInterrupted, train


class InterruptingReporter(SilentReporter):
    def __init__(self, action: str, epoch: int, step: int, marker: str):
        self.action, self.at_epoch, self.at_step, self.marker = action, epoch, step, marker
        self.epoch = self.steps_done = 0

    def epoch_start(self, epoch, epochs, steps, done_steps=0):
        self.epoch, self.steps_done = epoch, done_steps

    def step(self, loss):
        self.steps_done += 1
        if (self.epoch, self.steps_done) != (self.at_epoch, self.at_step):
            return
        with open(self.marker, "w") as fh:
            fh.write(f"{self.epoch} {self.steps_done}\n")
        if self.action == "hang":
            while True:
                time.sleep(1)
        os.killpg(os.getpgid(0), signal.SIGINT)


def main() -> int:
    image_dir, out, settings, action, epoch, step, marker = sys.argv[1:8]
    torch.set_num_threads(1)
    try:
        train(image_dir, out, reporter=InterruptingReporter(action, int(epoch), int(step), marker),
              **json.loads(settings))
    except TrainingInterrupted:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
