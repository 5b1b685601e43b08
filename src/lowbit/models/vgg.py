"""VGG-Small, the CIFAR VGG of the quantization literature (LQ-Nets, Zhang et al. 2018).

Layers (channels at width 1, every conv 3x3 / stride 1 / pad 1, bias-free, then BN and ReLU):

    conv 128, conv 128, max-pool 2
    conv 256, conv 256, max-pool 2
    conv 512, conv 512, max-pool 2
    linear 512*4*4 -> num_classes

4,660,106 parameters with 10 classes. An adaptive average pool to 4x4 sits before the linear
layer, as torchvision's VGG does before its classifier: on 32x32 inputs it is the identity, and
it lets other sizes (28x28 MNIST) through without changing the parameter count.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models._layers import conv_bn, init_weights
from lowbit.models.registry import register_model, scaled

_GRID = 4  # the feature map side that reaches the classifier on a 32x32 input


class VGGSmall(nn.Module):
    """Six conv-BN-ReLU layers in three pooled stages, then one linear classifier.

    Attributes:
        min_input_size: Smallest square input side (three 2x2 max-pools need 8 pixels).
    """

    min_input_size = 8

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for base in (128, 256, 512):
            cout = scaled(base, width)
            layers += conv_bn(cin, cout, 3) + conv_bn(cout, cout, 3) + [nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(_GRID)
        self.classifier = nn.Linear(cin * _GRID * _GRID, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def vgg_small(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """VGG-Small for 32x32 images (LQ-Nets); 4,660,106 parameters with 10 classes, width 1.

    Args:
        num_classes: Size of the classifier output.
        in_channels: Channels of the input image.
        width: Multiplier on every channel count, classifier input included.
    """
    return VGGSmall(num_classes, in_channels, width)
