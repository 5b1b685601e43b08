"""A small CNN for tiny inputs (digits, synthetic data, the demo)."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models.registry import register_model, scaled


class SmallCNN(nn.Module):
    """conv-bn-relu x3 (the last two with stride 2), global pooling, linear classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = (scaled(c, width) for c in (32, 64, 128))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, 1, 1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, 2, 1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
            nn.Conv2d(c2, c3, 3, 2, 1, bias=False), nn.BatchNorm2d(c3), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def small_cnn(num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> nn.Module:
    """Three-conv CNN for 8x8..32x32 inputs (the demo model)."""
    return SmallCNN(num_classes, in_channels, width)
