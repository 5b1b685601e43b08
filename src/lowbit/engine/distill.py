"""Knowledge distillation's loss (Hinton et al. 2015): the student matches the teacher's softened
class probabilities as well as the labels. The teacher's logits are computed once per batch, in
eval mode and without gradients, by the trainer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.config import DistillConfig


def distill_loss(
    ce: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, cfg: DistillConfig
) -> torch.Tensor:
    """`(1 - w) * ce + w * T^2 * KL(softmax(teacher/T) || softmax(student/T))` (Hinton et al.)."""
    t = cfg.temperature
    kl = F.kl_div(
        F.log_softmax(student.float() / t, dim=1),
        F.log_softmax(teacher.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - cfg.weight) * ce + cfg.weight * t * t * kl
