"""DistributedDataParallel set-up from the environment `torchrun` provides (gloo on CPU).

With N processes each rank trains on its 1/N slice of every global batch (the loader shards
it) and DDP averages the gradients, which equals one process on the whole batch, except for
batch normalisation: a plain BatchNorm would normalise over its own slice. `sync_batchnorm`
swaps every BatchNorm for `GlobalBatchNorm`, whose training statistics are reduced over all
ranks (autograd-aware, so gradients flow through them as in one process). PyTorch's
SyncBatchNorm does this on GPUs only; this one works on CPU (gloo) too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")  # several processes train on CPU only
    return DistInfo(dist.get_rank(), dist.get_world_size())


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a list of floats across ranks (identity on one process)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_tensors(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Make every rank hold rank 0's values (used for method state chosen on rank 0)."""
    if info.enabled:
        for t in tensors:
            dist.broadcast(t, 0)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the global batch (every rank's slice).

    Same parameters, buffers and state-dict keys as the BatchNorm it replaces; evaluation uses
    the running statistics as usual. Statistics are reduced in float32: sum, sum of squares and
    count in one all-reduce per layer.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-d input, got {x.dim()}-d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = xf.new_tensor([xf.numel() / xf.shape[1]])
        total = dist_nn.all_reduce(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        c = x.shape[1]
        n = total[2 * c]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0)
        self._track(mean.detach(), var.detach(), float(n))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        if not self.track_running_stats or self.running_mean is None:
            return
        assert self.running_var is not None and self.num_batches_tracked is not None
        self.num_batches_tracked += 1
        f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, f)
        self.running_var.lerp_(var * n / max(n - 1, 1.0), f)


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """Swap every BatchNorm of `model` for a GlobalBatchNorm holding the same tensors."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new.to(next(child.buffers(), torch.empty(0)).device))
        else:
            sync_batchnorm(child)
    return model


def finish_together(info: DistInfo) -> None:
    """After a successful run, wait for every rank: a rank that tears its gloo connections down
    while another still saves its files can abort at exit ("terminate called without an active
    exception", seen under load). Not after a failure: the other ranks are stopped then."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
