"""Contract tests run on every registered model, so that a new model is covered by registering it.

Models are built at width 0.25 on inputs of `min_input_size` (32 where a model does not declare
one) to keep the suite fast; counting tests build on the meta device, which allocates nothing.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lowbit.errors import LowbitError
from lowbit.models import create_model, list_models, scaled

MODELS = list_models()
# The models of this zoo that promise Kaiming init (small_cnn keeps PyTorch's default init).
KAIMING_MODELS = ["alexnet", "mobilenet_v2", "resnet18", "resnet20", "resnet50", "vgg_small"]


def input_size(model: nn.Module) -> int:
    return int(getattr(model, "min_input_size", 32))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(name: str, **kwargs: Any) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def test_zoo_lists_the_documented_models() -> None:
    expected = {
        "alexnet",
        "mobilenet_v2",
        "resnet18",
        "resnet34",
        "resnet50",
        "vgg_small",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "small_cnn",
    }
    assert expected <= set(MODELS)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", MODELS)
def test_output_shape(name: str, num_classes: int, in_channels: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_channels=in_channels, width=0.25)
    size = input_size(model)
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, width=0.25)
    size = max(32, input_size(model))
    loss = nn.functional.cross_entropy(
        model(torch.randn(4, 3, size, size)), torch.tensor([0, 3, 7, 9])
    )
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


@pytest.mark.parametrize("name", MODELS)
def test_only_standard_layers_and_no_shared_weights(name: str) -> None:
    # Quantization swaps layers by module type: parameters must live in these layer types only.
    model = on_meta(name, width=0.25)
    for mname, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            assert isinstance(m, (nn.Conv2d, nn.Linear, _BatchNorm)), f"{mname}: {type(m)}"
    shared = list(model.named_parameters(remove_duplicate=False))
    assert len(shared) == len(list(model.parameters())), "a parameter is shared"


def _channel_counts(model: nn.Module) -> list[tuple[str, str, int]]:
    counts = []
    for mname, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            counts += [
                (mname, "in", m.in_channels),
                (mname, "out", m.out_channels),
                (mname, "groups", m.groups),
            ]
        elif isinstance(m, nn.Linear):
            counts += [(mname, "linear_in", m.in_features), (mname, "out", m.out_features)]
        elif isinstance(m, _BatchNorm):
            counts.append((mname, "bn", m.num_features))
    return counts


@pytest.mark.parametrize("width", [0.3, 0.5, 2.0])
@pytest.mark.parametrize("name", MODELS)
def test_width_scales_every_channel_count(name: str, width: float) -> None:
    # Odd num_classes / in_channels so that they cannot be mistaken for a scaled channel count.
    base = _channel_counts(on_meta(name, num_classes=7, in_channels=5, width=1.0))
    wide = _channel_counts(on_meta(name, num_classes=7, in_channels=5, width=width))
    assert [k[:2] for k in base] == [k[:2] for k in wide], "width changed the layer list"
    for (mname, kind, c1), (_, _, cw) in zip(base, wide, strict=True):
        if (kind, c1) in (("in", 5), ("out", 7), ("groups", 1)):
            assert cw == c1, f"{mname}.{kind}: {cw} != {c1} (must not scale)"
        elif kind == "linear_in" and width == 0.3:
            # Flattening a kxk grid gives scaled(c) * k * k inputs, equal to scaled(c * k * k)
            # only where c * width is whole: true at 0.5 and 2 for every base count of the zoo.
            continue
        else:
            assert cw == scaled(c1, width), f"{mname}.{kind}: {cw} != scaled({c1}, {width})"


@pytest.mark.parametrize("name", MODELS)
def test_param_count_grows_with_width_squared(name: str) -> None:
    half, one, two = (n_params(on_meta(name, width=w)) for w in (0.5, 1.0, 2.0))
    # Convs and hidden linears scale as width^2; the first conv, depthwise convs, BN and the
    # classifier only linearly, which keeps each ratio a little under 4.
    for small, big in ((half, one), (one, two)):
        assert 3.5 < big / small <= 4.0


@pytest.mark.parametrize("name", MODELS)
def test_eval_mode_is_deterministic_and_per_sample(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, width=0.25)
    torch.manual_seed(0)
    twin = create_model(name, width=0.25)
    for p, q in zip(model.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(p, q), "same seed, different init"
    model.eval()
    size = input_size(model)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        first, second, alone = model(x), model(x), model(x[:1])
    assert torch.equal(first, second)
    # In eval mode BN uses running statistics: a sample's output ignores the rest of the batch.
    torch.testing.assert_close(alone, first[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", KAIMING_MODELS)
def test_kaiming_init(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, width=0.5)
    checked = 0
    for mname, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or m.weight.numel() < 4096:
            continue  # small tensors give too noisy a standard deviation
        w = m.weight
        fan = w.shape[0] * w[0, 0].numel() if isinstance(m, nn.Conv2d) else w.shape[1]
        expected = math.sqrt(2.0 / fan)
        assert abs(w.std().item() / expected - 1) < 0.1, mname
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("name", MODELS)
def test_builder_defaults_give_ten_class_rgb_model(name: str) -> None:
    model = on_meta(name)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert (classifier.out_features, first.in_channels) == (10, 3)


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(LowbitError) as err:
        create_model("resnet19")
    assert "resnet19" in str(err.value)
    for name in MODELS:
        assert name in str(err.value)


@pytest.mark.parametrize("width", [0.0, -1.0, float("nan")])
def test_bad_width_is_a_user_error(width: float) -> None:
    with pytest.raises(LowbitError, match="width"):
        create_model("vgg_small", width=width)


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"in_channels": 0}])
def test_bad_sizes_are_user_errors(kwargs: dict[str, int]) -> None:
    with pytest.raises(LowbitError):
        create_model("alexnet", **kwargs)


@pytest.mark.parametrize("name", MODELS)
def test_unknown_kwarg_is_a_user_error(name: str) -> None:
    with pytest.raises(LowbitError, match="depth_multiplier"):
        create_model(name, depth_multiplier=2)
