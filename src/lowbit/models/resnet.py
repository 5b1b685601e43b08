"""ImageNet-style ResNets (He et al. 2016): resnet18/34 (BasicBlock), resnet50 (Bottleneck).

The layer names and shapes follow torchvision's definition (`conv1`, `bn1`, `layer1.0.conv1`,
`layer2.0.downsample.0`, `fc`, ...), so a float ImageNet checkpoint loads with
`load_state_dict` -- INQ and LBW-Net start from pretrained float weights. Bottlenecks put the
stride on the 3x3 conv ("ResNet v1.5", torchvision's choice); the parameter count is the same.

`stem="imagenet"` is the 7x7 stride-2 conv + 3x3 stride-2 max-pool (total stride 32, for
224x224 inputs); `stem="cifar"` is a 3x3 stride-1 conv without max-pool (total stride 8), the
usual way to run these networks on 32x32 images.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.models._layers import init_weights
from lowbit.models.registry import register_model, scaled

STEMS = ("imagenet", "cifar")
_BASE_WIDTHS = (64, 128, 256, 512)


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    """The 1x1 conv + BN projection shortcut ("option B"), only where the shape changes."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; the first conv carries the stride."""

    expansion = 1

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = _downsample(cin, cout, stride)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand by 4, plus the residual connection."""

    expansion = 4

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = _downsample(cin, cout, stride)
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


def _stage(
    block: type[BasicBlock | Bottleneck], cin: int, base: int, depth: int, stride: int, width: float
) -> nn.Sequential:
    """`depth` blocks of `base` x width inner channels; the first one carries the stride."""
    mid, cout = scaled(base, width), scaled(base * block.expansion, width)
    blocks = [
        block(cin if j == 0 else cout, mid, cout, stride if j == 0 else 1) for j in range(depth)
    ]
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """Stem, four stages of residual blocks (64/128/256/512 x width), global pool, linear.

    Attributes:
        min_input_size: Total stride of the network: the smallest square input side for which
            the last stage still sees a 1x1 map (32 for the ImageNet stem, 8 for the CIFAR stem).
    """

    min_input_size: int

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        depths: tuple[int, ...],
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise LowbitError(f"unknown ResNet stem {stem!r}; choose one of {', '.join(STEMS)}")
        cin = scaled(64, width)
        self.conv1, self.maxpool = self._stem(stem, in_channels, cin)
        self.min_input_size = 32 if stem == "imagenet" else 8
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        for i, (base, depth) in enumerate(zip(_BASE_WIDTHS, depths, strict=True)):
            stages.append(_stage(block, cin, base, depth, 1 if i == 0 else 2, width))
            cin = scaled(base * block.expansion, width)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    @staticmethod
    def _stem(stem: str, cin: int, cout: int) -> tuple[nn.Conv2d, nn.Module]:
        if stem == "imagenet":
            return nn.Conv2d(cin, cout, 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1)
        # Small images cannot afford the 4x early downsampling: keep full resolution.
        return nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _builder(name: str, block: type[nn.Module], layers: tuple[int, ...], doc: str):  # noqa: ANN202
    def build(
        num_classes: int = 10, in_channels: int = 3, width: float = 1.0, stem: str = "imagenet"
    ) -> nn.Module:
        return ResNet(block, layers, num_classes, in_channels, width, stem)  # type: ignore[arg-type]

    build.__name__ = name
    build.__doc__ = (
        f"{doc}\n\n`width` multiplies every channel count (stem and classifier input included); "
        '`stem` is "imagenet" (7x7/2 conv + max-pool) or "cifar" (3x3/1 conv, no pool).'
    )
    return register_model(build)


resnet18 = _builder("resnet18", BasicBlock, (2, 2, 2, 2),
                    "ResNet-18: BasicBlocks (2, 2, 2, 2); 11,689,512 parameters with 1000 classes.")
resnet34 = _builder("resnet34", BasicBlock, (3, 4, 6, 3),
                    "ResNet-34: BasicBlocks (3, 4, 6, 3); 21,797,672 parameters with 1000 classes.")
resnet50 = _builder("resnet50", Bottleneck, (3, 4, 6, 3),
                    "ResNet-50: Bottlenecks (3, 4, 6, 3); 25,557,032 parameters with 1000 classes.")
