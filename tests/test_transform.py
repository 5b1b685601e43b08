"""quantize_model / dequantize_model on user-style models: rules, defaults, sharing, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.models import create_model, list_models
from lowbit.nn import QuantConv2d, QuantLinear
from lowbit.transform import dequantize_model, quantize_model
from support import SymUniform as _SymUniform


def SymUniform(bits: int = 2) -> _SymUniform:  # noqa: N802 - reads like the class
    return _SymUniform(bits, learned=True)  # with state, to see it in the state_dict


def manual_quant(w: torch.Tensor, bits: int) -> torch.Tensor:
    n = 2 ** (bits - 1) - 1
    s = w.abs().max().clamp_min(1e-8) / n
    return torch.round(w / s).clamp(-n, n) * s


class Block(nn.Module):
    """Depthwise + pointwise (with bias) + BN, residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.pw = nn.Conv2d(c, c, 1, bias=True)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.pw(self.dw(x)))) + x


class UserNet(nn.Module):
    """Nested containers, a grouped conv registered twice (shared), two linears."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList([Block(8), Block(8)])
        self.shared = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.heads = nn.ModuleDict({"mid": nn.Sequential(self.shared, nn.ReLU())})
        self.proj = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = self.heads["mid"](self.shared(x))
        return self.fc(torch.relu(self.proj(x.mean((2, 3)))))


QUANTIZED = ["blocks.0.dw", "blocks.0.pw", "blocks.1.dw", "blocks.1.pw", "shared", "proj"]


def quant_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantConv2d | QuantLinear)}


def test_default_rules_keep_first_conv_and_last_linear_float() -> None:
    torch.manual_seed(0)
    model = UserNet()
    report = quantize_model(model, weight=SymUniform(2), act=SymUniform(4))
    q = report.model
    assert sorted(quant_layers(q)) == sorted(QUANTIZED)
    assert type(q.stem) is nn.Conv2d and type(q.fc) is nn.Linear
    assert [c.name for c in report.converted] == QUANTIZED
    assert {f.name: f.reason for f in report.kept_float} == {
        "stem": "kept float by rule default: first conv",
        "fc": "kept float by rule default: last layer"}
    out = q(torch.randn(2, 3, 8, 8))
    out.sum().backward()
    assert all(m.weight.grad is not None for m in quant_layers(q).values())


def test_not_in_place_by_default_and_in_place_on_request() -> None:
    model = UserNet()
    before = {n: type(m) for n, m in model.named_modules()}
    report = quantize_model(model, weight=SymUniform(2))
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert report.model is not model
    assert report.model.blocks[0].dw.weight is not model.blocks[0].dw.weight
    report = quantize_model(model, weight=SymUniform(2), inplace=True)
    assert report.model is model and isinstance(model.blocks[0].dw, QuantConv2d)


def test_shared_module_is_converted_once_and_stays_shared() -> None:
    report = quantize_model(UserNet(), {nn.Conv2d: SymUniform(2)})
    q = report.model
    assert isinstance(q.shared, QuantConv2d) and q.shared is q.heads["mid"][0]
    shared = [c for c in report.converted if c.name == "shared"]
    assert len(shared) == 1 and shared[0].aliases == ["heads.mid.0"]
    assert q.shared.groups == 2


def test_each_layer_gets_its_own_quantizer_and_state_dict_keys_are_kept() -> None:
    model = UserNet()
    spec = SymUniform(2)
    q = quantize_model(model, {".*": {"weight": spec, "act": SymUniform(4)}}).model
    quantizers = [m.weight_quant for m in quant_layers(q).values()]
    quantizers += [m.act_quant for m in quant_layers(q).values()]
    assert len({id(x) for x in quantizers}) == len(quantizers) == 2 * 8
    assert all(x is not spec for x in quantizers)
    keys, float_keys = set(q.state_dict()), set(model.state_dict())
    assert float_keys <= keys
    extra = keys - float_keys
    assert extra and all(k.endswith(("weight_quant.step", "act_quant.step")) for k in extra)
    q.load_state_dict(q.state_dict())  # the layout is self-consistent


def test_weights_of_converted_layers_are_fake_quantized() -> None:
    torch.manual_seed(1)
    model = UserNet().eval()
    q = quantize_model(model, weight=SymUniform(2)).model
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name in QUANTIZED:
            layer = ref.get_submodule(name)
            layer.weight.copy_(manual_quant(layer.weight, 2))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(q(x), ref(x), rtol=0, atol=0)


def test_first_matching_rule_wins() -> None:
    rules = {r"blocks\.0\..*": None, r"blocks\..*": SymUniform(2), nn.Conv2d: SymUniform(3)}
    report = quantize_model(UserNet(), rules)
    q = report.model
    assert type(q.blocks[0].dw) is nn.Conv2d and type(q.blocks[0].pw) is nn.Conv2d
    assert q.blocks[1].dw.weight_quant.bits == 2 and q.shared.weight_quant.bits == 3
    assert q.stem.weight_quant.bits == 3 and type(q.fc) is nn.Linear
    assert {c.name: c.rule for c in report.converted}["blocks.1.pw"] == r"'blocks\..*'"
    swapped = dict(reversed(list(rules.items())))
    q2 = quantize_model(UserNet(), swapped).model
    assert q2.blocks[0].dw.weight_quant.bits == 3  # the later, shadowed rules are no error


def test_none_keeps_float_and_unmatched_layers_are_reported() -> None:
    report = quantize_model(UserNet(), {"stem": None, "proj": {"weight": SymUniform(2)}})
    assert type(report.model.stem) is nn.Conv2d and isinstance(report.model.proj, QuantLinear)
    reasons = {f.name: f.reason for f in report.kept_float}
    assert reasons["stem"] == "kept float by rule 'stem'"
    assert reasons["blocks.0.dw"] == "no rule matched"
    text = str(report)
    assert "proj" in text and "test_sym_uniform(bits=2, learned=True)" in text
    assert "no rule matched" in text
    json.dumps(report.to_dict())


def test_act_only_spec() -> None:
    q = quantize_model(UserNet(), {"proj": {"act": SymUniform(4)}}).model
    assert q.proj.weight_quant is None and q.proj.act_quant.bits == 4


def test_rule_matching_nothing_is_an_error_naming_the_rule() -> None:
    with pytest.raises(LowbitError, match=r"rule 'blocks\\\.9' matches no module.*'stem'"):
        quantize_model(UserNet(), {r"blocks\.9": SymUniform(2)})
    with pytest.raises(LowbitError, match="rule 'missing' matches no module"):
        quantize_model(UserNet(), {"stem": SymUniform(2), "missing": None})


class WithUnsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.rnn = nn.LSTM(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv(x))


@pytest.mark.parametrize("rules, found", [
    ({nn.LSTM: SymUniform(2)}, "LSTM"),
    ({nn.ConvTranspose2d: SymUniform(2)}, "ConvTranspose2d"),
    ({"up": SymUniform(2)}, "ConvTranspose2d"),
    ({"rnn": {"weight": SymUniform(2)}}, "LSTM"),
    ({"conv": None, ".*": SymUniform(2)}, "ConvTranspose2d, LSTM"),
    ({"": SymUniform(2)}, "WithUnsupported"),  # the root: a container, not a layer
])
def test_rule_for_unsupported_layer_type_is_an_error(rules: dict, found: str) -> None:
    with pytest.raises(LowbitError, match=f"unsupported layer type {found}"):
        quantize_model(WithUnsupported(), rules)


def test_unsupported_layers_caught_by_a_broad_rule_are_reported() -> None:
    report = quantize_model(WithUnsupported(), {".*": SymUniform(2), "rnn": None})
    assert [c.name for c in report.converted] == ["conv"]
    assert {f.name: f.reason for f in report.kept_float} == {
        "up": "unsupported type ConvTranspose2d: no converter (rule '.*')",
        "rnn": "unsupported type LSTM: no converter (rule '.*')"}
    assert quantize_model(WithUnsupported(), {"up": None}).converted == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(rules={"stem": {"wieght": SymUniform(2)}}), "unknown spec keys.*did you mean 'weight'"),
    (dict(rules={"stem": "no_such_quantizer"}), "unknown quantizer 'no_such_quantizer'"),
    (dict(rules={"stem": {"weight": 3}}), "must be a name, config dict or Quantizer"),
    (dict(rules={"[": SymUniform(2)}), "invalid regular expression"),
    (dict(rules={"blocks": SymUniform(2)}), "unsupported layer type ModuleList.*by name"),
    (dict(rules={3: SymUniform(2)}), "rule keys must be"),
    (dict(rules={"stem": None}, weight=SymUniform(2)), "either rules= or weight="),
    (dict(), "nothing to quantize"),
    (dict(rules={"shared": None, r"heads\..*": SymUniform(2)}), "shared as shared, heads.mid.0"),
])
def test_bad_arguments_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(LowbitError, match=message):
        quantize_model(UserNet(), **kwargs)


def test_root_layer_and_conv_only_models() -> None:
    q = quantize_model(nn.Linear(3, 2), {nn.Linear: SymUniform(2)}).model
    assert isinstance(q, QuantLinear)
    convs = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 1))
    report = quantize_model(convs, weight=SymUniform(2))
    assert [c.name for c in report.converted] == ["2"]  # first and last conv stay float
    with pytest.raises(LowbitError, match="no conv or linear layer"):
        quantize_model(nn.Sequential(nn.ReLU()), weight=SymUniform(2))


def test_already_quantized_layers_are_left_alone() -> None:
    q = quantize_model(UserNet(), weight=SymUniform(2)).model
    again = quantize_model(q, {"stem": SymUniform(3)})
    assert again.model.stem.weight_quant.bits == 3
    assert again.model.proj.weight_quant.bits == 2
    assert {f.name: f.reason for f in again.kept_float}["proj"] == "already quantized (left as is)"


@pytest.mark.parametrize("keep_act", [True, False])
def test_dequantize_bakes_quantized_weights(keep_act: bool) -> None:
    torch.manual_seed(2)
    model = UserNet().eval()
    q = quantize_model(model, weight=SymUniform(2), act=SymUniform(8)).model
    d = dequantize_model(q, keep_act=keep_act)
    assert sorted(quant_layers(q)) == sorted(QUANTIZED)  # q untouched
    assert d.shared is d.heads["mid"][0]
    for name in QUANTIZED:
        layer = d.get_submodule(name)
        assert layer.weight_quant is None if keep_act else type(layer) in (nn.Conv2d, nn.Linear)
        torch.testing.assert_close(layer.weight, q.get_submodule(name).quantized_weight())
    x = torch.randn(2, 3, 8, 8)
    if keep_act:
        torch.testing.assert_close(d(x), q(x), rtol=0, atol=0)
    else:
        assert set(d.state_dict()) == set(model.state_dict())
        assert not quant_layers(d)


def test_registered_quantizers_by_name_and_config() -> None:
    rules = {"proj": "ternary", r"blocks\..*": {"weight": {"name": "lbw", "bits": 3},
                                                 "act": {"name": "uniform", "bits": 4,
                                                         "signed": False}}}
    report = quantize_model(UserNet(), rules)
    q = report.model
    assert q.proj.weight_quant.name == "ternary" and q.proj.act_quant is None
    assert q.blocks[1].pw.weight_quant.bits == 3 and q.blocks[1].pw.act_quant.bits == 4
    assert q.blocks[0].dw.act_quant is not q.blocks[1].dw.act_quant
    assert report.converted[0].act == q.blocks[0].dw.act_quant.to_config()
    with pytest.raises(LowbitError, match="rule 'proj': ternary supports bits 2"):
        quantize_model(UserNet(), {"proj": {"name": "ternary", "bits": 3}})


@pytest.mark.parametrize("name", list_models())
def test_zoo_models_convert_and_train(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_channels=3, width=0.25)
    report = quantize_model(model, weight="ternary", act={"name": "uniform", "bits": 4,
                                                          "signed": False})
    assert len(report.converted) >= 1 and len(report.kept_float) == 2
    assert set(model.state_dict()) <= set(report.model.state_dict())
    out = report.model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 5)
    out.square().mean().backward()
    for layer in quant_layers(report.model).values():
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
