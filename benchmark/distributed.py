"""Data-parallel training under PyTorch's launcher (`torchrun --nproc_per_node N -m benchmark run ...`).

One home for everything distributed; with a single process every function here is a no-op, so the
training loop reads the same either way. The contract:
- every rank draws the same global batch from the same seeded generator, augments the whole batch (the
  random draws equal a single process's) and trains on its contiguous shard (batch_size / world each);
- gradients of every optimised parameter (student, method heads/temperatures, task-loss parameters) are
  averaged after backward, one flat all-reduce per step, so parameters stay identical on every rank;
- `sync_bn=true` replaces the student's BatchNorm layers by `SyncBatchNorm` below (statistics of the
  global batch; unlike torch.nn.SyncBatchNorm it also runs on CPU with gloo);
- per-sample state a method keeps across steps (CRD's memory banks) is updated with the gathered batch;
- rank 0 alone logs to MLflow, evaluates, prints and writes checkpoints; every rank reads a checkpoint on
  `--resume`. Losses that relate the samples of a batch to each other (SP, PKT, RKD, ICKD, CLIP, CCL, CRD's
  NCE) are computed within each rank's shard, as most distillation code does under DDP.
"""

from __future__ import annotations

import os
from typing import TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn

from benchmark.registry import UsageError

M = TypeVar("M", bound=nn.Module)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Started by torchrun (or any launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str) -> None:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); a no-op for one process."""
    if not launched() or world_size() > 1:
        return
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")


def shutdown() -> None:
    if world_size() > 1:
        dist.destroy_process_group()


def shard(batch_size: int) -> slice:
    """This rank's contiguous part of a global batch."""
    n = world_size()
    if batch_size % n:
        raise UsageError(f"batch_size {batch_size} is not divisible by the {n} processes (each trains on an equal shard)")
    per = batch_size // n
    return slice(rank() * per, (rank() + 1) * per)


def average_gradients(params: list[torch.Tensor]) -> None:
    """Mean of each parameter's gradient over the ranks (one flat all-reduce; a missing grad counts as 0)."""
    if world_size() == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        part = flat[offset : offset + n].view_as(p)
        p.grad = part.clone() if p.grad is None else p.grad.copy_(part)
        offset += n


def broadcast_state(*modules: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (they are seeded alike; this makes it a guarantee)."""
    if world_size() == 1:
        return
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            dist.broadcast(t.data, 0)


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """The tensors of every rank concatenated in rank order (the global batch, for per-sample state)."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def gather_cat_with_grad(t: torch.Tensor) -> torch.Tensor:
    """gather_cat through which gradients flow back to each rank's own rows (a loss over the global batch).
    Every rank computes the same global loss; the backward sums the ranks' gradients of this rank's rows
    (W times the one-process gradient) and average_gradients divides by W: the one-process gradient."""
    if world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t.contiguous()))


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any rank (a collective: every rank must call it together)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t)
    return bool(t.item() > 0)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def rank0_outcome(error: str | None) -> str | None:
    """Rank 0's outcome of the work it does alone (evaluate, log, save), on every rank: None when it went
    well, else its reason, so that every rank stops at once with it (a barrier would leave them waiting until
    the process group's timeout). A collective: every rank calls it together; rank 0's `error` counts."""
    if world_size() == 1:
        return error
    box = [error if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks with its gradient: each input's gradient is the sum of the outputs' gradients."""

    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        dist.all_reduce(g)
        return g


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch: per-channel sums and sums of squares are all-reduced with autograd
    so forward and backward equal BatchNorm on the concatenated shards."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = torch.tensor([xf.numel() / xf.shape[1]], device=x.device)
        stats = _AllReduceSum.apply(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            if self.track_running_stats:  # the module keeps buffers and a momentum (None, a running average: not built)
                assert self.running_mean is not None and self.running_var is not None and self.momentum is not None
                assert self.num_batches_tracked is not None
                self.num_batches_tracked += 1
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / (n - 1))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: M) -> M:
    """Every BatchNorm layer of `module` as SyncBatchNorm, with its parameters and running statistics (the
    module itself, changed in place; a lone BatchNorm given: its SyncBatchNorm)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        return cast(M, new)
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child))
    return module
