"""Accuracy of a model on a split: top-1, top-5 and mean loss, batch by batch on the model's
device, summed over the ranks of a distributed run."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.engine.device import autocast, model_device, to_device
from lowbit.engine.distributed import DistInfo, all_reduce_sum
from lowbit.engine.progress import progress_bar


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Any,
    batch_size: int = 500,
    bf16: bool = False,
    channels_last: bool = False,
    dist: DistInfo | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean loss of `model` on the whole of `data` (a split
    with `batches(...)`: lowbit's in-memory datasets or a user's, lowbit.data.user)."""
    dist = dist or DistInfo()
    was_training = model.training
    model.eval()
    loader = data.batches(batch_size * dist.world_size, train=False, rank=dist.rank,
                          world_size=dist.world_size, channels_last=channels_last)
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, top1, top5, count
    k = min(5, data.num_classes)
    device = model_device(model)
    bar = progress_bar(len(loader), "evaluating", enabled=progress and dist.is_main)
    for batch in loader:
        bar.update()
        x, y = to_device(batch, device)
        with autocast(bf16, device):
            logits = model(x)
        logits = logits.float()
        top = logits.topk(k, dim=1).indices
        sums[0] += F.cross_entropy(logits, y, reduction="sum").item()
        sums[1] += (top[:, 0] == y).sum().item()
        sums[2] += (top == y[:, None]).any(1).sum().item()
        sums[3] += len(y)
    bar.close()
    loss, top1, top5, n = all_reduce_sum(sums, dist)
    model.train(was_training)
    n = max(n, 1)
    return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n}
