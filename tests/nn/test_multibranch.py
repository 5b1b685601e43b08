"""BinaryConv2d (binary padding keeps XNOR-popcount exact, XNOR scales) and BranchSum."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.nn.multibranch import BinaryConv2d, BranchSum
from lowbit.quant import Binary, Sign, Uniform
from lowbit.transform import dequantize_model


def sign_conv(pad_value: float | None, act_scale: bool = False) -> BinaryConv2d:
    torch.manual_seed(0)
    return BinaryConv2d.from_float(nn.Conv2d(3, 4, 3, padding=1, bias=False), Binary(),
                                   Sign(), pad_value=pad_value, act_scale=act_scale)


def xnor_popcount_conv(x: torch.Tensor, w_codes: torch.Tensor, pad: float) -> torch.Tensor:
    """The integer XNOR-popcount reference: a.b = n - 2 * popcount(a xor b) over ±1 vectors."""
    a = F.unfold(F.pad(torch.where(x >= 0, 1, -1).float(), (1, 1, 1, 1), value=pad), 3)
    bits_a = (a > 0).transpose(1, 2).unsqueeze(2)  # (N, L, 1, n)
    bits_w = (w_codes.reshape(w_codes.shape[0], -1) > 0)  # (C, n)
    n = bits_w.shape[1]
    ones = (bits_a ^ bits_w).sum(-1)  # popcount of the xor: (N, L, C)
    return (n - 2 * ones).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:]).float()


@pytest.mark.parametrize("pad", [1.0, -1.0])
def test_binary_padding_makes_the_conv_an_exact_xnor_popcount(pad: float) -> None:
    conv = sign_conv(pad)
    x = torch.randn(2, 3, 5, 5)
    codes, scale = conv.weight_quant.encode(conv.weight)
    want = xnor_popcount_conv(x, codes, pad) * scale  # per-layer scale: one number
    assert torch.allclose(conv(x), want, atol=1e-5)
    zero_padded = F.conv2d(Sign()(x), conv.quantized_weight(), padding=1)
    assert not torch.allclose(conv(x), zero_padded)  # a 0 at the border is a third state


def test_xnor_activation_scale_multiplies_by_the_window_mean_of_abs_input() -> None:
    conv, plain = sign_conv(1.0, act_scale=True), sign_conv(1.0)
    x = torch.randn(2, 3, 6, 6)
    k = F.avg_pool2d(x.abs().mean(1, keepdim=True), 3, 1, 1)
    assert torch.allclose(conv(x), plain(x) * k)


def test_dequantize_keeps_padding_and_scale_options() -> None:
    model = nn.Sequential(sign_conv(-1.0, act_scale=True))
    x = torch.randn(2, 3, 5, 5)
    baked = dequantize_model(model)
    layer = baked[0]
    assert isinstance(layer, BinaryConv2d) and layer.weight_quant is None
    assert (layer.pad_value, layer.act_scale) == (-1.0, True)
    assert torch.equal(baked(x), model(x))


def test_kbit_input_keeps_zero_padding() -> None:
    conv = BinaryConv2d.from_float(nn.Conv2d(3, 4, 3, padding=1), Binary(),
                                   Uniform(2, signed=False, clip="fixed"))
    ref = nn.Conv2d(3, 4, 3, padding=1)
    ref.load_state_dict({"weight": conv.quantized_weight(), "bias": conv.bias.detach()})
    x = torch.rand(2, 3, 5, 5)
    assert torch.allclose(conv(x), ref(conv.act_quant(x)))


def test_branch_sum_is_the_lambda_weighted_sum_and_learns_lambda() -> None:
    branches = [nn.Linear(3, 2) for _ in range(3)]
    m = BranchSum(branches, [0.5, 0.25, 2.0])
    x = torch.randn(4, 3)
    want = 0.5 * branches[0](x) + 0.25 * branches[1](x) + 2.0 * branches[2](x)
    assert torch.allclose(m(x), want)
    m(x).sum().backward()
    assert m.scales.grad is not None and m.scales.grad.abs().sum() > 0
    assert m.num_branches == 3 and m.aggregation_macs(x, m(x)) == 3 * 8
    with pytest.raises(ValueError, match="K scales"):
        BranchSum(branches, [1.0])


def test_soft_gates_mix_each_base_with_the_previous_aggregate() -> None:
    torch.manual_seed(0)
    first = BranchSum([nn.Linear(3, 3) for _ in range(2)], [0.5, 0.5])
    second = BranchSum([nn.Linear(3, 3) for _ in range(2)], [0.5, 0.5], gated=True)
    second.link(first)
    net = nn.Sequential(first, second)
    x = torch.randn(4, 3)
    y1 = [b(x) for b in first.branches]
    agg = 0.5 * (y1[0] + y1[1])
    s = 0.5  # sigmoid(0)
    want = sum(0.5 * b(s * y + (1 - s) * agg) for b, y in zip(second.branches, y1, strict=True))
    assert torch.allclose(net(x), want, atol=1e-6)
    net(x).sum().backward()
    assert second.gate is not None and second.gate.grad is not None
    stored = first._last.aggregate
    assert second.aggregation_macs(stored, agg) == 2 * (12 + 2 * 12)  # K*(out + 2*in)
    assert second.aggregation_macs(agg.clone(), agg) == 2 * 12  # gate not used
    copied = copy.deepcopy(net)  # kept activations are never copied (they hold a graph)
    assert torch.allclose(copied(x), net(x))
    z = torch.randn(4, 3)  # not the previous aggregate: every base reads z, no gate
    assert torch.allclose(second(z), sum(0.5 * b(z) for b in second.branches))
