"""The int8 convolution kernel: exact at the edges of what `exact_bounds` admits (sums next to
2^24, shifted sums past it, signed grids with their zero point in the padding), refused past
them, and exact on a pre-VNNI instruction set where int16 pair sums could saturate."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lowbit.kernels import int8

pytestmark = pytest.mark.skipif(not int8.AVAILABLE, reason="PyTorch built without oneDNN")


def exact(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    return F.conv2d(x.double(), w.double(), stride=stride, padding=padding)


@pytest.mark.parametrize(("lo", "hi", "stride", "padding"),
                         [(-128, 127, 1, 1), (0, 255, 2, 1), (-8, 7, 2, 0), (-1, 1, 1, 2)])
def test_exact_at_the_largest_admitted_sums(lo: int, hi: int, stride: int, padding: int) -> None:
    top = min(int8.PAIR_LIMIT // (2 * (hi - lo)), 127)  # the widest code the pair rule admits
    channels = (int8.EXACT_F32 - 1) // (max(abs(lo), abs(hi)) * top * 9)  # sum < 2^24
    w = torch.full((3, channels, 3, 3), top)
    w[1] = -w[1]
    assert int8.exact_bounds(lo, hi, w) and not int8.exact_bounds(lo, hi, torch.cat([w] * 2, 1))
    gen = torch.Generator().manual_seed(hi)
    x = torch.randint(lo, hi + 1, (3, channels, 6, 6), generator=gen)
    x[0], x[1] = lo, hi  # the largest true sums, and the largest shifted sums (x - lo)
    got = int8.conv2d(x, w, stride, padding, lo)
    assert got.dtype == torch.float32 and torch.equal(got.double(), exact(x, w, stride, padding))


def test_scale_and_offset_are_one_float32_rounding() -> None:
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randint(0, 16, (2, 8, 5, 5), generator=gen), torch.randint(-1, 2, (4, 8, 3, 3))
    scale, offset = torch.rand(4, generator=gen) + 0.5, torch.randn(4, generator=gen)
    got = int8.conv2d(x, w, 1, 1, 0, scale=scale, offset=offset)
    want = exact(x, w, 1, 1) * scale.double().view(1, -1, 1, 1) + offset.double().view(1, -1, 1, 1)
    assert torch.allclose(got.double(), want, rtol=2**-23, atol=2**-23)


def test_pair_rule_matches_pre_vnni_kernels() -> None:
    """On AVX2 oneDNN adds u8 x s8 product pairs in int16: what the pair rule admits is exact
    there, and one step past it is not (so the rule is needed, and sufficient)."""
    code = """
import torch, torch.nn.functional as F
from lowbit.kernels import int8
x = torch.full((1, 64, 4, 4), 255)
for top in (int8.PAIR_LIMIT // 510, int8.PAIR_LIMIT // 510 + 1):
    w = torch.full((2, 64, 3, 3), top)
    same = torch.equal(int8.conv2d(x, w, 1, 0, 0).double(), F.conv2d(x.double(), w.double()))
    print(top, int8.pair_sum_ok(255, top), same)
"""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == "64 True True"
    assert out[1] == "65 False False"
