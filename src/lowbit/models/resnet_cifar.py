"""CIFAR ResNets (He et al. 2016, section 4.2): 6n+2 layers, 16/32/64 channels, option-B shortcuts.

The shortcut on a downsampling block is a 1x1 conv + BN (option B), the choice of most
re-implementations that reach 91.7-92.6 % with ResNet-20; `shortcut="A"` gives the paper's
parameter-free zero-padding shortcut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.models.registry import register_model, scaled


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu1, self.relu2 = nn.ReLU(inplace=True), nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        self.pad = 0
        if stride != 1 or cin != cout:
            if shortcut == "B":
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                              nn.BatchNorm2d(cout))
            else:
                self.shortcut = nn.AvgPool2d(1, stride) if stride != 1 else nn.Identity()
                self.pad = cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = self.shortcut(x)
        if self.pad:
            sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return self.relu2(out + sc)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3,
                 width: float = 1.0, shortcut: str = "B") -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        widths = [scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, cin = [], widths[0]
        for i, cout in enumerate(widths):
            blocks = [BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1,
                                 shortcut) for j in range(n)]
            layers.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _builder(depth: int):  # noqa: ANN202 - registered under resnet{depth}
    def build(num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
              shortcut: str = "B") -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels, width, shortcut)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth} (6n+2, 16/32/64 channels x width)."
    return build


resnet20 = register_model(_builder(20))
resnet32 = register_model(_builder(32))
resnet44 = register_model(_builder(44))
resnet56 = register_model(_builder(56))
