"""LBW-Net: BinaryConnect-style training with least-squares power-of-two weights."""

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.accounting import check_compliance
from lowbit.engine.callbacks import LoopState
from lowbit.nn import QuantConv2d
from lowbit.quant import get_quantizer
from lowbit.recipes import parse_quant_section, quant_section
from lowbit.schema import ConfigError


class TinyDetector(nn.Module):
    """A conv backbone with a per-location class head and a box-regression head (4 offsets)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )  # fmt: skip
        self.cls_head = nn.Conv2d(32, classes, 1)
        self.box_head = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        return self.cls_head(f), self.box_head(f)


def lbw(keep_float: str | None = None, **weight: object):  # noqa: ANN201
    section: dict = {"method": "lbw", "weight": weight}
    if keep_float is not None:
        section["keep_float"] = keep_float
    return parse_quant_section(section)


@pytest.mark.parametrize("bits", [2, 4])
def test_detector_trains_with_lbw_weights(bits: int) -> None:
    torch.manual_seed(0)
    model = lbw(bits=bits, keep_float="none").prepare(TinyDetector())
    quantized = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert len(quantized) == 5  # backbone + both heads
    x = torch.randn(8, 3, 16, 16)
    labels = torch.randint(0, 3, (8, 8, 8))
    boxes = torch.randn(8, 4, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    latent0 = model.box_head.weight.detach().clone()
    losses = []
    for _ in range(15):
        cls, box = model(x)
        loss = F.cross_entropy(cls, labels) + F.smooth_l1_loss(box, boxes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(model.box_head.weight, latent0)  # float copy is updated (STE)
    assert check_compliance(model).passed  # forward weights are on the LBW codebook
    q = model.box_head.quantized_weight()
    assert q.unique().numel() <= 2**bits - 1


def test_two_bits_is_exact_ternary_and_per_channel_option() -> None:
    recipe = lbw(bits=2, per_channel=True)
    model = recipe.prepare(TinyDetector())
    q = model.backbone[3].weight_quant
    assert (q.name, q.bits) == ("lbw", 2) and q.per_channel
    w = torch.randn(32, 16, 3, 3)  # lbw at 2 bits is the exact ternary solution
    ternary = get_quantizer({"name": "ternary", "per_channel": True})
    assert torch.allclose(q(w), ternary(w))
    assert model.backbone[0].__class__ is nn.Conv2d  # first conv kept float by default


def test_bits_and_method_options() -> None:
    q = lbw(bits=5, method="threshold", r=0.6).prepare(TinyDetector()).backbone[3].weight_quant
    assert (q.name, q.bits, q.method, q.r) == ("lbw", 5, "threshold", 0.6)
    with pytest.raises(ConfigError):
        parse_quant_section({"method": "lbw", "weight": {"bits": 1}})
    with pytest.raises(ConfigError):
        parse_quant_section({"method": "lbw", "weight": {"bits": 4, "method": "magic"}})
    with pytest.raises(ConfigError, match="2..8"):
        parse_quant_section({"method": "lbw", "weight": {"bits": 9}})


@pytest.mark.parametrize("bits", [7, 8])
def test_seven_and_eight_bits_train_and_comply(bits: int) -> None:
    model = lbw(bits=bits, method="threshold").prepare(TinyDetector())
    q = model.backbone[3].weight_quant
    assert (q.bits, q.r) == (bits, 1.0)  # r from the validation sweep is the recipe default
    out = model(torch.randn(2, 3, 16, 16))
    sum(o.sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    assert model.backbone[3].weight.grad is not None
    assert check_compliance(model).passed


def test_old_shape_section_migrates_to_the_same_recipe(caplog: pytest.LogCaptureFixture) -> None:
    old = {"method": "lbw", "bits": 3, "solver": "threshold", "r": 0.6, "per_channel": True,
           "quantize_first_last": True}
    new = {"method": "lbw", "weight": {"bits": 3, "method": "threshold", "r": 0.6,
                                       "per_channel": True}, "keep_float": "none"}
    with caplog.at_level(logging.WARNING, logger="lowbit.recipes.legacy"):
        migrated = parse_quant_section(old)
    assert "old keys" in caplog.text and "solver" in caplog.text
    assert quant_section(migrated) == quant_section(parse_quant_section(new))
    torch.manual_seed(0)
    a = migrated.prepare(TinyDetector())
    torch.manual_seed(0)
    b = parse_quant_section(new).prepare(TinyDetector())
    assert repr(a) == repr(b)
    x = torch.randn(2, 3, 16, 16)
    assert all(torch.equal(u, v) for u, v in zip(a(x), b(x), strict=True))


def _step_with_blend(blend: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One recipe-driven step at lr 0: (latent before, its quantized value, latent after)."""
    torch.manual_seed(0)
    recipe = parse_quant_section({"method": "lbw", "weight": {"bits": 2}, "blend": blend})
    model = recipe.prepare(TinyDetector())
    layer = model.backbone[3]
    before, target = layer.weight.detach().clone(), layer.quantized_weight()
    cls, box = model(torch.randn(4, 3, 16, 16))
    (cls.sum() + box.sum()).backward()
    recipe.before_step(LoopState(model))  # the trainer's hook between backward and step
    torch.optim.SGD(model.parameters(), lr=0.0).step()
    return before, target, layer.weight.detach().clone()


def test_blend_pulls_latent_weights_toward_their_quantized_values() -> None:
    before, target, after = _step_with_blend(0.25)
    assert not torch.equal(before, target)
    torch.testing.assert_close(after, 0.75 * before + 0.25 * target)
    before, _, after = _step_with_blend(0.0)  # the default: plain BinaryConnect
    assert torch.equal(after, before)


@pytest.mark.parametrize("blend", [-0.1, 1.0])
def test_blend_outside_its_range_is_a_config_error(blend: float) -> None:
    with pytest.raises(ConfigError, match="blend must be in"):
        parse_quant_section({"method": "lbw", "weight": {"bits": 2}, "blend": blend})
