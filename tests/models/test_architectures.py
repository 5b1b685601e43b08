"""Architecture-specific checks: exact parameter counts, stems, strides, layer names."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.models import create_model
from lowbit.models.mobilenet import InvertedResidual


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(name: str, **kwargs: Any) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def output_of(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return seen[0]


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


# The VGG-Small and AlexNet counts worked out from the layer lists in their module docstrings.
VGG_SMALL_10 = (
    _conv(3, 128, 3)
    + _conv(128, 128, 3)
    + _conv(128, 256, 3)
    + _conv(256, 256, 3)
    + _conv(256, 512, 3)
    + _conv(512, 512, 3)
    + 2 * (128 + 128 + 256 + 256 + 512 + 512)  # BN scale and shift
    + 512 * 4 * 4 * 10
    + 10
)
ALEXNET_10 = (
    _conv(3, 64, 5)
    + _conv(64, 192, 5)
    + _conv(192, 384, 3)
    + _conv(384, 256, 3)
    + _conv(256, 256, 3)
    + 2 * (64 + 192 + 384 + 256 + 256)
    + 256 * 4 * 4 * 1024
    + 2 * 1024
    + 1024 * 1024
    + 2 * 1024
    + 1024 * 10
    + 10
)


@pytest.mark.parametrize(
    ("name", "num_classes", "kwargs", "expected"),
    [
        # torchvision's definitions (He et al. 2016), the numbers every ImageNet paper quotes.
        ("resnet18", 1000, {}, 11_689_512),
        ("resnet34", 1000, {}, 21_797_672),
        ("resnet50", 1000, {}, 25_557_032),
        # Standard MobileNetV2 (Sandler et al. 2018): 3.5M; strides do not change the count.
        ("mobilenet_v2", 1000, {}, 3_504_872),
        # 3,504,872 - 1280 * 1000 - 1000 + 1280 * 10 + 10.
        ("mobilenet_v2", 10, {}, 2_236_682),
        # ResNet-20 is 0.27M (He et al. 2016, table 6) with parameter-free shortcuts; the 1x1
        # projections of option B add 16*32 + 32*64 weights and 2*(32 + 64) BN parameters.
        ("resnet20", 10, {"shortcut": "A"}, 269_722),
        ("resnet20", 10, {}, 269_722 + 16 * 32 + 32 * 64 + 2 * (32 + 64)),
        ("vgg_small", 10, {}, VGG_SMALL_10),
        ("alexnet", 10, {}, ALEXNET_10),
    ],
)
def test_parameter_count(
    name: str, num_classes: int, kwargs: dict[str, str], expected: int
) -> None:
    assert n_params(on_meta(name, num_classes=num_classes, **kwargs)) == expected


def test_documented_counts() -> None:
    # The docstrings quote these; keep them honest.
    assert (VGG_SMALL_10, ALEXNET_10) == (4_660_106, 7_709_642)


@pytest.mark.parametrize(("stem", "size", "grid"), [("cifar", 32, 4), ("imagenet", 64, 2)])
def test_resnet18_stems(stem: str, size: int, grid: int) -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.25, stem=stem)
    x = torch.randn(2, 3, size, size)
    assert output_of(model, model.layer4, x).shape[-2:] == (grid, grid)
    assert model(x).shape == (2, 10)
    conv1 = model.conv1
    if stem == "cifar":
        assert (conv1.kernel_size, conv1.stride) == ((3, 3), (1, 1))
        assert isinstance(model.maxpool, nn.Identity)
        assert model.min_input_size == 8
    else:
        assert (conv1.kernel_size, conv1.stride) == ((7, 7), (2, 2))
        assert isinstance(model.maxpool, nn.MaxPool2d)
        assert model.min_input_size == 32


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_resnet_rejects_unknown_stem(name: str) -> None:
    with pytest.raises(LowbitError, match="imagenet, cifar"):
        create_model(name, stem="tiny")


@pytest.mark.parametrize(
    ("name", "n_keys", "fc_in", "layer1_projects"),
    [
        ("resnet18", 122, 512, False),
        ("resnet50", 320, 2048, True),
    ],
)
def test_resnet_state_dict_matches_torchvision_layout(
    name: str, n_keys: int, fc_in: int, layer1_projects: bool
) -> None:
    # Same names and shapes as torchvision, so pretrained float checkpoints load directly.
    state = on_meta(name, num_classes=1000).state_dict()
    assert len(state) == n_keys
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["fc.weight"].shape == (1000, fc_in)
    assert state["layer4.1.bn2.running_var"].shape[0] == 512
    assert ("layer1.0.downsample.0.weight" in state) == layer1_projects
    assert state["layer2.0.downsample.1.weight"].shape[0] == fc_in // 4


def test_bottleneck_strides_on_the_3x3_conv() -> None:
    block = on_meta("resnet50").layer2[0]
    assert (block.conv1.stride, block.conv2.stride) == ((1, 1), (2, 2))
    assert block.downsample[0].stride == (2, 2)


def test_mobilenet_v2_cifar_strides_and_blocks() -> None:
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", width=0.25)
    # Stride-1 stem and 24-channel stage: 32x32 in, 4x4 out of the last conv.
    assert output_of(model, model.features, torch.randn(2, 3, 32, 32)).shape[-2:] == (4, 4)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17
    # Residual connections where shapes match: 1 + 2 + 3 + 2 + 2 in the paper's table 2.
    assert sum(b.use_residual for b in blocks) == 10
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_mobilenet_v2_projection_is_linear() -> None:
    # The project conv's BN ends the block: no activation after it (linear bottleneck).
    block = [m for m in on_meta("mobilenet_v2").modules() if isinstance(m, InvertedResidual)][3]
    assert isinstance(block.conv[-1], nn.BatchNorm2d)
    assert isinstance(block.conv[-3], nn.ReLU6)


@pytest.mark.parametrize("name", ["vgg_small", "alexnet"])
def test_classifier_sees_a_4x4_grid_on_32x32(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, width=0.25)
    features = output_of(model, model.features, torch.randn(2, 3, 32, 32))
    # Native size: the adaptive pool in front of the classifier has nothing to do.
    assert features.shape[-2:] == (4, 4)


@pytest.mark.parametrize("name", ["vgg_small", "alexnet", "mobilenet_v2", "resnet18"])
def test_mnist_sized_input(name: str) -> None:
    torch.manual_seed(0)
    kwargs = {"stem": "cifar"} if name == "resnet18" else {}
    model = create_model(name, in_channels=1, width=0.25, **kwargs)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vgg_small_layer_list() -> None:
    model = on_meta("vgg_small")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 128, 256, 256, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
