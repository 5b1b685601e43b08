"""A small CNN for tiny inputs (digits, synthetic data, the demo)."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models.registry import register_model, scaled


class SmallCNN(nn.Module):
    """conv-norm-relu x3 (the last two with stride 2), global pooling, linear classifier.

    `norm="none"` drops batch norm (convs get biases): the distributed tests need a model whose
    gradient does not depend on how a batch is split across processes.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0, norm: str = "bn"
    ) -> None:
        super().__init__()
        if norm not in ("bn", "none"):
            raise ValueError(f"norm must be 'bn' or 'none', got {norm!r}")
        layers: list[nn.Module] = []
        cin = in_channels
        for cout, stride in (
            (scaled(32, width), 1),
            (scaled(64, width), 2),
            (scaled(128, width), 2),
        ):
            layers.append(nn.Conv2d(cin, cout, 3, stride, 1, bias=norm == "none"))
            layers += [nn.BatchNorm2d(cout)] if norm == "bn" else []
            layers.append(nn.ReLU(inplace=True))
            cin = cout
        self.features = nn.Sequential(*layers)
        c3 = cin
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def small_cnn(
    num_classes: int = 10, in_channels: int = 1, width: float = 1.0, norm: str = "bn"
) -> nn.Module:
    """Three-conv CNN for 8x8..32x32 inputs (the demo model)."""
    return SmallCNN(num_classes, in_channels, width, norm)
