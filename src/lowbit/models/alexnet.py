"""AlexNet for 32x32 images, with batch normalisation.

AlexNet's shape (Krizhevsky et al. 2012: five convs with 64/192/384/256/256 channels as in
torchvision's single-tower version, three fully connected layers) shrunk for CIFAR. Layers at
width 1; every conv is bias-free and followed by BN and ReLU, every hidden linear layer by
BatchNorm1d and ReLU:

    conv 5x5 64,  stride 1, pad 2  -> max-pool 2   (32 -> 16)
    conv 5x5 192, stride 1, pad 2  -> max-pool 2   (16 -> 8)
    conv 3x3 384, pad 1
    conv 3x3 256, pad 1
    conv 3x3 256, pad 1            -> max-pool 2   (8 -> 4)
    linear 256*4*4 -> 1024, linear 1024 -> 1024, linear 1024 -> num_classes

7,709,642 parameters with 10 classes. The ImageNet network's 11x11/4 first conv and 3x3/2
pools would leave nothing of a 32x32 image, hence stride 1 and 2x2 pools; the 4096-wide fully
connected layers become 1024 because CIFAR has 10-100 classes, not 1000. BN replaces dropout
and local response normalisation, as in the BN-AlexNets that the quantization papers train.
An adaptive average pool to 4x4 (the identity on 32x32) lets other input sizes through.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models._layers import conv_bn, init_weights
from lowbit.models.registry import register_model, scaled

_GRID = 4  # the feature map side that reaches the classifier on a 32x32 input


def _linear_bn(fin: int, fout: int) -> list[nn.Module]:
    # No bias: the BatchNorm1d that follows has one.
    return [nn.Linear(fin, fout, bias=False), nn.BatchNorm1d(fout), nn.ReLU(inplace=True)]


class AlexNet(nn.Module):
    """Five conv-BN-ReLU layers with three max-pools, then three linear layers.

    Attributes:
        min_input_size: Smallest square input side (three 2x2 max-pools need 8 pixels).
    """

    min_input_size = 8

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, c4, c5, hidden = (scaled(c, width) for c in (64, 192, 384, 256, 256, 1024))
        self.features = nn.Sequential(
            *conv_bn(in_channels, c1, 5),
            nn.MaxPool2d(2),
            *conv_bn(c1, c2, 5),
            nn.MaxPool2d(2),
            *conv_bn(c2, c3, 3),
            *conv_bn(c3, c4, 3),
            *conv_bn(c4, c5, 3),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(_GRID)
        self.classifier = nn.Sequential(
            *_linear_bn(c5 * _GRID * _GRID, hidden),
            *_linear_bn(hidden, hidden),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def alexnet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """AlexNet with BN for 32x32 images; 7,709,642 parameters with 10 classes, width 1.

    Args:
        num_classes: Size of the classifier output.
        in_channels: Channels of the input image.
        width: Multiplier on every channel count and hidden linear size.
    """
    return AlexNet(num_classes, in_channels, width)
