"""The converter registry and per-layer factories: new kinds of swap from outside the package."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.nn import QuantConv2d
from lowbit.transform import CONVERTERS, LayerSpec, quantize_model, register_converter


class Branches(nn.Module):
    """Toy multi-branch module: sum of K quantized copies of a block, scaled by learned lambdas."""

    def __init__(self, copies: list[nn.Module]) -> None:
        super().__init__()
        self.copies = nn.ModuleList(copies)
        self.scales = nn.Parameter(torch.full((len(copies),), 1.0 / len(copies)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(s * m(x) for s, m in zip(self.scales, self.copies, strict=True))  # type: ignore[return-value]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))) + x


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Block(), Block(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


@pytest.fixture
def k_copies():
    """A block -> K quantized copies converter, registered (and removed) like a plugin would."""

    @register_converter("test_k_copies")
    def build(module: nn.Module, spec: LayerSpec) -> nn.Module:
        k = int(spec.options.get("k", 2))
        inner = {nn.Conv2d: {"weight": spec.weight, "act": spec.act}}
        return Branches([quantize_model(copy.deepcopy(module), inner).model for _ in range(k)])

    yield build
    CONVERTERS.remove("test_k_copies")


def test_a_registered_block_converter_swaps_whole_blocks(k_copies) -> None:
    model = net()
    x = torch.randn(2, 3, 8, 8)
    spec = {"convert": "test_k_copies", "k": 3, "weight": {"name": "binary"}}
    report = quantize_model(model, {r"[12]": spec, ".*": None})
    out = report.model
    assert [c.name for c in report.converted] == ["1", "2"]
    assert {c.converter for c in report.converted} == {"test_k_copies"}
    for i in (1, 2):
        assert isinstance(out[i], Branches) and len(out[i].copies) == 3
        assert all(isinstance(c.conv, QuantConv2d) for c in out[i].copies)
    # the inner convs were converted by the block converter, not visited again
    assert out(x).shape == (2, 2)
    assert not any(c.name.startswith("1.") for c in report.converted)


def test_an_unknown_converter_names_the_choices() -> None:
    with pytest.raises(LowbitError, match="unknown converter 'nope'; choose one of.*conv2d"):
        quantize_model(net(), {"1": {"convert": "nope"}})


def test_converter_names_are_registered_once(k_copies) -> None:
    with pytest.raises(LowbitError, match="already registered"):
        register_converter("test_k_copies")(k_copies)


def test_a_per_layer_factory_gives_mixed_precision() -> None:
    bits = {"1.conv": 2, "2.conv": 4}
    seen: list[str] = []

    def factory(name: str, module: nn.Module) -> dict | None:
        seen.append(name)
        if name not in bits:
            return None
        return {"weight": {"name": "uniform", "bits": bits[name]}}

    report = quantize_model(net(), {nn.Conv2d: factory, nn.Linear: None})
    got = {c.name: c.weight["bits"] for c in report.converted}
    assert got == bits and seen == ["0", "1.conv", "2.conv"]
    assert report.model[1].conv.weight_quant.bits == 2


def test_a_bad_factory_answer_is_a_clear_error() -> None:
    with pytest.raises(LowbitError, match=r"factory, at '0'.*spec must be"):
        quantize_model(net(), {nn.Conv2d: lambda name, m: 42, nn.Linear: None})
