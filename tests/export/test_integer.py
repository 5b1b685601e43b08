"""Integer reference inference: exact integer accumulators, outputs equal to the fake-quantized
model within 1e-4 relative, the right kernel per codebook, and the packed file on this path
(committed checkpoints, and Group-Net checkpoints trained here for one epoch)."""

import copy
import io
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.api import train
from lowbit.artifacts import export_file, load_packed
from lowbit.build import load_run
from lowbit.errors import LowbitError
from lowbit.export.fold import fold_bn
from lowbit.export.grid import ActGrid
from lowbit.export.integer import IntegerConv2d, int_conv2d, integer_layer, to_integer
from lowbit.export.integer_binary import IntegerBinaryConv2d
from lowbit.models import create_model
from lowbit.nn.multibranch import BinaryConv2d
from lowbit.quant.inq import INQWeight
from lowbit.quant.registry import get_quantizer
from lowbit.recipes import parse_quant_section
from lowbit.transform import quantize_model

CHECKPOINTS = Path(__file__).resolve().parents[2] / "benchmarks" / "checkpoints"
METHODS = {"inq": ({"method": "inq", "weight": {"bits": 5}}, "shift"),
           "lbw": ({"method": "lbw", "weight": {"bits": 4}}, "shift"),
           "lbw2": ({"method": "lbw", "weight": {"bits": 2}}, "mac"),
           "gdrq": ({"method": "gdrq", "weight": {"bits": 2}, "act": {"bits": 4}}, "int8"),
           "gdrq_a8": ({"method": "gdrq", "weight": {"bits": 2}, "act": {"bits": 8}}, "int8"),
           "groupnet": ({"method": "groupnet", "bases": 2, "act": {"bits": 4}}, "int8"),
           "groupnet_layerwise": ({"method": "groupnet", "bases": 2, "structure": "layerwise",
                                   "act": {"bits": 2}}, "int8"),
           "groupnet_w1a1": ({"method": "groupnet", "bases": 2, "act": {"name": "sign"}}, "xnor"),
           "groupnet_w1a1_gated": ({"method": "groupnet", "bases": 2, "structure": "v2",
                                    "gates": True, "act": {"name": "sign"}}, "xnor")}


def calibrated(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        for scale in (1.0, 1.5, 0.8):
            model(torch.randn(8, 3, 32, 32) * scale)
    return model.eval()


def method_model(spec: dict) -> nn.Module:
    torch.manual_seed(0)
    model = parse_quant_section(spec).prepare(create_model("resnet20",
                                                                            width=0.25))
    for m in model.modules():
        if isinstance(getattr(m, "weight_quant", None), INQWeight):
            m.weight_quant.partition(m.weight.detach(), 1.0)
    return calibrated(model)


def layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, tuple]:
    """(input, output) of each named layer of `model` on x (exact in float64 up to 2^53)."""
    seen: dict[str, tuple] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: seen.__setitem__(n, (i[0], o))) for n in names]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("method", list(METHODS))
def test_integer_layers_match_fake_quant(method: str) -> None:
    spec, kernel = METHODS[method]
    model = method_model(spec)
    integer = to_integer(model)
    layers = {n: m for n, m in integer.named_modules() if isinstance(m, IntegerConv2d)}
    assert layers and {m.kernel for m in layers.values()} == {kernel}
    x = torch.randn(4, 3, 32, 32)
    ref = layer_inputs(integer, list(layers), x)  # same inputs for both paths, layer by layer
    for name, layer in layers.items():
        inp = ref[name][0].view(*ref[name][0].shape, *([1, 1] if layer.linear else []))
        codes, _ = layer.input_codes(inp)
        acc = layer.accumulate(codes)
        padded = F.pad(codes.double(), (layer.padding,) * 4, value=float(layer.pad_value))
        exact = F.conv2d(padded, layer.codes.double(), stride=layer.stride)
        assert acc.dtype == (torch.int32 if kernel == "xnor" else torch.int64)
        assert torch.equal(acc.double(), exact)
    with torch.no_grad():
        want, got = model(x), integer(x)
    assert torch.equal(got.argmax(1), want.argmax(1))
    # The int8 kernel rescales in float32 (fused, for speed). On an 8-bit grid, whose 255
    # boundaries are dense, that one rounding moved an activation code that fake-quant's own
    # float32 arithmetic put on the other side: the logits moved by 4.7e-4 (with a float64
    # rescale, by 2e-7). Each layer's output is checked to 1e-6 in test_int8_layer_outputs.
    tol = 1e-3 if method == "gdrq_a8" else 1e-4
    assert float((got - want).abs().max() / want.abs().max()) <= tol


def test_binary_weights_on_sign_inputs_use_xnor() -> None:
    torch.manual_seed(0)
    model = quantize_model(create_model("resnet20", width=0.25), weight="binary",
                           act="sign").model
    model = calibrated(model)
    integer = to_integer(model)
    kernels = {m.kernel for m in integer.modules() if isinstance(m, IntegerConv2d)}
    assert kernels == {"xnor"}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want, got = model(x), integer(x)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4


def test_int_conv2d_is_exact() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-100, 100, (2, 5, 7, 7), generator=gen)
    w = torch.randint(-8, 9, (3, 5, 3, 3), generator=gen)
    want = F.conv2d(x.double(), w.double(), stride=2, padding=1)
    assert torch.equal(int_conv2d(x, w, 2, 1).double(), want)


GRID8 = ActGrid(0.1, 0, 255, (0.0, 25.5))


@pytest.mark.parametrize(("act", "w", "kernel"), [
    (GRID8, 64, "int8"),  # pair sums 2 * 255 * 64 <= 2^15 - 1, sums 255 * 64 * 576 < 2^24
    (GRID8, 65, "mac"),  # a pair of products would saturate int16 on pre-VNNI kernels
    (ActGrid(0.1, -8, 7, (-0.8, 0.7)), 7, "int8"),  # a signed grid: zero point 8
    (ActGrid(0.1, -200, 200, (-20.0, 20.0)), 1, "mac"),  # 401 input codes: no uint8 form
    ("sign", 1, "int8"),  # ternary weights on sign inputs (codes -1, 0, 1)
    (None, 1, "mac"),  # float inputs: fixed-point codes
], ids=["a8-w64", "a8-w65", "signed", "wide", "sign-ternary", "float"])
def test_kernel_choice(act: object, w: int, kernel: str) -> None:
    codes = torch.full((4, 64, 3, 3), w)
    codes[:, :, 0, 0] = torch.tensor([-1, 0, 1, 0])[:, None]  # not +-1 only: no XNOR
    assert IntegerConv2d(codes, torch.ones(4), None, act).kernel == kernel


def int8_layer(linear: bool = False) -> IntegerConv2d:
    gen = torch.Generator().manual_seed(0)
    shape = (6, 8, 1, 1) if linear else (6, 8, 3, 3)
    codes = torch.randint(-1, 2, shape, generator=gen)
    layer = IntegerConv2d(codes, torch.rand(6, generator=gen) + 0.5, torch.randn(6, generator=gen),
                          ActGrid(0.25, 0, 15, (0.0, 3.75)), padding=0 if linear else 1,
                          linear=linear)
    assert layer.kernel == "int8"
    return layer


def exact_output(layer: IntegerConv2d, x: torch.Tensor) -> torch.Tensor:
    codes, unit = layer.input_codes(x.view(*x.shape, 1, 1) if layer.linear else x)
    padded = F.pad(codes.double(), (layer.padding,) * 4, value=float(layer.pad_value))
    acc = F.conv2d(padded, layer.codes.double(), stride=layer.stride)
    y = acc * (layer.scale * unit).view(1, -1, 1, 1) + layer.offset.view(1, -1, 1, 1)
    return y.flatten(1) if layer.linear else y


@pytest.mark.parametrize("linear", [False, True], ids=["conv", "linear"])
def test_int8_layer_outputs(linear: bool) -> None:
    layer = int8_layer(linear)
    x = torch.rand(3, 8, *(() if linear else (7, 7))) * 4
    want = exact_output(layer, x)
    got = layer(x)  # float32: the rescale fused in the kernel, one float32 rounding
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-6)
    got64 = layer(x.double())  # float64: exact accumulators, float64 rescale
    assert got64.dtype == torch.float64 and torch.allclose(got64, want, rtol=1e-12, atol=1e-12)


def test_int8_layer_copies_pickles_and_follows_new_codes() -> None:
    layer, x = int8_layer(), torch.rand(2, 8, 5, 5) * 4
    first = layer(x)  # builds the prepacked weights
    assert torch.equal(copy.deepcopy(layer)(x), first)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x), first)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["codes"] = -state["codes"]
    layer.load_state_dict(state)  # in-place: the prepacked weights must follow
    assert torch.allclose(layer(x).double(), exact_output(layer, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pad_value", [0, 1, -1])
def test_xnor_layer_outputs(pad_value: int) -> None:
    """Float32 rescale within a few ulp of the exact one; float64 exact; int32 accumulators."""
    gen = torch.Generator().manual_seed(pad_value + 5)
    layer = IntegerConv2d(torch.randint(0, 2, (6, 16, 3, 3), generator=gen) * 2 - 1,
                          torch.rand(6, generator=gen) + 0.1, torch.randn(6, generator=gen),
                          "sign", stride=2, padding=2, pad_value=pad_value)
    x = torch.randn(3, 16, 7, 7, generator=gen)
    want = exact_output(layer, x)
    got = layer(x)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-6)
    got64 = layer(x.double())
    assert got64.dtype == torch.float64 and torch.allclose(got64, want, rtol=1e-12, atol=1e-12)


def test_padding_value_needs_the_xnor_kernel() -> None:
    """At construction, and when new codes change the kernel later."""
    ternary = torch.randint(-1, 2, (4, 16, 3, 3), generator=torch.Generator().manual_seed(0))
    with pytest.raises(LowbitError, match="only the xnor kernel pads with 1"):
        IntegerConv2d(ternary, torch.ones(4), None, "sign", padding=1, pad_value=1)
    layer = IntegerConv2d(ternary.sign() + (ternary == 0), torch.ones(4), None, "sign",
                          padding=1, pad_value=1)
    layer.load_state_dict({**layer.state_dict(), "codes": ternary})
    with pytest.raises(LowbitError, match="only the xnor kernel pads with 1"):
        layer(torch.randn(1, 16, 4, 4))


def test_xnor_layer_follows_new_codes_in_place_and_reassigned() -> None:
    """The cached XNOR kernel (weights packed once) is rebuilt when the codes change, in place
    or as a new tensor, however often a freed tensor's memory is reused."""
    gen = torch.Generator().manual_seed(3)
    layer = IntegerConv2d(torch.randint(0, 2, (4, 16, 3, 3), generator=gen) * 2 - 1,
                          torch.ones(4), None, "sign", padding=1)
    assert layer.kernel == "xnor"
    x = torch.randn(2, 16, 5, 5, generator=gen)
    for _ in range(20):
        assert torch.allclose(layer(x).double(), exact_output(layer, x))
        layer.codes = torch.randint(0, 2, (4, 16, 3, 3), generator=gen) * 2 - 1
    layer.codes.neg_()
    assert torch.allclose(layer(x).double(), exact_output(layer, x))


@pytest.mark.parametrize("name", ["inq_w5", "lbw_w2", "gdrq_w2a4"])
def test_packed_checkpoint_runs_on_integer_path(name: str, tmp_path: Path) -> None:
    packed = export_file(CHECKPOINTS / f"{name}_resnet20_cifar10.safetensors",
                         tmp_path / f"{name}.lowbit")
    model, _ = load_packed(packed)
    integer = to_integer(model)
    assert any(isinstance(m, IntegerConv2d) for m in integer.modules())
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model(x), integer(x)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4


def test_group_net_sign_convs_pad_binary_inputs_and_scale() -> None:
    """The XNOR kernel pads the sign inputs with +1 itself: no explicit padded copy."""
    model = method_model(METHODS["groupnet_w1a1"][0])
    wrapped = [m for m in to_integer(model).modules() if isinstance(m, IntegerBinaryConv2d)]
    assert wrapped and all(m.pad is None and m.window is not None for m in wrapped)
    assert {m.core.kernel for m in wrapped} == {"xnor"}
    padded = [m.core for m in wrapped if m.core.padding]
    assert padded and {m.pad_value for m in padded} == {1}


def binary_layer(act: dict, pad_value: float, channels: int = 16) -> BinaryConv2d:
    torch.manual_seed(0)
    layer = BinaryConv2d.from_float(nn.Conv2d(channels, 8, 3, padding=1, bias=False),
                                    get_quantizer({"name": "binary"}), get_quantizer(act),
                                    pad_value=pad_value)
    return layer.double().eval()


@pytest.mark.parametrize(("act", "pad_value", "native"), [
    ({"name": "sign"}, -1.0, True),  # XNOR kernel, border correction 2 * (+1 padding's)
    ({"name": "sign"}, 1.0, True),
    ({"name": "uniform", "bits": 2, "signed": False, "clip": "fixed"}, 1.0, False),  # explicit pad
], ids=["sign-minus1", "sign-plus1", "grid-explicit"])
def test_binary_conv_padding_values_match_fake_quant(act: dict, pad_value: float,
                                                     native: bool) -> None:
    layer = binary_layer(act, pad_value)
    x = torch.randn(2, 16, 6, 6, generator=torch.Generator().manual_seed(1))
    integer = integer_layer(layer)
    assert integer is not None
    core = integer.core if isinstance(integer, IntegerBinaryConv2d) else integer
    assert isinstance(core, IntegerConv2d)
    assert (core.pad_value, core.padding) == ((int(pad_value), 1) if native else (0, 0))
    with torch.no_grad():
        want, got = layer(x.double()), integer(x.double())
    assert torch.allclose(got, want, rtol=0, atol=1e-7)  # the grid step 1/3 rounds


def test_binary_conv_pad_value_off_its_input_grid_stays_float(caplog) -> None:
    """-1 is not on an unsigned grid: explicit padding would change the codes; refused."""
    layer = binary_layer({"name": "uniform", "bits": 2, "signed": False, "clip": "fixed"}, -1.0)
    with caplog.at_level(logging.INFO, logger="lowbit.export.integer"):
        converted = integer_layer(layer, "conv")
    assert converted is None and "conv pads with -1.0" in caplog.text


@pytest.mark.parametrize("act", [{"name": "sign"}, {"bits": 2}], ids=["w1a1", "w1a2"])
def test_trained_group_net_packed_file_runs_on_integer_path(act: dict, tmp_path: Path,
                                                             tiny_config) -> None:
    config = {**tiny_config(tmp_path, epochs=1),
              "quant": {"method": "groupnet", "bases": 2, "act": act}}
    train(load_run(base=config), run_path=tmp_path / "run")
    packed = export_file(tmp_path / "run" / "final.safetensors", tmp_path / "gn.lowbit")
    model, _ = load_packed(packed)
    integer = to_integer(model)
    kernels = {m.kernel for m in integer.modules() if isinstance(m, IntegerConv2d)}
    assert kernels == ({"xnor"} if act.get("name") == "sign" else {"int8"})
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model(x), integer(x)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4
    assert torch.equal(got.argmax(1), want.argmax(1))


def binary_conv_bn(pad_value: float | None) -> nn.Module:
    """A k-bit-input BinaryConv2d (+ BN) with a padding value and XNOR scales."""
    torch.manual_seed(0)
    act = {"name": "uniform", "bits": 2, "signed": False, "clip": "fixed", "clip_value": 1.0}
    conv = BinaryConv2d(4, 8, 3, padding=1, bias=False, pad_value=pad_value, act_scale=True,
                        weight_quant=get_quantizer({"name": "binary", "per_channel": True}),
                        act_quant=get_quantizer(act))
    return nn.Sequential(conv, nn.BatchNorm2d(8)).eval()


def test_binary_conv_options_refuse_to_fold_and_run_on_integer_path() -> None:
    model = binary_conv_bn(1.0)  # 1.0 is on the 2-bit grid [0, 1]: the padded codes are L
    with pytest.raises(LowbitError, match="pads with 1.0 or scales"):
        fold_bn(model)
    integer = to_integer(model)
    assert isinstance(integer[0], IntegerBinaryConv2d) and integer[0].core.kernel == "int8"
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        want, got = model(x), integer(x)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4


def test_padding_value_off_the_input_grid_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lowbit"), \
            pytest.raises(LowbitError, match="no quantized layer"):
        to_integer(binary_conv_bn(-1.0))  # -1 is not on the unsigned grid: not the layer's codes
    assert "pads with -1.0, which its input quantizer maps to" in caplog.text


def test_kernel_follows_codes_loaded_later() -> None:
    """Codes loaded after construction choose the kernel again: sign codes that stop being
    +-1 leave XNOR (which would silently use their signs) for an exact kernel."""
    gen = torch.Generator().manual_seed(4)
    layer = IntegerConv2d(torch.randint(0, 2, (4, 16, 3, 3), generator=gen) * 2 - 1,
                          torch.ones(4), None, "sign", padding=1)
    assert layer.kernel == "xnor"
    state = dict(layer.state_dict(), codes=torch.randint(-3, 4, (4, 16, 3, 3), generator=gen))
    layer.load_state_dict(state)
    assert layer.kernel != "xnor"
    x = torch.randn(2, 16, 5, 5, generator=gen)
    assert torch.allclose(layer(x).double(), exact_output(layer, x))
