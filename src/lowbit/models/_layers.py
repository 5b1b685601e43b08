"""Building blocks shared by the model zoo: conv + BN (+ activation) stacks and Kaiming init.

Every layer is a plain `nn.Conv2d` / `nn.Linear` / `nn.BatchNorm*d` module, and every activation is
its own module instance, because quantization swaps layers by module type: a reused activation
module would become one shared (and possibly stateful) activation quantizer.
"""

from __future__ import annotations

from torch import nn


def conv_bn(
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> list[nn.Module]:
    """A bias-free conv (the BN that follows has the bias), its BN and optionally an activation.

    Args:
        cin: Input channels.
        cout: Output channels.
        kernel: Square kernel size; padding keeps the spatial size at stride 1.
        stride: Convolution stride.
        groups: Convolution groups (`groups == cin == cout` is a depthwise conv).
        act: Activation class appended after the BN, or None for a linear output.

    Returns:
        The layers, to be unpacked into an `nn.Sequential`.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act(inplace=True))
    return layers


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal init for convs and linear layers; BN starts as the identity.

    Convs use fan_out (He et al. 2015; the choice of the reference ResNets, so that the
    backward signal keeps its scale); linear layers use fan_in because their inputs are
    ReLU outputs whose forward scale matters for the logits.

    Args:
        model: The model, initialised in place.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
        if (
            isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d))
            and m.bias is not None
        ):
            nn.init.zeros_(m.bias)
