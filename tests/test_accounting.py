"""cost_report numbers against hand counts; codebook compliance passes and catches drift."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from torch import nn

from lowbit.accounting import check_compliance, cost_report, render_table
from lowbit.nn import QuantAct, QuantConv2d, QuantLinear
from lowbit.quant.registry import get_quantizer, list_quantizers
from lowbit.transform import quantize_model
from support import SymUniform


def two_layer(quantized: bool = True) -> nn.Sequential:
    """conv(2->4, 3x3, pad 1, bias) - BN(4) - ReLU - flatten - linear(64->3, bias)."""
    conv = QuantConv2d(2, 4, 3, padding=1, weight_quant=SymUniform(2) if quantized else None,
                       act_quant=SymUniform(4) if quantized else None)
    lin = QuantLinear(64, 3, weight_quant=SymUniform(3) if quantized else None,
                      act_quant=SymUniform(4, learned=True) if quantized else None)
    with torch.no_grad():  # 72 values in [-1, 1]: s = 1, so 36 of them (|w| < 0.5) round to 0
        conv.weight.copy_(torch.linspace(-1, 1, 72).view(4, 2, 3, 3))
    return nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), lin)


def test_hand_counted_two_layer_model() -> None:
    report = cost_report(two_layer(), (1, 2, 4, 4))
    conv, bn, lin = report.layers
    assert (conv.name, conv.type, bn.name, bn.type, lin.name) == (
        "0", "QuantConv2d", "1", "BatchNorm2d", "4")
    # conv: 72 weights + 4 biases; out 4x4x4 = 64 values, each 2*3*3 = 18 MACs.
    assert (conv.params, conv.weight_bits, conv.act_bits, conv.macs) == (76, 2, 4, 1152)
    assert conv.bops == 1152 * 2 * 4
    assert conv.bytes == 72 * 2 / 8 + 4 * (4 + 1)  # packed weights + (biases + one scale)
    assert conv.float_bytes == 76 * 4
    assert (conv.distinct, conv.sparsity) == (3, 0.5)
    # BN: weight + bias are parameters; running mean/var are stored too (num_batches_tracked not).
    assert (bn.params, bn.bytes, bn.float_bytes, bn.macs, bn.act_bits) == (8, 64, 64, 0, None)
    # linear: 64*3 weights + 3 biases; 3 outputs of 64 MACs; act quantizer stores one step.
    assert (lin.params, lin.weight_bits, lin.act_bits, lin.macs, lin.bops) == (
        195, 3, 4, 192, 192 * 3 * 4)
    assert lin.bytes == 192 * 3 / 8 + 4 * (3 + 1 + 1)
    assert (report.params, report.macs, report.bops) == (279, 1344, 9216 + 2304)
    assert report.bytes == 38 + 64 + 92 and report.float_bytes == 304 + 64 + 780
    assert report.compression == pytest.approx(1148 / 194)


def test_float_model_costs_32_bits_everywhere() -> None:
    report = cost_report(two_layer(quantized=False), (5, 2, 4, 4))  # per sample: batch of 5
    conv = report.layers[0]
    assert (conv.weight_bits, conv.act_bits, conv.bytes, conv.macs) == (32, 32, 304, 1152)
    assert conv.distinct == 72 and conv.sparsity == 0
    assert report.bops == report.macs * 32 * 32 and report.compression == 1.0
    assert report.bytes == report.float_bytes == 1148


def test_macs_of_grouped_depthwise_strided_and_shared_layers() -> None:
    dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)  # 16 out x 4 ch x 9 = 576
    grouped = nn.Conv2d(4, 8, 1, stride=2, groups=2)  # 2x2 out x 8 ch x 2 in/group = 64
    model = nn.Sequential(dw, nn.ReLU(), dw, grouped)  # dw runs twice: counted twice
    report = cost_report(model, (2, 4, 4, 4))
    rows = {r.name: r for r in report.layers}
    assert set(rows) == {"0, 2", "3"}
    assert rows["0, 2"].macs == 2 * 576 and rows["0, 2"].params == 36
    assert rows["3"].macs == 64 and rows["3"].params == 8 * 2 + 8


def test_cost_report_leaves_the_model_alone() -> None:
    model = two_layer().train()
    lsq = QuantConv2d(4, 4, 1, weight_quant=get_quantizer("lsq"),
                      act_quant=get_quantizer({"name": "lsq", "signed": False}))
    model.insert(1, lsq)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cost_report(model, (1, 2, 4, 4))
    check_compliance(model)
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():  # BN stats, LSQ init flags untouched
        assert torch.equal(value, before[key]), key


def test_quant_act_state_is_counted_only_in_the_quantized_size() -> None:
    model = nn.Sequential(nn.Linear(4, 4), QuantAct(SymUniform(4, learned=True)))
    act = cost_report(model, (1, 4)).layers[1]
    assert (act.type, act.bytes, act.float_bytes, act.params) == ("QuantAct", 4, 0, 0)


def test_bad_input_shape() -> None:
    with pytest.raises(ValueError, match="input_shape"):
        cost_report(two_layer(), (2,))
    with pytest.raises(ValueError, match=r"cannot run on an input of shape \(1, 3, 4, 4\)"):
        cost_report(two_layer(), (1, 3, 4, 4))


def test_report_serialises_and_renders() -> None:
    report = cost_report(two_layer(), (1, 2, 4, 4))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["totals"]["macs"] == 1344 and len(data["layers"]) == 3
    out = io.StringIO()
    Console(file=out, width=160).print(render_table(report))
    text = out.getvalue()
    assert "QuantConv2d" in text and "total" in text and "1,344" in text and "5.92x" in text


def test_compliance_passes_for_quantized_weights() -> None:
    result = check_compliance(two_layer())
    assert result.passed and [r.name for r in result.layers] == ["0", "4"]
    assert result.layers[0].num_levels == 3 and result.layers[1].num_levels == 7
    assert all(r.max_deviation <= r.tolerance and r.num_off == 0 for r in result.layers)


def test_compliance_fails_when_a_weight_leaves_the_codebook() -> None:
    model = two_layer()
    conv = model[0]

    def drift(_module: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out.view(-1)[5] += 0.01  # level spacing is 1.0 here
        return out

    handle = conv.weight_quant.register_forward_hook(drift)
    result = check_compliance(model)
    assert not result.passed
    bad, good = result.layers
    assert not bad.passed and good.passed and bad.num_off == 1
    assert bad.max_deviation == pytest.approx(0.01, rel=1e-3)
    out = io.StringIO()
    Console(file=out, width=120).print(render_table(result))
    assert "FAIL" in out.getvalue()
    handle.remove()
    assert check_compliance(model).passed


def test_compliance_tolerates_float32_rounding_only() -> None:
    model = two_layer()
    quantizer = model[4].weight_quant

    def scaled_by(factor: float) -> bool:
        handle = quantizer.register_forward_hook(lambda _m, _i, out: out * factor)
        passed = check_compliance(model).passed
        handle.remove()
        return passed

    assert scaled_by(1 + 2**-23)  # one ulp off: rounding noise
    assert not scaled_by(1 + 1e-3)


@pytest.mark.parametrize("name", sorted(set(list_quantizers())))
def test_registered_weight_quantizers_comply(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    q = quantize_model(model, {nn.Conv2d: {"name": name}, nn.Linear: None}).model
    if name == "inq":  # INQ weights reach their codebook only once every weight is frozen
        assert not check_compliance(q).passed
        for layer in (q[0], q[2]):
            layer.weight_quant.partition(layer.weight, 1.0)
    result = check_compliance(q)
    assert result.passed and len(result.layers) == 2
    report = cost_report(q, (1, 3, 8, 8))
    bits = get_quantizer(name).bits
    assert [r.weight_bits for r in report.layers[:2]] == [bits, bits]
    assert report.layers[0].distinct <= 2**bits  # at most 2^bits values in a bits-bit codebook


def test_per_channel_levels_are_checked_per_channel() -> None:
    torch.manual_seed(1)
    conv = QuantConv2d(3, 4, 3, weight_quant=get_quantizer({"name": "ternary",
                                                            "per_channel": True}))
    assert conv.weight_quant.levels(conv.weight).shape == (4, 3)
    assert check_compliance(conv).passed

    def swap_rows(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        return out.flip(0)  # values from another channel's codebook

    with torch.no_grad():
        conv.weight[0].mul_(10.0)  # make channel scales differ clearly
    conv.weight_quant.register_forward_hook(swap_rows)
    assert not check_compliance(conv).passed
