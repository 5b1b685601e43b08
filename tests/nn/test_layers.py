"""QuantConv2d / QuantLinear / QuantAct: state_dict layout, from_float/to_float, exact forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.nn import QuantAct, QuantConv2d, QuantLinear
from lowbit.quant.base import Quantizer


class SymUniform(Quantizer):
    """Test quantizer: per-tensor uniform, s = max|x| / n; levels k*s, k in [-n, n] or [0, n]."""

    name = "test_sym_uniform"

    def __init__(self, bits: int = 2, signed: bool = True) -> None:
        super().__init__(bits)
        self.signed = signed

    def _n(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().abs().max().clamp_min(1e-8) / self._n()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, n = self._scale(x), self._n()
        return torch.round(x.detach() / s).clamp(-n if self.signed else 0, n).int(), s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.decode(*self.encode(x))
        return q + (x - x.detach())  # value q exactly, identity gradient

    def levels(self, x: torch.Tensor) -> torch.Tensor:
        n = self._n()
        return torch.arange(-n if self.signed else 0, n + 1, dtype=x.dtype) * self._scale(x)


class Stepped(SymUniform):
    """SymUniform with a learned-looking parameter, to see quantizer state in the state_dict."""

    name = "test_stepped"

    def __init__(self, bits: int = 2) -> None:
        super().__init__(bits)
        self.step = nn.Parameter(torch.tensor(1.0))


def manual_quant(x: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """The SymUniform maths written out independently of the module."""
    n = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    s = x.abs().max().clamp_min(1e-8) / n
    return torch.round(x / s).clamp(-n if signed else 0, n) * s


CONV_CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, bias=False),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding=2, dilation=2, groups=2),
    dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6),  # depthwise
    dict(in_channels=4, out_channels=4, kernel_size=(3, 1), padding="same"),
    dict(in_channels=4, out_channels=5, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=4, out_channels=5, kernel_size=3, padding=1, padding_mode="circular"),
]


@pytest.mark.parametrize("kwargs", CONV_CASES)
def test_conv_without_quantizers_equals_float(kwargs: dict) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs)
    q = QuantConv2d.from_float(conv)
    x = torch.randn(2, conv.in_channels, 9, 9)
    torch.testing.assert_close(q(x), conv(x), rtol=0, atol=0)
    assert q.weight is conv.weight and q.bias is conv.bias  # shared, not copied
    for attr in ("stride", "padding", "dilation", "groups", "padding_mode", "kernel_size"):
        assert getattr(q, attr) == getattr(conv, attr)


@pytest.mark.parametrize("kwargs", CONV_CASES)
def test_conv_forward_equals_manual_fake_quant(kwargs: dict) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(**kwargs)
    q = QuantConv2d.from_float(conv, SymUniform(2), SymUniform(4, signed=False))
    x = torch.randn(2, conv.in_channels, 9, 9).relu()
    w, xq = manual_quant(conv.weight.detach(), 2), manual_quant(x, 4, signed=False)
    expected = conv._conv_forward(xq, w, conv.bias)
    torch.testing.assert_close(q(x), expected, rtol=0, atol=0)
    assert len(torch.unique(q.quantized_weight())) <= 3  # ternary at bits=2


def test_conv_gradients_follow_the_straight_through_rule() -> None:
    torch.manual_seed(2)
    q = QuantConv2d(3, 4, 3, padding=1, weight_quant=SymUniform(3), act_quant=SymUniform(3))
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    q(x).square().sum().backward()
    # Reference: the same graph with the quantized tensors as leaves; identity STE passes
    # their gradients to the latent weight and input unchanged.
    wq = manual_quant(q.weight.detach(), 3).requires_grad_()
    xq = manual_quant(x.detach(), 3).requires_grad_()
    F.conv2d(xq, wq, q.bias.detach(), padding=1).square().sum().backward()
    torch.testing.assert_close(q.weight.grad, wq.grad)
    torch.testing.assert_close(x.grad, xq.grad)


def test_linear_forward_and_backward_equal_manual() -> None:
    torch.manual_seed(3)
    lin = nn.Linear(7, 5)
    q = QuantLinear.from_float(lin, SymUniform(2), SymUniform(4))
    x = torch.randn(3, 7, requires_grad=True)
    out = q(x)
    expected = F.linear(manual_quant(x.detach(), 4), manual_quant(lin.weight.detach(), 2), lin.bias)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.sum().backward()
    assert lin.weight.grad is not None and x.grad is not None and lin.bias.grad is not None


def test_state_dict_keys_are_the_float_keys_plus_quantizer_state() -> None:
    conv, lin = nn.Conv2d(3, 4, 3), nn.Linear(4, 2, bias=False)
    qc = QuantConv2d.from_float(conv, Stepped(), SymUniform(4))
    ql = QuantLinear.from_float(lin, SymUniform(2), Stepped())
    assert set(qc.state_dict()) == set(conv.state_dict()) | {"weight_quant.step"}
    assert set(ql.state_dict()) == set(lin.state_dict()) | {"act_quant.step"}
    # A float checkpoint loads into the quantized layer, even strictly: a state dict holding
    # none of a quantizer's keys leaves that quantizer's state as initialised.
    with torch.no_grad():
        qc.weight_quant.step.fill_(0.5)
    float_state = nn.Conv2d(3, 4, 3).state_dict()
    missing, unexpected = qc.load_state_dict(float_state, strict=False)
    assert missing == [] and unexpected == []
    qc.load_state_dict(float_state)  # strict
    assert torch.equal(qc.weight, float_state["weight"])
    assert float(qc.weight_quant.step.detach()) == 0.5
    # a state dict with quantizer state loads it as usual
    qc.load_state_dict({**float_state, "weight_quant.step": torch.tensor(2.0)})
    assert float(qc.weight_quant.step.detach()) == 2.0


def test_quantized_weight_is_detached_and_fresh() -> None:
    torch.manual_seed(4)
    q = QuantConv2d(2, 3, 3, weight_quant=SymUniform(2))
    wq = q.quantized_weight()
    assert not wq.requires_grad
    torch.testing.assert_close(wq, manual_quant(q.weight.detach(), 2), rtol=0, atol=0)
    wq.zero_()
    assert q.quantized_weight().abs().sum() > 0
    float_layer = QuantLinear(3, 2)
    w = float_layer.quantized_weight()
    w.add_(1.0)  # must not write through into the float weight
    assert not torch.equal(w, float_layer.weight)


@pytest.mark.parametrize("kwargs", CONV_CASES)
def test_conv_to_float_bakes_quantized_weight(kwargs: dict) -> None:
    torch.manual_seed(5)
    q = QuantConv2d(**kwargs, weight_quant=SymUniform(2))
    f = q.to_float()
    assert type(f) is nn.Conv2d
    torch.testing.assert_close(f.weight, q.quantized_weight(), rtol=0, atol=0)
    x = torch.randn(1, q.in_channels, 8, 8)
    torch.testing.assert_close(f(x), q(x), rtol=0, atol=0)
    assert set(f.state_dict()) == {"weight", "bias"} & set(q.state_dict())


def test_to_float_latent_round_trips_and_does_not_alias() -> None:
    torch.manual_seed(6)
    conv = nn.Conv2d(3, 4, 3, stride=2, bias=True)
    back = QuantConv2d.from_float(conv, SymUniform(2)).to_float(latent=True)
    assert type(back) is nn.Conv2d and back.stride == conv.stride
    for key, value in conv.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value, rtol=0, atol=0)
    with torch.no_grad():
        back.weight.add_(1.0)
        back.bias.add_(1.0)
    assert not torch.equal(back.weight, conv.weight) and not torch.equal(back.bias, conv.bias)


def test_linear_to_float_both_ways() -> None:
    torch.manual_seed(7)
    q = QuantLinear(6, 3, bias=False, weight_quant=SymUniform(2), act_quant=SymUniform(8))
    baked, latent = q.to_float(), q.to_float(latent=True)
    assert type(baked) is nn.Linear and baked.bias is None
    torch.testing.assert_close(baked.weight, q.quantized_weight(), rtol=0, atol=0)
    torch.testing.assert_close(latent.weight, q.weight, rtol=0, atol=0)
    assert latent.weight.data_ptr() != q.weight.data_ptr()


def test_mode_and_requires_grad_are_carried_over() -> None:
    conv = nn.Conv2d(2, 2, 1).eval()
    conv.bias.requires_grad_(False)
    q = QuantConv2d.from_float(conv, SymUniform(2))
    assert not q.training and not q.weight_quant.training
    f = q.to_float()
    assert not f.training and f.weight.requires_grad and not f.bias.requires_grad


def test_from_float_rejects_other_types_and_bad_quantizers() -> None:
    class MyConv(nn.Conv2d):
        pass

    with pytest.raises(TypeError, match="expects an nn.Conv2d, got MyConv"):
        QuantConv2d.from_float(MyConv(1, 1, 1))
    with pytest.raises(TypeError, match="expects an nn.Linear"):
        QuantLinear.from_float(nn.Conv2d(1, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="weight_quant must be a lowbit Quantizer"):
        QuantConv2d(1, 1, 1, weight_quant=nn.ReLU())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="act_quant must be"):
        QuantAct(nn.Identity())  # type: ignore[arg-type]


def test_quant_act_wraps_a_quantizer() -> None:
    act = QuantAct(Stepped(3))
    x = torch.randn(4, 5)
    torch.testing.assert_close(act(x), manual_quant(x, 3), rtol=0, atol=0)
    assert act.bits == 3
    assert list(act.state_dict()) == ["act_quant.step"]
