"""MobileNetV2 (Sandler et al. 2018), CIFAR variant.

The ImageNet network downsamples five times (stem conv and the 24/32/64/160-channel stages, total
stride 32). Like the common CIFAR ports (kuangliu/pytorch-cifar, chenyaofo/pytorch-cifar-models)
this variant runs the first two of those, the stem conv and the 24-channel stage, at stride 1:
total stride 8, so a 32x32 image reaches the last conv as a 4x4 map. Strides do not change the
parameter count: with 1000 classes this is the standard 3,504,872-parameter MobileNetV2; with
10 classes it has 2,236,682 parameters (the 1280 -> 1000 classifier alone holds 1.28M).

Unlike torchvision, channel counts are `scaled(c, width)` (no rounding to multiples of 8) and
the last conv shrinks with the width too, so that the width multiplier scales every layer.
No dropout before the classifier, as in the CIFAR ports.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models._layers import conv_bn, init_weights
from lowbit.models.registry import register_model, scaled

# (expansion t, output channels c, blocks n, stride s of the stage's first block); the paper's
# table 2 with the 24-channel stage at stride 1 instead of 2.
CIFAR_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM, _LAST = 32, 1280


class InvertedResidual(nn.Module):
    """1x1 expand (absent when t == 1), 3x3 depthwise, linear 1x1 project; residual if shapes match.

    Args:
        cin: Input channels.
        hidden: Channels of the expanded (depthwise) layer.
        cout: Output channels.
        stride: Stride of the depthwise conv.
        expand: Whether to have the 1x1 expansion conv (False for expansion factor 1).
    """

    def __init__(self, cin: int, hidden: int, cout: int, stride: int, expand: bool) -> None:
        super().__init__()
        layers = conv_bn(cin, hidden, 1, act=nn.ReLU6) if expand else []
        layers += conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6)
        # Linear bottleneck: a ReLU on the narrow output would destroy information (paper, 3.2).
        layers += conv_bn(hidden, cout, 1, act=None)
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """Stem conv, 17 inverted residual blocks, 1x1 conv to 1280, global pool, linear.

    Attributes:
        min_input_size: Total stride (8): the smallest square input side for which the last
            stage still sees a 1x1 map.
    """

    min_input_size = 8

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        layers = conv_bn(in_channels, scaled(_STEM, width), 3, 1, act=nn.ReLU6)
        base_in = _STEM
        for t, c, n, s in CIFAR_SETTINGS:
            for i in range(n):
                layers.append(
                    InvertedResidual(
                        scaled(base_in, width),
                        scaled(base_in * t, width),
                        scaled(c, width),
                        s if i == 0 else 1,
                        t != 1,
                    )
                )
                base_in = c
        layers += conv_bn(scaled(base_in, width), scaled(_LAST, width), 1, act=nn.ReLU6)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(scaled(_LAST, width), num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def mobilenet_v2(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """MobileNetV2 for 32x32 images (stride-1 stem and 24-channel stage); 2,236,682 parameters
    with 10 classes, width 1.

    Args:
        num_classes: Size of the classifier output.
        in_channels: Channels of the input image.
        width: Multiplier on every channel count, the 1280-channel last conv included.
    """
    return MobileNetV2(num_classes, in_channels, width)
