"""BN folding: folded == fake-quantized, integer weights, no per-group multiply, clear refusals,
and the `lowbit export --fold-bn` artifact that `lowbit eval` loads back."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.api import evaluate_checkpoint, load_model, train
from lowbit.cli import main
from lowbit.config import build_config
from lowbit.errors import LowbitError
from lowbit.export.fold import FoldedConvBN, find_conv_bn_pairs, fold_bn, fold_pair
from lowbit.models import create_model
from lowbit.nn.layers import QuantConv2d
from lowbit.quant import Quantizer, ScaleClip, get_quantizer
from lowbit.recipes import parse_quant_section


def calibrated(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> nn.Module:
    """Train-mode passes set EMA clips and BN statistics; then eval, as after training."""
    torch.manual_seed(1)
    model = model.to(dtype).train()
    with torch.no_grad():
        for scale in (1.0, 1.5, 0.8):
            model(torch.randn(shape, dtype=dtype) * scale)
    return model.eval()


def rel_diff(model: nn.Module, folded: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        want, got = model(x), folded(x)
    return float((got - want).abs().max() / want.abs().max())


def gdrq_resnet(group_size: int) -> nn.Module:
    torch.manual_seed(0)
    recipe = parse_quant_section({"method": "gdrq", "weight": {"group_size": group_size}})
    return recipe.prepare(create_model("resnet20", width=0.5))


@pytest.mark.parametrize("group_size", [1, 8, 0])
def test_resnet20_gdrq_folds_exactly(group_size: int) -> None:
    # float64: both paths are then exact to ~1e-16, so no activation code can land on the other
    # side of a rounding midpoint (in float32 one such flip cascades; see the per-layer test).
    model = calibrated(gdrq_resnet(group_size), (8, 3, 32, 32), torch.float64)
    quant_convs = sum(isinstance(m, QuantConv2d) for m in model.modules())
    folded = fold_bn(model)
    assert rel_diff(model, folded, torch.randn(8, 3, 32, 32, dtype=torch.float64)) <= 1e-4
    layers = [m for m in folded.modules() if isinstance(m, FoldedConvBN)]
    assert len(layers) == quant_convs == 20  # 18 block convs + 2 shortcuts; stem stays float
    assert not any(isinstance(m, QuantConv2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 1  # the float stem's
    for layer in layers:
        assert not any(isinstance(m, Quantizer) for m in layer.modules())
        assert not layer.weight_codes.is_floating_point()
        assert set(layer.weight_codes.unique().tolist()) <= {-1, 0, 1}  # W2: ternary codes
        assert layer.multiplier.shape == (layer.weight_codes.shape[0],)  # one affine per channel
    assert any(isinstance(m, QuantConv2d) for m in model.modules())  # the input model is intact


def test_each_folded_layer_matches_in_float32() -> None:
    model = calibrated(gdrq_resnet(8), (8, 3, 32, 32), torch.float32)
    inputs: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantConv2d):
            m.register_forward_pre_hook(lambda _m, a, n=name: inputs.__setitem__(n, a[0].clone()))
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
        for conv_name, bn_name in find_conv_bn_pairs(model):
            conv, bn, x = model.get_submodule(conv_name), model.get_submodule(bn_name), inputs[
                conv_name]
            want, got = bn(conv(x)), fold_pair(conv, bn, conv_name)(x)
            assert float((got - want).abs().max() / want.abs().max()) <= 1e-5, conv_name


class ConvBias(nn.Module):
    def __init__(self, weight: dict, act: dict | None, affine: bool = True) -> None:
        super().__init__()
        self.conv = QuantConv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=True,
                                weight_quant=get_quantizer(weight),
                                act_quant=get_quantizer(act) if act else None)
        self.bn = nn.BatchNorm2d(6, affine=affine)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(torch.relu(x)))))


@pytest.mark.parametrize("weight, act, affine", [
    ({"name": "scaleclip", "bits": 3, "group_size": 2}, {"name": "scaleclip", "bits": 4,
                                                        "signed": False}, True),
    ({"name": "ternary", "per_channel": True}, {"name": "uniform", "bits": 3, "signed": False,
                                                "clip": "ema"}, False),
    ({"name": "uniform", "bits": 4}, None, True),
    ({"name": "pow2", "bits": 4}, {"name": "uniform", "bits": 2, "signed": False,
                                   "clip": "fixed", "clip_value": 2.0}, True),
    ({"name": "lbw", "bits": 3, "per_channel": True}, None, True),
])
def test_custom_conv_bias_bn(weight: dict, act: dict | None, affine: bool) -> None:
    torch.manual_seed(0)
    model = ConvBias(weight, act, affine)
    with torch.no_grad():
        model.conv.bias.uniform_(-1, 1)
        if affine:
            model.bn.weight.uniform_(0.5, 2)
            model.bn.bias.uniform_(-1, 1)
    model = calibrated(model, (6, 4, 10, 10), torch.float64)
    folded = fold_bn(model)
    assert isinstance(folded.conv, FoldedConvBN) and isinstance(folded.bn, nn.Identity)
    assert torch.equal(folded.conv.weight_codes, folded.conv.weight_codes.round())
    assert rel_diff(model, folded, torch.randn(5, 4, 10, 10, dtype=torch.float64)) <= 1e-10


def test_refusals() -> None:
    fresh = ConvBias({"name": "scaleclip"}, {"name": "scaleclip", "signed": False})
    with pytest.raises(LowbitError, match="EMA clip has seen no training batch"):
        fold_bn(fresh)
    batch_max = ConvBias({"name": "ternary"}, {"name": "uniform", "signed": False})
    with pytest.raises(LowbitError, match="max of each batch"):
        fold_bn(calibrated(batch_max, (2, 4, 8, 8), torch.float32))
    stage1 = calibrated(ConvBias({"name": "scaleclip", "quantize": False}, None), (2, 4, 8, 8),
                        torch.float32)
    with pytest.raises(LowbitError, match="reshaping"):
        fold_bn(stage1)
    with pytest.raises(LowbitError, match="no quantized conv"):
        fold_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))

    class Branchy(ConvBias):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) if x.sum() > 0 else x  # data-dependent: untraceable

    with pytest.raises(LowbitError, match=r"torch\.fx"):
        fold_bn(Branchy({"name": "ternary"}, None))


def test_conv_feeding_two_consumers_is_not_folded() -> None:
    class TwoUsers(ConvBias):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    assert find_conv_bn_pairs(TwoUsers({"name": "ternary"}, None)) == []


@pytest.fixture(scope="module")
def gdrq_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fold")
    cfg = build_config(base={
        "model": {"name": "small_cnn", "width": 0.25}, "data": {"name": "synthetic"},
        "train": {"progress": False, "seed": 0},
        "quant": {"method": "gdrq", "reshape_epochs": 1, "quant_epochs": 1,
                  "weight": {"group_size": 4}},
    })
    train(cfg, run_path=tmp / "run")
    return tmp / "run" / "final.safetensors"


def test_export_fold_bn_cli_round_trip(gdrq_run: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "folded.safetensors"
    assert main(["export", str(gdrq_run), "--fold-bn", "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes"] == out.stat().st_size
    loaded, header = load_model(out)
    assert header["format"] == "lowbit-folded/1" and len(header["folded"]) == 2
    in_memory = fold_bn(load_model(gdrq_run)[0])
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), in_memory(x))
    assert sum(isinstance(m, FoldedConvBN) for m in loaded.modules()) == 2
    assert not any(isinstance(m, ScaleClip) for m in loaded.features.modules())
    assert main(["eval", str(out), "--json"]) == 0
    folded_top1 = json.loads(capsys.readouterr().out)["top1"]
    assert abs(folded_top1 - evaluate_checkpoint(gdrq_run)["top1"]) <= 100 / 128  # <= 1 image
