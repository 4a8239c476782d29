"""Full fine-tuning in several processes under ``torchrun`` (DistributedDataParallel).

    torchrun --nproc-per-node=N -m pnasnet train IMAGE_DIR --out MODEL_DIR --mode full [--sync-batch-norm]

:func:`from_environment` reads torchrun's variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``);
without them, or with ``WORLD_SIZE=1``, training runs in one process exactly as before. With
several processes:

- backend: NCCL with one GPU per process (``cuda:LOCAL_RANK``) when CUDA is there and not
  ``--device cpu``; gloo on the CPU otherwise.
- data: every process computes the same reproducible epoch order (:func:`~.loader.epoch_batches`,
  ``--batch-size`` is the *global* batch) and takes its share of each batch
  (:func:`shard`: ``batch[rank::world_size]``), as ``DistributedSampler`` with ``set_epoch`` would.
  Image ``i`` of epoch ``e`` is augmented the same whichever process decodes it.
- gradients: DDP averages them; each process weights its loss by its share of the global batch,
  so a step is the mean over the global batch even when the shares differ by one image.
- batch norm: each process normalises with its own share's statistics unless ``--sync-batch-norm``
  (:class:`SyncBatchNorm2d`: statistics over the global micro-batch; works on gloo/CPU too, which
  PyTorch's ``nn.SyncBatchNorm`` does not). Moving statistics are rank 0's (DDP broadcasts
  buffers before every forward pass).
- outputs: rank 0 alone holds the model-directory lock, writes checkpoints (with every rank's
  RNG state), logs, evaluates and writes ``MODEL_DIR``; the others wait at a barrier.
- restarts: after an elastic restart (``torchrun --max-restarts=K``) every process resumes from
  the last checkpoint. Launch with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (torch 2.13 otherwise
  hands restarted workers a store with the dead workers' addresses: restarts failed or hung 5 of 6
  times here); the run ends with a barrier before ``destroy_process_group()`` (without it a
  process sometimes aborted at exit after finishing).
"""

from __future__ import annotations

import datetime
import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch import nn

__all__ = ["DistContext", "SyncBatchNorm2d", "convert_sync_batch_norm", "from_environment", "shard"]

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 1800  # rank 0 evaluates and writes MODEL_DIR while the others wait


def world_size_from_environment() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@dataclass
class DistContext:
    """This process's place in a started process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    owns_group: bool = True  # started here (and destroyed by shutdown), not by the caller

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ----------------------------------------------------------------------------- collectives
    def barrier(self) -> None:
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def all_sum(self, values: Sequence[float]) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def all_gather_object(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its result to every rank; if it raised, every rank
        raises the same error (rather than the others waiting for rank 0 until the timeout)."""
        outcome: tuple[bool, Any] = (True, None)
        if self.is_main:
            try:
                outcome = (True, fn())
            except Exception as error:  # noqa: BLE001 - re-raised below, on every rank
                outcome = (False, error)
        ok, value = self.broadcast_object(_picklable(outcome) if self.is_main else None)
        if not ok:
            raise value
        return value

    def shutdown(self, *, clean: bool) -> None:
        """End of the run. ``clean``: every rank got here; a barrier first, so that no process
        tears the group down while another still uses it."""
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        if clean:
            self.barrier()
        if self.owns_group:
            dist.destroy_process_group()


def _picklable(outcome: tuple[bool, Any]) -> tuple[bool, Any]:
    ok, value = outcome
    try:
        pickle.dumps(value)
        return outcome
    except Exception:  # noqa: BLE001
        return ok, RuntimeError(f"rank 0: {type(value).__name__}: {value}") if not ok else None


def from_environment(requested_device: str | None = None) -> DistContext | None:
    """Start the process group torchrun describes (None when not under torchrun, or alone)."""
    world_size = world_size_from_environment()
    if world_size <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = torch.device(requested_device) if requested_device else None
    use_cuda = torch.cuda.is_available() and (wanted is None or wanted.type == "cuda")
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu") if wanted is None else wanted
        backend = "gloo"
    timeout = datetime.timedelta(seconds=float(os.environ.get("PNASNET_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    owns_group = not dist.is_initialized()
    if owns_group:
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       backend=backend, device=device, owns_group=owns_group)


def restart_count() -> int:
    """How many times torchrun has restarted the workers of this run (0 on the first attempt)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def restart_notes() -> list[str]:
    """Advice on the launch, for rank 0 to print."""
    notes = []
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
    if restarts > 0 and os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") != "1":
        notes.append("elastic restarts are unreliable with torch's shared rendezvous store: launch with "
                     "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun ...")
    attempt = restart_count()
    if attempt:
        notes.append(f"restart {attempt} of at most {restarts}")
    return notes


def shard(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This rank's images of a global batch: every ``world_size``-th, from position ``rank``."""
    return list(batch[rank::world_size])


# --------------------------------------------------------------------------------- batch norm
class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes, differentiable: the gradient of each input is the sum of the
    gradients of the output on every process (each process's loss depends on all inputs)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics are those of the whole global micro-batch
    (one differentiable all-reduce per layer; any backend, CPU included). In eval mode, or outside
    a process group, it is plain ``BatchNorm2d``. Same parameters, buffers and state-dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)

        dims = (0, 2, 3)
        count = x.shape[0] * x.shape[2] * x.shape[3]
        # per-process mean and biased variance (computed stably), combined in float64
        local_mean = x.mean(dims).double()
        local_var = x.var(dims, unbiased=False).double()
        stats = torch.cat([local_mean * count, (local_var + local_mean * local_mean) * count,
                           local_mean.new_tensor([float(count)])])
        stats = _AllReduceSum.apply(stats)
        c = self.num_features
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (total / (total - 1)) if float(total) > 1 else var
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = (1, c, 1, 1)
        inv = torch.rsqrt(var + self.eps).to(x.dtype)
        y = (x - mean.to(x.dtype).view(shape)) * inv.view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batch_norm(model: nn.Module) -> int:
    """Replace every plain ``BatchNorm2d`` of ``model`` in place by :class:`SyncBatchNorm2d`,
    keeping its parameter and buffer objects. Returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                sync = SyncBatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum,
                                       affine=child.affine, track_running_stats=child.track_running_stats)
                sync.weight, sync.bias = child.weight, child.bias
                sync.running_mean, sync.running_var = child.running_mean, child.running_var
                sync.num_batches_tracked = child.num_batches_tracked
                sync.train(child.training)
                setattr(parent, name, sync)
                replaced += 1
    return replaced


class ClassifyModule(nn.Module):
    """``model.classify`` as ``forward``, for DDP (which synchronises only through ``forward``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, with_aux: bool = False):
        return self.model.classify(images, with_aux=with_aux)


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(ClassifyModule(model), device_ids=device_ids)
