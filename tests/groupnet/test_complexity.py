"""Group-Net complexity (Eq. 4): cost_report on expanded ResNet-20s against hand counts."""

from __future__ import annotations

import pytest
import torch

from lowbit.accounting import cost_report
from lowbit.groupnet import GroupNetSpec, expand
from lowbit.models import create_model

# ResNet-20 on 32x32, MACs per image (out_h * out_w * c_out * c_in * k * k):
STEM = 32 * 32 * 16 * 3 * 9  # conv1, float: 442,368
FC = 64 * 10  # float: 640
LAYER1 = 6 * (32 * 32 * 16 * 16 * 9)  # six 16->16 3x3 convs at 32x32: 14,155,776
LAYER2 = (16 * 16 * 32 * 16 * 9  # conv 16->32, stride 2: 1,179,648
          + 16 * 16 * 32 * 16  # 1x1 shortcut 16->32: 131,072
          + 5 * (16 * 16 * 32 * 32 * 9))  # five 32->32 convs at 16x16: 11,796,480
LAYER3 = (8 * 8 * 64 * 32 * 9 + 8 * 8 * 64 * 32 + 5 * (8 * 8 * 64 * 64 * 9))
QUANT = LAYER1 + LAYER2 + LAYER3  # 40,370,176 MACs in the binary layers of one base
FLOAT_TOTAL = STEM + FC + QUANT  # 40,813,184: the float ResNet-20
# v1 aggregates the output of each of the 9 blocks: 3 x (16x32x32 + 32x16x16 + 64x8x8).
BLOCK_OUTPUTS = 3 * (16 * 32 * 32 + 32 * 16 * 16 + 64 * 8 * 8)  # 86,016 values
# Layerwise aggregates the output of each of the 20 quantized convs (18 + 2 shortcuts).
CONV_OUTPUTS = 6 * 16 * 32 * 32 + 7 * 32 * 16 * 16 + 7 * 64 * 8 * 8  # 184,320 values


def report(structure: str, k: int, act_bits: int):  # noqa: ANN201
    torch.manual_seed(0)
    model = expand(create_model("resnet20"), GroupNetSpec(structure=structure, bases=k,
                                                          act_bits=act_bits))
    return cost_report(model, (1, 3, 32, 32))


def test_hand_counts() -> None:
    assert (QUANT, FLOAT_TOTAL) == (40_370_176, 40_813_184)


@pytest.mark.parametrize(("structure", "act_bits", "aggregated"),
                         [("v1", 4, BLOCK_OUTPUTS), ("v1", 1, BLOCK_OUTPUTS),
                          ("layerwise", 4, CONV_OUTPUTS)])
def test_v1_and_layerwise_k5_ops_and_speedup(structure: str, act_bits: int,
                                             aggregated: int) -> None:
    k = 5
    r = report(structure, k, act_bits)
    binary = [row for row in r.layers if row.weight_bits == 1]
    assert len(binary) == k * 20 and all(row.branches == k for row in binary)
    assert sum(row.macs for row in binary) == k * QUANT
    assert sum(row.bops for row in binary) == k * QUANT * 1 * act_bits  # b_w * b_a per MAC
    aggregation = sum(row.macs for row in r.layers if row.type == "BranchSum")
    assert aggregation == k * aggregated  # one float multiply-add per branch and output
    ops = STEM + FC + aggregation + k * QUANT * act_bits / 64
    assert r.float_ops == FLOAT_TOTAL
    assert r.ops == pytest.approx(ops)
    assert r.speedup == pytest.approx(FLOAT_TOTAL / ops)
    if (structure, act_bits) == ("v1", 1):
        assert r.speedup == pytest.approx(40_813_184 / 4_027_008)  # 10.13x, < 64 / 5 = 12.8x


def test_v1_k5_w1a4_memory() -> None:
    """Bytes: 1 bit per binary weight plus one 32-bit scale per filter, per base; BN, the float
    stem/classifier and the lambdas at 32 bits."""
    r = report("v1", 5, 4)
    binary_weights = 6 * 16 * 16 * 9 + (16 * 32 * 9 + 32 * 16 + 5 * 32 * 32 * 9) + (
        32 * 64 * 9 + 64 * 32 + 5 * 64 * 64 * 9)  # 269,824 per base
    filters = 6 * 16 + 7 * 32 + 7 * 64  # 768 output channels per base (one scale, one BN each)
    per_base = binary_weights / 8 + filters * 4 + filters * 4 * 4  # BN: w, b, mean, var
    float_part = (3 * 16 * 9) * 4 + 16 * 4 * 4 + (64 * 10 + 10) * 4  # stem conv, bn1, fc
    lambdas = 9 * 5 * 4
    assert r.bytes == 5 * per_base + float_part + lambdas == 250_204
    parent = cost_report(create_model("resnet20"), (1, 3, 32, 32))
    assert r.float_bytes == pytest.approx(parent.float_bytes)  # 1,096,168: the float ResNet-20
    assert r.compression == pytest.approx(parent.float_bytes / 250_204)  # 4.38x


def test_float_model_speedup_is_one() -> None:
    r = cost_report(create_model("resnet20"), (1, 3, 32, 32))
    assert r.ops == r.float_ops == FLOAT_TOTAL and r.speedup == 1.0
