"""Group-Net structures built from float models: zoo ResNets, plain nets, user models, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.accounting import check_compliance
from lowbit.errors import LowbitError
from lowbit.groupnet import GroupNetSpec, expand, to_layerwise
from lowbit.models import create_model
from lowbit.nn import QuantLinear
from lowbit.nn.multibranch import BinaryConv2d, BranchSum
from lowbit.quant import Sign, Uniform


def sums(model: nn.Module) -> dict[str, BranchSum]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BranchSum)}


def build(name: str = "resnet20", **kw: object) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {"resnet20": {}, "resnet18": {"width": 0.25, "stem": "cifar"},
              "resnet50": {"width": 0.125, "stem": "cifar"}, "vgg_small": {"width": 0.125},
              "alexnet": {"width": 0.125}}[name]
    return expand(create_model(name, **kwargs), GroupNetSpec(**kw))  # type: ignore[arg-type]


def trains(model: nn.Module) -> None:
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert check_compliance(model).passed


def test_v1_resnet20_one_group_per_block_first_last_float() -> None:
    model = build(structure="v1", bases=3)
    groups = sums(model)
    stages = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert list(groups) == stages and all(g.num_branches == 3 for g in groups.values())
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear  # float
    base = groups["layer2.0"].branches[1]
    assert isinstance(base.conv1, BinaryConv2d) and isinstance(base.shortcut[0], BinaryConv2d)
    assert base.conv1.weight_quant.per_channel and base.conv1.bias is None
    act = base.conv1.act_quant
    assert isinstance(act, Uniform) and (act.bits, act.clip, act.clip_value) == (4, "fixed", 1.0)
    assert isinstance(groups["layer3.2"].branches[0].relu2, nn.Identity)  # before classifier
    assert isinstance(groups["layer3.1"].branches[0].relu2, nn.ReLU)
    assert torch.allclose(groups["layer1.0"].scales, torch.full((3,), 1 / 3))
    trains(model)


def test_v2_pairs_consecutive_blocks_across_stages_and_v3_is_one_ensemble() -> None:
    v2 = sums(build(structure="v2", bases=2))
    assert list(v2) == ["layer1.0", "layer1.2", "layer2.1", "layer3.0", "layer3.2"]
    assert isinstance(v2["layer1.2"].branches[0][1], type(v2["layer3.2"].branches[0]))
    v3 = build(structure="v3", bases=2)
    assert list(sums(v3)) == ["layer1.0"] and len(sums(v3)["layer1.0"].branches[0]) == 9
    assert isinstance(v3.layer3[2], nn.Identity)
    trains(v3)


def test_layerwise_expands_every_quantized_conv() -> None:
    model = build(structure="layerwise", bases=2)
    names = list(sums(model))
    assert len(names) == 20 - 2 + 2 and "conv1" not in names  # 18 convs + 2 shortcuts
    assert all(isinstance(b, BinaryConv2d) for s in sums(model).values() for b in s.branches)
    trains(model)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_resnets_basic_and_bottleneck(name: str) -> None:
    model = build(name, structure="v1", bases=2)
    assert len(sums(model)) == (8 if name == "resnet18" else 16)
    trains(model)


def test_plain_networks_group_s1_and_layerwise() -> None:
    alex = build("alexnet", structure="v2", bases=2)  # Group-S1: two layers per group
    groups = sums(alex)
    assert list(groups) == ["features.4", "features.11", "classifier.0"]
    first = groups["features.4"].branches[0]
    assert [type(m).__name__ for m in first] == [
        "BinaryConv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "BinaryConv2d", "BatchNorm2d", "ReLU"]
    assert isinstance(groups["classifier.0"].branches[0][0], QuantLinear)
    trains(alex)
    vgg = build("vgg_small", structure="layerwise", bases=2)
    assert len(sums(vgg)) == 5
    trains(vgg)


def test_binary_activations_use_sign_plus_one_padding_and_no_relu() -> None:
    model = build(structure="v1", bases=2, act_bits=1)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    conv = sums(model)["layer1.0"].branches[0].conv1
    assert isinstance(conv.act_quant, Sign) and conv.pad_value == 1.0 and conv.act_scale
    trains(model)


@pytest.mark.parametrize("act_bits", [1, 2, 4])
def test_every_quantized_activation_lies_on_its_grid(act_bits: int) -> None:
    model = build(structure="v1", bases=2, act_bits=act_bits).eval()
    seen = []

    def check(module: nn.Module, _inp: object, out: torch.Tensor) -> None:
        if act_bits == 1:
            ok = ((out == 1) | (out == -1)).all()
        else:
            steps = out * (2**act_bits - 1)  # beta = 1
            ok = torch.allclose(steps, steps.round(), atol=1e-4) and out.min() >= 0
        seen.append(bool(ok) and out.unique().numel() <= 2**act_bits)

    for m in model.modules():
        if isinstance(m, Sign | Uniform):
            m.register_forward_hook(check)
    model(torch.randn(2, 3, 32, 32))
    assert len(seen) == 2 * 20 and all(seen)  # 2 bases x (18 convs + 2 shortcuts)


def test_bases_start_from_the_float_weights_with_different_perturbations() -> None:
    torch.manual_seed(0)
    float_model = create_model("resnet20")
    w = float_model.layer1[0].conv1.weight.detach().clone()
    model = expand(float_model, GroupNetSpec(bases=3, perturbation=0.01))
    copies = [b.conv1.weight for b in sums(model)["layer1.0"].branches]
    for c in copies:
        assert 0 < (c - w).std() / w.std() < 0.02
    assert not torch.equal(copies[0], copies[1])
    same = expand(create_model("resnet20"), GroupNetSpec(bases=2, perturbation=0.0))
    a, b = (br.conv1.weight for br in sums(same)["layer1.0"].branches)
    assert torch.equal(a, b)
    rand = expand(create_model("resnet20"), GroupNetSpec(bases=4, lambda_init="rand"))
    assert len(set(sums(rand)["layer1.0"].scales.tolist())) == 4


def test_scratch_init_resets_every_layer() -> None:
    torch.manual_seed(0)
    float_model = create_model("resnet20")
    with torch.no_grad():
        float_model.layer1[0].bn1.weight.fill_(3.0)
    model = expand(float_model, GroupNetSpec(bases=2, init="scratch"))
    assert torch.equal(sums(model)["layer1.0"].branches[0].bn1.weight, torch.ones(16))


class UserNet(nn.Module):
    """A user model: stem, two residual units of a custom type, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.unit_a, self.unit_b = UserUnit(), UserUnit()
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.unit_b(self.unit_a(torch.relu(self.stem(x))))
        return self.head(x.mean((2, 3)))


class UserUnit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv_b, self.bn_b = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn_b(self.conv_b(torch.relu(self.bn_a(self.conv_a(x))))))


@pytest.mark.parametrize("blocks", [["unit_.*"], ["UserUnit"]])
def test_user_model_blocks_by_regex_or_type(blocks: list[str]) -> None:
    model = expand(UserNet(), GroupNetSpec(structure="v1", bases=2, blocks=blocks))
    assert list(sums(model)) == ["unit_a", "unit_b"]
    grouped = expand(UserNet(), GroupNetSpec(structure="groups", bases=2, blocks=blocks,
                                             groups=[["unit_a", "unit_b"]]))
    assert list(sums(grouped)) == ["unit_a"] and isinstance(grouped.unit_b, nn.Identity)
    trains(grouped)


def test_a_group_boundary_inside_a_skip_connection_is_a_clear_error() -> None:
    spec = GroupNetSpec(structure="groups", bases=2, blocks=[r"unit_a\.conv_b", r"unit_b\.conv_a"],
                        groups=[[r"unit_a\.conv_b", r"unit_b\.conv_a"]])
    with pytest.raises(LowbitError, match="cannot be built.*skip connection"):
        expand(UserNet(), spec)


def test_partition_errors() -> None:
    def groups(*g: list[str]) -> None:
        expand(create_model("resnet20"), GroupNetSpec(structure="groups", groups=list(g)))

    with pytest.raises(LowbitError, match="in no group"):
        groups([r"layer1\..*"])
    with pytest.raises(LowbitError, match="not a run of consecutive"):
        groups([r"layer1\.0", r"layer1\.2"], [r"layer1\.1", "layer[23].*"])
    with pytest.raises(LowbitError, match="matches no block"):
        groups(["nothing"])
    with pytest.raises(LowbitError, match="match no module"):
        expand(create_model("resnet20"), GroupNetSpec(blocks=["nothing"]))
    with pytest.raises(LowbitError, match="cannot be built"):  # flatten between the groups
        expand(create_model("alexnet", width=0.125), GroupNetSpec(structure="v3"))


def test_soft_gates_link_consecutive_groups() -> None:
    model = build(structure="v1", bases=2, gates=True)
    groups = list(sums(model).values())
    assert all(g.gate is not None for g in groups) and groups[1]._prev == [groups[0]]
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert groups[4].gate.grad is not None and groups[4].gate.grad != 0


def test_layerwise_converter_is_a_plain_function() -> None:
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    layer = to_layerwise("conv", conv, GroupNetSpec(bases=3))
    assert isinstance(layer, BranchSum) and layer.num_branches == 3
    assert all(isinstance(b, BinaryConv2d) for b in layer.branches)
    assert layer(torch.rand(1, 4, 5, 5)).shape == (1, 4, 5, 5)
