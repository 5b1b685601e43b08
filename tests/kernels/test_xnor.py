"""XNOR-popcount binary convolution equals the float convolution of the signs, exactly, for both
back ends, with padding, strides and 1x1 kernels; packing keeps the bits it should."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.kernels.xnor import HAVE_NUMBA, pack_signs, padding_correction, xnor_conv2d

BACKENDS = ["torch", *(["numba"] if HAVE_NUMBA else [])]
SHAPES = [(16, 16, 8, 1, 1, 3), (16, 32, 8, 2, 1, 3), (32, 64, 6, 2, 0, 1), (64, 8, 5, 1, 1, 3),
          (128, 4, 4, 1, 1, 3), (8, 4, 7, 2, 1, 3), (32, 8, 7, 2, 0, 1),
          (128, 4, 5, 2, 0, 1)]


def signs(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("c", "o", "hw", "stride", "pad", "k"), SHAPES)
def test_xnor_conv_equals_float_conv_of_signs(backend: str, c: int, o: int, hw: int, stride: int,
                                              pad: int, k: int) -> None:
    gen = torch.Generator().manual_seed(c * o + hw)
    x, w = torch.randn(2, c, hw, hw, generator=gen), torch.randn(o, c, k, k, generator=gen)
    x[0, 0, 0, 0] = 0.0  # sign(0) = +1, as lowbit's Sign quantizer
    got = xnor_conv2d(x, w, stride, pad, backend)
    want = F.conv2d(signs(x), signs(w), stride=stride, padding=pad)
    assert got.dtype == torch.int32 and torch.equal(got.double(), want.double())


def test_pack_signs_bit_layout() -> None:
    x = -torch.ones(1, 70, 1, 1)
    x[0, [0, 3, 64, 69]] = 1.0
    words = pack_signs(x)[0, 0, 0]
    assert words.tolist() == [0b1001, 0b100001]


def test_padding_correction_is_the_border_sum() -> None:
    w = signs(torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(0)))
    corr = padding_correction(w, 4, 4, 1, 1)
    # top-left output: padded taps are the first row and first column of the window
    want = w[:, :, 0, :].sum((1, 2)) + w[:, :, 1:, 0].sum((1, 2))
    assert torch.equal(corr[:, 0, 0], want.to(torch.int32))
    assert torch.equal(corr[:, 1, 1], torch.zeros(3, dtype=torch.int32))


def test_unsupported_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match="divide 64"):
        xnor_conv2d(torch.randn(1, 48, 4, 4), torch.randn(2, 48, 3, 3), 1, 1, "torch")


@settings(max_examples=25, deadline=None)
@given(c=st.sampled_from([1, 2, 8, 16, 32, 64, 128]), o=st.integers(1, 9),
       hw=st.integers(1, 7), stride=st.integers(1, 3), pad=st.integers(0, 2),
       k=st.sampled_from([1, 3]), seed=st.integers(0, 2**16))
def test_xnor_conv_property(c: int, o: int, hw: int, stride: int, pad: int, k: int,
                            seed: int) -> None:
    if hw + 2 * pad < k:
        return
    gen = torch.Generator().manual_seed(seed)
    x, w = torch.randn(2, c, hw, hw, generator=gen), torch.randn(o, c, k, k, generator=gen)
    want = F.conv2d(signs(x), signs(w), stride=stride, padding=pad)
    for backend in BACKENDS:
        assert torch.equal(xnor_conv2d(x, w, stride, pad, backend).double(), want.double())
