"""Run by tests/test_train_distributed.py under torchrun with 2 processes: ``SyncBatchNorm2d`` on
each process's half of a batch gives the output, gradients and moving statistics of one
``BatchNorm2d`` on the whole batch. Exits 0 when it does, 1 (with the differences) otherwise."""

import sys

import torch
import torch.distributed as dist
from torch import nn

from pnasnet.training.distributed import SyncBatchNorm2d, convert_sync_batch_norm


def main() -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # same data on every rank
    x = torch.randn(6, 4, 5, 5) * 3 + 2
    r = torch.randn(6, 4, 5, 5)
    reference = nn.BatchNorm2d(4, eps=1e-3, momentum=0.1)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-1, 1)
    holder = nn.Sequential(nn.BatchNorm2d(4, eps=1e-3, momentum=0.1))
    holder.load_state_dict({"0." + k: v for k, v in reference.state_dict().items()})
    assert convert_sync_batch_norm(holder) == 1 and isinstance(holder[0], SyncBatchNorm2d)
    sync = holder[0]

    x_all = x.clone().requires_grad_(True)
    (reference(x_all) * r).sum().backward()
    x_mine = x[rank::world].clone().requires_grad_(True)
    y_mine = sync(x_mine)
    (y_mine * r[rank::world]).sum().backward()
    for p in (sync.weight, sync.bias):
        dist.all_reduce(p.grad)  # the total loss is the sum of the processes' losses

    problems = []
    def check(name, got, want):
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            problems.append(f"{name}: max difference {float((got - want).abs().max()):.3g}")
    with torch.no_grad():  # batch statistics of the whole batch

        ref_out = nn.functional.batch_norm(x, None, None, reference.weight, reference.bias, True, 0.0, 1e-3)
    check("output", y_mine, ref_out[rank::world])
    check("input gradient", x_mine.grad, x_all.grad[rank::world])
    check("weight gradient", sync.weight.grad, reference.weight.grad)
    check("bias gradient", sync.bias.grad, reference.bias.grad)
    check("running mean", sync.running_mean, reference.running_mean)
    check("running var", sync.running_var, reference.running_var)
    dist.barrier()
    dist.destroy_process_group()
    if problems:
        print(f"rank {rank}: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
