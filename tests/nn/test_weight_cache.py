"""Eval-mode weight cache of QuantConv2d / QuantLinear: quantize frozen weights once."""

import torch
from torch import nn

from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quant import get_quantizer


def _counting(layer: nn.Module) -> list[int]:
    calls = [0]
    layer.weight_quant.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


def _conv(quantizer: dict) -> QuantConv2d:
    torch.manual_seed(0)
    return QuantConv2d(3, 4, 3, weight_quant=get_quantizer(quantizer)).eval()


def test_eval_quantizes_once_and_matches() -> None:
    layer = _conv({"name": "lbw", "bits": 3})
    calls, x = _counting(layer), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        first, second = layer(x), layer(x)
    with torch.inference_mode():
        third = layer(x)
    assert calls[0] == 1 and torch.equal(first, second) and torch.equal(first, third)
    want = nn.functional.conv2d(x, layer.weight_quant(layer.weight.detach()), layer.bias)
    assert torch.equal(first, want)


def test_any_change_invalidates() -> None:
    layer = _conv({"name": "scaleclip", "bits": 2, "group_size": 2})
    calls, x = _counting(layer), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        layer(x)
        layer.weight.mul_(2)  # in-place write
        out = layer(x)
        assert calls[0] == 2 and torch.equal(out, _fresh(layer, x))  # _fresh: call 3
        layer.load_state_dict({k: v * 0.5 for k, v in layer.state_dict().items()})
        layer(x)
        assert calls[0] == 4
        layer.weight_quant.quantize = False  # a plain attribute of the quantizer
        out = layer(x)
        assert calls[0] == 5 and torch.equal(out, _fresh(layer, x))
        layer(x)
        assert calls[0] == 6
    layer.train().eval()
    with torch.no_grad():
        layer(x)
    assert calls[0] == 7


def _fresh(layer: QuantConv2d, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.conv2d(x, layer.weight_quant(layer.weight), layer.bias)


def test_no_cache_when_gradients_can_reach_the_weight() -> None:
    layer = QuantLinear(4, 3, weight_quant=get_quantizer({"name": "ternary"})).eval()
    calls = _counting(layer)
    layer(torch.randn(2, 4)).sum().backward()
    layer(torch.randn(2, 4))
    assert calls[0] == 2 and layer.weight.grad is not None
    layer.train()
    with torch.no_grad():
        layer(torch.randn(2, 4))
        layer(torch.randn(2, 4))
    assert calls[0] == 4  # training mode never caches


def test_cache_made_in_inference_mode_serves_autograd_later() -> None:
    layer = QuantLinear(4, 3, weight_quant=get_quantizer({"name": "ternary"})).eval()
    layer.weight.requires_grad_(False)
    with torch.inference_mode():
        layer(torch.randn(2, 4))
    x = torch.randn(2, 4, requires_grad=True)
    layer(x).sum().backward()  # would fail if the cached weight were an inference tensor
    assert x.grad is not None
