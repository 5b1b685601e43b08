"""Optimizers and learning-rate schedules (warm-up, cosine, step, multi-step), per iteration."""

from __future__ import annotations

import math

import torch
from torch import nn

from lowbit.config import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Two groups: weights with decay, and BN/bias (1-d tensors) without, unless configured."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 and not cfg.decay_bn_and_bias else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    betas = (cfg.betas[0], cfg.betas[1])
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)


def lr_at(epoch: float, total: int, base: float, cfg: ScheduleConfig) -> float:
    """Learning rate at fractional `epoch` of a `total`-epoch schedule."""
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        return base * (epoch + 1e-9) / cfg.warmup_epochs
    if cfg.name == "cosine":
        span = max(total - cfg.warmup_epochs, 1e-9)
        t = min(max(epoch - cfg.warmup_epochs, 0.0) / span, 1.0)
        return cfg.min_lr + (base - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.name == "step":
        return base * cfg.gamma ** int(epoch // cfg.step_size)
    if cfg.name == "multistep":
        return base * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return base


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
